#!/usr/bin/env python
"""Peak memory of segmenting a single-level slide, read in strips and shrunk (seg_level_by: mpp).

    python benchmarks/seg_memory.py                        # 12,000 × 10,000 and 100,000 × 80,000 px
    python benchmarks/seg_memory.py --sizes 12000x10000    # quick

For each size, writes (once, cached in benchmarks/out/) a one-level tiled JPEG TIFF at 0.25 µm/px:
plain glass with a block of tissue-like tiles (tiles written pre-compressed, so 100k × 80k px takes
seconds and ~0.2 GB of disk). Then, in a fresh child process on one core, segments it as the workflow
does with config/tcga.yaml (16 µm/px) and prints wall time and the process's peak RSS (ru_maxrss). The
sizes side by side show memory staying flat while the slide grows 67× (goal ≤ 4 GiB at 100k × 80k);
reading the level whole would need 4 bytes per pixel for OpenSlide's RGBA buffer alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
MPP = 0.25
TILE = 256
SEGMENTATION = {"preset": "tcga", "area_unit": "um2", "seg_downsample": 64, "seg_level_by": "mpp"}  # config/tcga.yaml


def make_single_level(path: Path, width: int, height: int) -> None:
    """A one-level tiled JPEG TIFF with mpp in the resolution tags; tissue tiles fill the middle third."""
    rng = np.random.default_rng(0)
    glass = imagecodecs.jpeg_encode(np.full((TILE, TILE, 3), (242, 242, 240), np.uint8), level=80)
    pink = np.clip(np.array([228, 150, 200]) + rng.integers(-20, 21, (8, TILE, TILE, 1)), 0, 255).astype(np.uint8)
    tissue = [imagecodecs.jpeg_encode(t, level=80) for t in pink]
    nx, ny = -(-width // TILE), -(-height // TILE)

    def tiles():
        for ty in range(ny):
            for tx in range(nx):
                inside = nx // 3 <= tx < 2 * nx // 3 and ny // 3 <= ty < 2 * ny // 3
                yield tissue[(tx * 7 + ty) % 8] if inside else glass

    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                  compression="jpeg", resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER", metadata=None)
    os.replace(tmp, path)


CHILD = r"""
import json, resource, sys, time
import cv2
cv2.setNumThreads(1)
from wsikt.preprocess.slide import open_slide
from wsikt.preprocess.tissue import resolve_segmentation, segment_image, segmentation_image
path, seg = sys.argv[1], json.loads(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
slide = open_slide(path)
image = segmentation_image(slide, 0.25, resolve_segmentation(seg), name=path)
tissue = segment_image(image, 0.25, resolve_segmentation(seg))
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_before_mib": before,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "image": list(image.rgb.shape[:2][::-1]), "pieces": len(tissue.contours)}))
"""


def measure(path: Path) -> dict:
    """Segment ``path`` in a fresh process pinned to one core; its wall time and peak RSS."""
    cmd = [sys.executable, "-c", CHILD, str(path), json.dumps(SEGMENTATION)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{path}: segmentation failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["12000x10000", "100000x80000"])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one core")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        path = OUT / f"single_level_{width}x{height}.tiff"
        if not path.exists():
            make_single_level(path, width, height)
        r = measure(path)
        print(f"{width:>7} × {height:<7} px single level ({width * height / 1e9:.2f} Gpx, {path.stat().st_size / 2**20:.0f} MiB on disk): "
              f"segmentation image {r['image'][0]} × {r['image'][1]} px at 16 µm/px, {r['pieces']} tissue piece(s), "
              f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB (after imports {r['rss_before_mib']:.0f} MiB; goal ≤ 4096 MiB)")


if __name__ == "__main__":
    main()
