#!/usr/bin/env python
"""What Macenko colour normalisation (features.color_norm: macenko, DSCA's pipeline) costs in feature extraction.

    python benchmarks/color_norm.py                       # CPU, 256 tissue tiles of the CMU slide
    python benchmarks/color_norm.py --device cuda --encoder resnet50 --n 2048

Embeds the same tiles (read from ../shared/fixtures/slides/CMU-1-Small-Region.svs, repeated to --n)
with the encoder alone and with the Macenko normaliser in front of it, alternating runs side by side,
and prints the tiles per second of each and their ratio. The normaliser is torchstain's, one tile at
a time on the embedding device; the encoder runs in batches of --batch.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import openslide
import torch

from wsikt.core.device import resolve_device
from wsikt.features.encoders import build_encoder
from wsikt.features.patch_stream import Preprocess
from wsikt.features.stain import MacenkoStain

SLIDE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "slides" / "CMU-1-Small-Region.svs"


def tissue_tiles(n: int) -> torch.Tensor:
    """``n`` uint8 (3, 256, 256) tiles: the slide's darkest (most tissue) 256-px cells, repeated."""
    with openslide.OpenSlide(str(SLIDE)) as s:
        w, h = s.dimensions
        cells = [np.asarray(s.read_region((x, y), 0, (256, 256)).convert("RGB"))
                 for y in range(0, h - 256, 256) for x in range(0, w - 256, 256)]
    cells = sorted(cells, key=lambda c: c.mean())[: max(1, len(cells) // 3)]
    tiles = [cells[i % len(cells)] for i in range(n)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2)))


def run(tiles: torch.Tensor, model, spec, device, batch: int, stain: MacenkoStain | None) -> float:
    """Seconds to embed every tile (stain normalisation first when given)."""
    prep = Preprocess(spec).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(tiles), batch):
            x = tiles[start:start + batch].to(device)
            model(prep(x if stain is None else stain(x)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--encoder", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    device = resolve_device(a.device)
    model, spec, _ = build_encoder(a.encoder, None, False, device=device)
    tiles = tissue_tiles(a.n)
    plain, normed = [], []
    for _ in range(a.runs):
        plain.append(run(tiles, model, spec, device, a.batch, None))
        normed.append(run(tiles, model, spec, device, a.batch, MacenkoStain()))
    p, m = min(plain), min(normed)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"{a.n} tiles, encoder {a.encoder}, batch {a.batch}, best of {a.runs} alternating runs")
    print(f"encoder alone:          {a.n / p:8.1f} tiles/s")
    print(f"Macenko + encoder:      {a.n / m:8.1f} tiles/s   ({1000 * (m - p) / a.n:.2f} ms of Macenko per tile)")
    print(f"ratio (with / without): {m / p:8.2f}x the time")


if __name__ == "__main__":
    main()
