"""Patch grids anchored at level-0 (0, 0) at a target mpp, kept by tissue fraction, saved as h5."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from wsikt.io import atomic_path
from wsikt.slide import ReadPlan
from wsikt.tissue import TissueMask


def patch_grid(
    tissue: TissueMask,
    level0_size: tuple[int, int],
    footprint: int,
    min_tissue_fraction: float = 0.5,
) -> np.ndarray:
    """Top-left level-0 coords (N, 2) int64 of full grid cells with enough tissue, row-major.

    The grid starts at level-0 (0, 0) with step = footprint. The tissue fraction of every cell is
    read from an integral image of the mask in one vectorised pass (no per-patch contour test).
    """
    w0, h0 = level0_size
    nx, ny = w0 // footprint, h0 // footprint
    if nx == 0 or ny == 0:
        return np.zeros((0, 2), dtype=np.int64)
    sx, sy = tissue.downsample
    integral = cv2.integral(tissue.mask.astype(np.uint8)).astype(np.float64)  # (h+1, w+1)
    mh, mw = tissue.mask.shape
    xs0 = np.arange(nx) * footprint
    ys0 = np.arange(ny) * footprint
    cx0 = np.clip(np.round(xs0 / sx).astype(int), 0, mw)
    cx1 = np.clip(np.round((xs0 + footprint) / sx).astype(int), 0, mw)
    cy0 = np.clip(np.round(ys0 / sy).astype(int), 0, mh)
    cy1 = np.clip(np.round((ys0 + footprint) / sy).astype(int), 0, mh)
    cx1 = np.maximum(cx1, np.minimum(cx0 + 1, mw))
    cy1 = np.maximum(cy1, np.minimum(cy0 + 1, mh))
    area = np.outer(cy1 - cy0, cx1 - cx0).astype(np.float64)
    tissue_px = (
        integral[np.ix_(cy1, cx1)] - integral[np.ix_(cy0, cx1)] - integral[np.ix_(cy1, cx0)] + integral[np.ix_(cy0, cx0)]
    )
    frac = np.divide(tissue_px, area, out=np.zeros_like(tissue_px), where=area > 0)
    iy, ix = np.nonzero(frac >= min_tissue_fraction)
    coords = np.stack([xs0[ix], ys0[iy]], axis=1).astype(np.int64)
    return coords


def write_patches_h5(
    path: str | Path,
    coords: np.ndarray,
    plan: ReadPlan,
    slide_name: str,
    level0_size: tuple[int, int],
    level_dims: list[tuple[int, int]],
    mpp0: float,
    target_mpp: float,
) -> None:
    """Write coords with CLAM's and TRIDENT's attrs (and what we did to reach the target mpp)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("coords", data=coords.astype(np.int64))
            lw, lh = level_dims[plan.level]
            attrs = {
                # CLAM
                # CLAM reads patch_size pixels at patch_level (its meaning; equals the target size
                # whenever a native level is read). TRIDENT readers use patch_size_level0.
                "patch_level": plan.level,
                "patch_size": plan.read_size,
                "downsample": np.array([level0_size[0] / lw, level0_size[1] / lh], dtype=np.float64),
                "level_dim": np.array([lw, lh], dtype=np.int64),
                "downsampled_level_dim": np.array([lw, lh], dtype=np.int64),
                "name": slide_name,
                # TRIDENT
                "patch_size_level0": plan.footprint,
                "level0_magnification": 10.0 / mpp0,
                "target_magnification": 10.0 / target_mpp,
                "overlap": 0,
                "level0_width": int(level0_size[0]),
                "level0_height": int(level0_size[1]),
                # wsikt: how pixels reach the target mpp
                "mpp": float(mpp0),
                "target_mpp": float(target_mpp),
                "read_level": plan.level,
                "read_size": plan.read_size,
                "target_patch_size": plan.patch_size,
                "level_mpp": float(plan.level_mpp),
                "resized": bool(plan.resized),
            }
            for key, value in attrs.items():
                dset.attrs[key] = value


def qc_image(
    thumb_rgb: np.ndarray, tissue: TissueMask, coords: np.ndarray, footprint: int, thumb_downsample: tuple[float, float]
) -> np.ndarray:
    """Thumbnail with tissue contours (green), holes (blue) and the kept patch grid (black)."""
    img = np.ascontiguousarray(thumb_rgb.copy())
    tx, ty = thumb_downsample
    mx, my = tissue.downsample
    scale = np.array([mx / tx, my / ty])
    for cnt, holes in zip(tissue.contours, tissue.holes):
        c = (cnt.reshape(-1, 2) * scale).round().astype(np.int32)
        cv2.polylines(img, [c], True, (0, 160, 0), 2)
        for hole in holes:
            hc = (hole.reshape(-1, 2) * scale).round().astype(np.int32)
            cv2.polylines(img, [hc], True, (0, 0, 255), 1)
    for x, y in coords:
        x0, y0 = int(x / tx), int(y / ty)
        x1, y1 = int((x + footprint) / tx), int((y + footprint) / ty)
        cv2.rectangle(img, (x0, y0), (x1, y1), (20, 20, 20), 1)
    return img


def write_png(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB image as PNG atomically."""
    with atomic_path(path, suffix=".partial.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write PNG")
