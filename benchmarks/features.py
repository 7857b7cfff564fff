"""Feature-extraction throughput: the model's limit, our pipeline from a real slide file, and a naive baseline.

Prints in one run:
  (a) model only: forward passes on random tensors already on the device (the ceiling);
  (b) end to end: tiles/s from a pyramidal tiled JPEG TIFF through ``wsikt.features.extract.extract_features``
      (DataLoader workers with their own OpenSlide handles, pinned memory, autocast, async copies, h5 write);
  (c) naive: CLAM's style, fp32, one ``read_region`` at a time in the main process, no workers;
and the ratios (b)/(a) and (b)/(c). Weights are random unless --weights is given (speed does not
depend on their values). Usage::

    python benchmarks/features.py                      # uni_v1 on CUDA, resnet50 on CPU
    python benchmarks/features.py --device cpu --encoder resnet50 --n-patches 200 --batch-size 16 --workers 2
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from wsikt.core.device import resolve_device
from wsikt.features.encoders import REGISTRY, build_encoder, get_encoder_spec, weights_hash
from wsikt.features.extract import extract_features
from wsikt.features.patch_stream import AMP_DTYPES, Preprocess
from wsikt.preprocess.slide import open_slide, read_region_rgb


def write_tiled_slide(path: Path, side: int, mpp: float, quality: int = 80) -> None:
    """A ``side``² px pyramidal JPEG TIFF (OpenSlide-readable) tiled from a rendered synthetic H&E block."""
    import tifffile

    from wsikt.acquire.demo_render import render_slide

    block = render_slide(np.random.default_rng(0), mpp, 2048 * mpp, 15.0, (228, 150, 200), 3.0, 1)
    tile = 256

    def tiles(level_side: int, src: np.ndarray):
        n = math.ceil(level_side / tile)
        k = src.shape[0] // tile
        for i in range(n):
            for j in range(n):
                a, b = (i * 3 + j) % k, (j * 5 + i) % k  # vary which block tile lands where
                yield src[a * tile:(a + 1) * tile, b * tile:(b + 1) * tile]

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level_side, src, scale = side, block, 1
        while True:
            n = math.ceil(level_side / tile) * tile
            tif.write(
                tiles(level_side, src), shape=(n, n, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                compression="jpeg", compressionargs={"level": quality}, subfiletype=0 if scale == 1 else 1,
                resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)), resolutionunit="CENTIMETER", metadata=None,
            )
            if level_side <= 2048:
                break
            level_side, scale = level_side // 4, scale * 4
            src = cv2.resize(block, (block.shape[1] // scale, block.shape[0] // scale), interpolation=cv2.INTER_AREA)
            if src.shape[0] < tile:
                break


def write_patch_grid(path: Path, side: int, n_patches: int, footprint: int, target_mpp: float) -> np.ndarray:
    """A patch h5 with ``n_patches`` grid coords (level-0 reads of ``footprint`` px resized to 256)."""
    per_row = side // footprint
    idx = np.arange(n_patches)
    coords = np.stack([(idx % per_row) * footprint, (idx // per_row) * footprint], 1).astype(np.int64)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("coords", data=coords)
        d.attrs.update(patch_level=0, patch_size=footprint, read_level=0, read_size=footprint,
                       target_patch_size=256, target_mpp=target_mpp)
    return coords


def random_encoder(name: str, device: torch.device) -> tuple[torch.nn.Module, object, str]:
    """The registry architecture with random weights, built directly on the device."""
    spec = get_encoder_spec(name)
    with torch.device(device):
        model = spec.build()
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spec, "random"


def model_only(model, spec, device, batch_size: int, precision: str, seconds: float) -> float:
    """(a) tiles/s of forward passes on a random batch already on the device."""
    x = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=device)
    if spec.is_cnn and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    amp = AMP_DTYPES[precision] if device.type == "cuda" else None

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model(x).float()

    for _ in range(2 if device.type == "cpu" else 5):
        step()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        step()
        n += batch_size
    sync(device)
    return n / (time.perf_counter() - t0)


def naive(model, spec, device, slide_path: Path, coords: np.ndarray, footprint: int, batch_size: int) -> float:
    """(c) CLAM-style: fp32, one read_region at a time in the main process, then a forward per batch."""
    prep = Preprocess(spec).to(device)
    slide = open_slide(slide_path)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(coords), batch_size):
            tiles = []
            for x, y in coords[s:s + batch_size]:
                rgb = read_region_rgb(slide, x, y, 0, footprint)
                if rgb.shape[0] != 256:
                    rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
                tiles.append(torch.from_numpy(rgb).permute(2, 0, 1))
            model(prep(torch.stack(tiles).to(device))).float().cpu()
    slide.close()
    return len(coords) / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--encoder", default=None, help="default: uni_v1 on CUDA, resnet50 on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 16 on CPU")
    ap.add_argument("--workers", type=int, default=None, help="default: CPU cores - 1 (at most 16)")
    ap.add_argument("--n-patches", type=int, default=None, help="default 6000 on CUDA, 160 on CPU")
    ap.add_argument("--naive-patches", type=int, default=None, help="patches for (c); default min(n, 1500)")
    ap.add_argument("--precision", default=None, help="fp32/fp16/bf16; default: the encoder's (bf16 for uni_v1)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder for (a) and (b)")
    ap.add_argument("--weights", default=None, help="a real checkpoint (else random weights)")
    ap.add_argument("--slide", default=None, help="use this slide file (level-0 reads) instead of a generated one")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="generated slide's µm/px (0.25 = 40x: 2x reads)")
    ap.add_argument("--seconds", type=float, default=None, help="duration of (a); default 10 on CUDA, 20 on CPU")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    name = args.encoder or ("uni_v1" if cuda else "resnet50")
    spec = REGISTRY[name]
    precision = args.precision or ("bf16" if name == "uni_v1" else spec.precision)
    bs = args.batch_size or (256 if cuda else 16)
    workers = args.workers if args.workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    n = args.n_patches or (6000 if cuda else 160)
    n_naive = min(n, args.naive_patches or 1500)
    seconds = args.seconds or (10.0 if cuda else 20.0)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    if args.weights:
        encoder = build_encoder(name, args.weights, device=dev)
    else:
        encoder = random_encoder(name, dev)
    model = encoder[0]
    print(f"device: {torch.cuda.get_device_name(dev) if cuda else 'cpu'} ({os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} torch threads); encoder {name} ({spec.arch}, dim {spec.dim}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params), precision "
          f"{precision if cuda else 'fp32 (CPU)'}, batch {bs}, workers {workers}, weights hash {weights_hash(model)}")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsikt_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    footprint = int(round(256 * 0.5 / args.slide_mpp))
    if args.slide:
        slide_path = Path(args.slide)
        with open_slide(slide_path) as s:
            side = min(s.dimensions)
    else:
        side = int(math.ceil(math.sqrt(n)) * footprint)
        slide_path = work / f"bench_{side}px_{args.slide_mpp}mpp.tiff"
        if not slide_path.exists():
            t0 = time.perf_counter()
            write_tiled_slide(slide_path, side, args.slide_mpp)
            print(f"generated {slide_path.name}: {side}x{side} px at {args.slide_mpp} µm/px, "
                  f"{slide_path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s")
    if (side // footprint) ** 2 < n:
        raise SystemExit(f"{slide_path}: room for {(side // footprint) ** 2} patches, asked for {n}")
    patches = work / "patches.h5"
    coords = write_patch_grid(patches, side, n, footprint, 0.5)

    a = model_only(model, spec, dev, bs, precision, seconds)
    print(f"(a) model only        : {a:9.1f} tiles/s  (random tensors on {dev.type}, {seconds:.0f} s)")

    out = work / "features.h5"
    t0 = time.perf_counter()
    extract_features(slide_path, patches, out, name, batch_size=bs, num_workers=workers, device=str(dev),
                     precision=precision, compile=args.compile, encoder_model=encoder)
    b = n / (time.perf_counter() - t0)
    print(f"(b) end to end (ours) : {b:9.1f} tiles/s  ({n} patches of {footprint} px read, {workers} workers, "
          f"{'pinned, ' if cuda else ''}{precision if cuda else 'fp32'}{', compiled' if args.compile else ''}; includes worker start and h5 write)")

    c = naive(model, spec, dev, slide_path, coords[:n_naive], footprint, bs)
    print(f"(c) naive (CLAM-style): {c:9.1f} tiles/s  ({n_naive} patches, fp32, main-process reads, no workers)")
    print(f"(b)/(a) = {b / a:.2f}   (b)/(c) = {b / c:.2f}")


if __name__ == "__main__":
    main()
