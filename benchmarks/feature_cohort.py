#!/usr/bin/env python
"""Cohort-scale feature extraction: the workflow's feature stage against pure embedding time, same run.

    python benchmarks/feature_cohort.py                       # CPU: resnet50, 24 slides of 8-80 patches
    python benchmarks/feature_cohort.py --device cuda --encoder uni_v1 --precision bf16 \\
        --slides 50 --min-patches 2000 --max-patches 30000 --workers 15 --batch-size 256

Writes a cohort of ``--slides`` slides of mixed sizes (patch counts log-uniform between the two
bounds; each slide its own file, hard-linked from one generated pyramidal JPEG TIFF, with its own
patch grid), then times, in one run:

  (a) pure embedding: the encoder's forward over as many preprocessed tensors as the cohort has
      patches, already on the device, at the same batch size and precision (the floor);
  (b) the stage as the workflow runs it: ``python -m wsikt.cli extract_features`` once per batch of
      ``--slides-per-job`` slides (content-defined, as the workflow plans them), one after another as
      on one GPU; process start, imports, building the encoder, reading, writing included;
  (c) the old per-slide way: the same command once per slide (skip with --no-per-slide).

It prints (b)/(a) (goal on CPU ≤ 1.3×; on a GPU the model-only share (a)/(b), goal ≥ 0.90) and
(c)/(b). Weights are random (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from features import random_encoder, sync, write_patch_grid, write_tiled_slide  # noqa: E402

from wsikt.core.device import resolve_device  # noqa: E402
from wsikt.features.batches import plan_batches  # noqa: E402
from wsikt.features.patch_stream import AMP_DTYPES  # noqa: E402


def write_cohort(root: Path, n_slides: int, lo: int, hi: int, slide_mpp: float, seed: int = 0) -> list[tuple[str, Path, Path]]:
    """(slide id, slide file, patch h5) for ``n_slides`` slides with log-uniform patch counts in [lo, hi]."""
    rng = np.random.default_rng(seed)
    counts = np.exp(rng.uniform(np.log(lo), np.log(hi), n_slides)).round().astype(int)
    footprint = int(round(256 * 0.5 / slide_mpp))
    side = int(np.ceil(np.sqrt(hi * 1.2))) * footprint
    master = root / "master.tiff"
    write_tiled_slide(master, side, slide_mpp)
    cohort = []
    for i, n in enumerate(counts):
        sid = f"S{i:03d}"
        slide = root / "slides" / f"{sid}.tiff"
        slide.parent.mkdir(exist_ok=True)
        os.link(master, slide)
        patches = root / "patches" / f"{sid}.h5"
        patches.parent.mkdir(exist_ok=True)
        write_patch_grid(patches, side, int(n), footprint, 0.5)
        cohort.append((sid, slide, patches))
    return cohort


def _n_coords(patches: Path) -> int:
    with h5py.File(patches, "r") as f:
        return int(f["coords"].shape[0])


def pure_embedding(model: torch.nn.Module, spec, device: torch.device, n: int, batch_size: int,
                   precision: str | None) -> float:
    """Seconds of forward passes over ``n`` preprocessed patches already on the device."""
    amp = AMP_DTYPES[precision or spec.precision] if device.type == "cuda" else None
    x = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        model(x[:2])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(batch_size, n - done)
            model(x[:k]).float().cpu()
            done += k
        sync(device)
    return time.perf_counter() - t0


def cli_run(cohort: list, out: Path, encoder: str, settings: dict, threads: int, log: Path) -> float:
    """Seconds for one ``python -m wsikt.cli extract_features`` over ``cohort`` (a workflow batch job)."""
    cmd = [sys.executable, "-m", "wsikt.cli", "extract_features", "--encoder", encoder,
           "--settings", json.dumps(settings), "--threads", str(threads), "--log", str(log)]
    cmd += ["--slide", *(str(s) for _, s, _ in cohort), "--patches", *(str(p) for _, _, p in cohort),
            "--out", *(str(out / f"{sid}.h5") for sid, _, _ in cohort)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--slides", type=int, default=24)
    ap.add_argument("--min-patches", type=int, default=8)
    ap.add_argument("--max-patches", type=int, default=80)
    ap.add_argument("--slides-per-job", type=int, default=50, help="batch size of the workflow's feature jobs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads of each job")
    ap.add_argument("--slide-mpp", type=float, default=0.5)
    ap.add_argument("--no-per-slide", action="store_true", help="skip (c), one process per slide")
    ap.add_argument("--goal", type=float, default=1.3, help="(b)/(a) goal (CPU)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    settings = dict(batch_size=a.batch_size, num_workers=a.workers, device=str(dev), precision=a.precision)
    with tempfile.TemporaryDirectory(prefix="wsikt-feature-cohort-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cohort = write_cohort(root, a.slides, a.min_patches, a.max_patches, a.slide_mpp)
        n_patches = sum(_n_coords(p) for _, _, p in cohort)
        batches = plan_batches({"cohort": [sid for sid, _, _ in cohort]}, a.slides_per_job)
        by_id = {sid: (sid, s, p) for sid, s, p in cohort}
        print(f"cohort: {len(cohort)} slides, {n_patches} patches ({a.min_patches}-{a.max_patches} per slide), "
              f"{len(batches)} feature jobs of ≤{max(len(b) for b in batches.values())} slides; "
              f"written in {time.perf_counter() - t0:.1f} s")

        model, spec, _ = random_encoder(a.encoder, dev)
        if spec.needs_weights:  # the jobs load the same random weights from a file, as a user's would be
            settings["weights"] = str(root / "weights.pt")
            torch.save(getattr(model, "net", model).state_dict(), settings["weights"])  # the architecture's own keys
        model_s = pure_embedding(model, spec, dev, n_patches, a.batch_size, a.precision)
        del model
        stage_s = 0.0
        for name, ids in batches.items():
            out = root / "features"
            out.mkdir(exist_ok=True)
            stage_s += cli_run([by_id[i] for i in ids], out, a.encoder, settings, a.threads, root / f"{name}.log")
        print(f"(a) pure embedding ({a.encoder}, {dev}, batch {a.batch_size}): {model_s:.1f} s "
              f"({n_patches / model_s:.1f} tiles/s)")
        print(f"(b) feature stage, {len(batches)} batch jobs: {stage_s:.1f} s ({n_patches / stage_s:.1f} tiles/s)")
        ratio = stage_s / model_s
        print(f"stage / pure embedding: {ratio:.2f}× (goal ≤ {a.goal}×: {'PASS' if ratio <= a.goal else 'OVER'}); "
              f"model-only share {model_s / stage_s:.2f}")
        if not a.no_per_slide:
            old = root / "per-slide"
            old.mkdir()
            per_slide_s = sum(cli_run([c], old, a.encoder, settings, a.threads, root / f"{c[0]}.log") for c in cohort)
            print(f"(c) one process per slide: {per_slide_s:.1f} s = {per_slide_s / stage_s:.2f}× the batch jobs, "
                  f"{per_slide_s / model_s:.2f}× pure embedding")
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, threads {a.threads}, "
              f"workers {a.workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
