"""Real tiled JPEG TIFFs that OpenSlide opens, shaped like the slides users bring: Aperio pyramids
whose level downsamples are not integers, and single-level TIFFs (tiles written pre-compressed, so a
large slide costs seconds and little disk)."""

from __future__ import annotations

from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile

GLASS = (242, 242, 240)
TISSUE = (228, 150, 200)
TILE = 256


def tissue_rgb(width: int, height: int, discs: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """Glass with H&E-pink textured discs ``(cx, cy, r)`` given as fractions of the width."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = GLASS
    mask = np.zeros((height, width), np.uint8)
    for cx, cy, r in discs:
        cv2.circle(mask, (int(cx * width), int(cy * height)), int(r * width), 1, -1)
    noise = np.random.default_rng(seed).integers(-15, 16, (height, width, 1), dtype=np.int16)
    tex = np.clip(np.asarray(TISSUE, np.int16) + noise, 0, 255).astype(np.uint8)
    rgb[mask > 0] = tex[mask > 0]
    return rgb


def write_aperio(path: Path, rgb: np.ndarray, mpp: float, level_downsamples: tuple[float, ...] = (4.0002, 16.0025)) -> None:
    """An Aperio SVS (AppMag 40, MPP in the description) whose levels are floor(level-0 size / ds), as
    Aperio's scanners write them: OpenSlide then reports downsamples a little above 4 and 16."""
    h, w = rgb.shape[:2]
    levels = [rgb] + [cv2.resize(rgb, (int(w / ds), int(h / ds)), interpolation=cv2.INTER_AREA) for ds in level_downsamples]
    desc = f"Aperio Image Library test\r\n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG Q=85|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, level in enumerate(levels):
            tif.write(level, tile=(TILE, TILE), photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                      subfiletype=0 if i == 0 else 1, description=desc if i == 0 else None, metadata=None)


def write_single_level(path: Path, width: int, height: int, mpp: float, tissue_box: tuple[int, int, int, int]) -> None:
    """A one-level generic tiled TIFF: glass, with textured tissue in the level-0 box (x0, y0, x1, y1)
    rounded out to whole tiles; mpp in the TIFF resolution tags."""
    glass = imagecodecs.jpeg_encode(np.full((TILE, TILE, 3), GLASS, np.uint8), level=85)
    tissue = [imagecodecs.jpeg_encode(tissue_rgb(TILE, TILE, [(0.5, 0.5, 2.0)], seed=s), level=85) for s in range(4)]
    x0, y0, x1, y1 = (v // TILE for v in tissue_box)

    def tiles():
        for ty in range(-(-height // TILE)):
            for tx in range(-(-width // TILE)):
                yield tissue[(tx + ty) % 4] if (x0 <= tx < x1 and y0 <= ty < y1) else glass

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                  compression="jpeg", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER", metadata=None)
