"""Patch grids: which cells of a level-0 grid hold tissue, nested grids for several magnifications.

Two grids. ``global`` (default): one grid anchored at level-0 (0, 0), so grids of different
magnifications nest exactly and a slide's patches do not depend on its contours' bounding boxes.
``clam``: CLAM's grid, restarted at each tissue contour's bounding box (for conformance with CLAM).
Both keep a cell by CLAM's containment tests (``four_pt``, ``four_pt_hard``, ``center``, ``basic``),
with holes rejecting cells whose centre lies in them, and optionally a minimum tissue fraction.
The tests are vectorised (wsikt.preprocess.polygon) and give exactly what ``cv2.pointPolygonTest`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from wsikt.core.mags import mag_name
from wsikt.preprocess.polygon import RasterPolygon
from wsikt.preprocess.settings import CONTOUR_FNS
from wsikt.preprocess.tissue import TissueMask


def _four_points(coords: np.ndarray, size: int) -> np.ndarray:
    centre = coords + size // 2
    shift = int(size // 2 * 0.5)
    offsets = np.array([[-shift, -shift], [shift, shift], [shift, -shift], [-shift, shift]], np.float64)
    return centre[:, None, :] + (offsets if shift else np.zeros((1, 2)))[None, :, :]


@dataclass(frozen=True)
class ContourTest:
    """One of CLAM's contour_fn tests: where a candidate cell is probed, and whether all probes or any must be inside."""

    points: Callable[[np.ndarray, int], np.ndarray]  # (M, 2) level-0 top-left, size → (M, P, 2) probes
    all_inside: bool


# preprocess.contour_fn → CLAM's test ('none': no contour test, tissue fraction only; see global_grid)
CONTOUR_TESTS: dict[str, ContourTest] = {
    "four_pt": ContourTest(_four_points, all_inside=False),
    "four_pt_hard": ContourTest(_four_points, all_inside=True),
    "center": ContourTest(lambda c, size: (c + size // 2)[:, None, :], all_inside=False),
    "basic": ContourTest(lambda c, size: c[:, None, :], all_inside=False),
}


def test_points(coords: np.ndarray, size: int, contour_fn: str) -> np.ndarray:
    """CLAM's test points for patches of ``size`` level-0 px at ``coords``: (M, P, 2) float64."""
    if contour_fn not in CONTOUR_TESTS:
        raise ValueError(f"unknown contour_fn '{contour_fn}' (preprocess.contour_fn); use one of {', '.join(CONTOUR_FNS)}")
    return CONTOUR_TESTS[contour_fn].points(np.asarray(coords, dtype=np.float64).reshape(-1, 2), size)


def contour_keeps(poly: RasterPolygon, holes: list[RasterPolygon], coords: np.ndarray, size: int, contour_fn: str) -> np.ndarray:
    """CLAM's isInContours for one contour: the contour test passes and the centre is in no hole."""
    if len(coords) == 0:
        return np.zeros(0, bool)
    pts = test_points(coords, size, contour_fn)
    m, p = pts.shape[:2]
    inside = (poly.test(pts.reshape(-1, 2)) >= 0).reshape(m, p)
    ok = inside.all(1) if CONTOUR_TESTS[contour_fn].all_inside else inside.any(1)
    if holes and ok.any():
        centre = np.asarray(coords, np.float64)[ok] + size / 2  # CLAM: pt + patch_size/2 (float)
        in_hole = np.zeros(len(centre), bool)
        for hole in holes:
            in_hole |= hole.test(centre) > 0
        ok[np.flatnonzero(ok)[in_hole]] = False
    return ok


def _rasters(tissue: TissueMask) -> list[tuple[RasterPolygon, list[RasterPolygon], tuple[int, int, int, int]]]:
    """Per kept contour: its raster polygon, its holes' rasters and its level-0 bounding box."""
    out = []
    for cnt, c0, holes, h0 in zip(tissue.contours, tissue.contours_level0, tissue.holes, tissue.holes_level0):
        poly = RasterPolygon.from_seg_contour(cnt, c0, tissue.downsample)
        hole_polys = [RasterPolygon.from_seg_contour(h, hh, tissue.downsample) for h, hh in zip(holes, h0)]
        out.append((poly, hole_polys, cv2.boundingRect(c0)))
    return out


def tissue_fraction(tissue: TissueMask, coords: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each ``size``-px level-0 cell that is kept tissue, from one integral image of the mask."""
    if len(coords) == 0:
        return np.zeros(0)
    sx, sy = tissue.downsample
    mh, mw = tissue.mask.shape
    integral = cv2.integral(tissue.mask.astype(np.uint8)).astype(np.float64)
    x0 = np.clip(np.round(coords[:, 0] / sx).astype(int), 0, mw)
    x1 = np.clip(np.round((coords[:, 0] + size) / sx).astype(int), 0, mw)
    y0 = np.clip(np.round(coords[:, 1] / sy).astype(int), 0, mh)
    y1 = np.clip(np.round((coords[:, 1] + size) / sy).astype(int), 0, mh)
    x1 = np.maximum(x1, np.minimum(x0 + 1, mw))
    y1 = np.maximum(y1, np.minimum(y0 + 1, mh))
    area = ((x1 - x0) * (y1 - y0)).astype(np.float64)
    px = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.divide(px, area, out=np.zeros_like(px), where=area > 0)


def global_grid(
    tissue: TissueMask,
    level0_size: tuple[int, int],
    footprint: int,
    contour_fn: str = "four_pt",
    min_tissue_fraction: float = 0.0,
) -> np.ndarray:
    """Top-left level-0 coords (N, 2) int64 of full grid cells anchored at (0, 0), row-major.

    Only whole cells: the partial cells at the right and bottom edges (less than ``footprint`` px
    of slide left) are dropped, as CLAM and TRIDENT drop them.

    A cell is kept when, for some tissue contour, CLAM's ``contour_fn`` test passes and its centre
    lies in none of that contour's holes; then, if ``min_tissue_fraction`` > 0, when at least that
    fraction of it is tissue. ``contour_fn='none'`` keeps cells by tissue fraction alone.
    """
    w0, h0 = level0_size
    nx, ny = w0 // footprint, h0 // footprint
    if nx == 0 or ny == 0 or not tissue.contours:
        return np.zeros((0, 2), np.int64)
    keep = np.zeros((ny, nx), bool)
    if contour_fn not in CONTOUR_TESTS:  # 'none': PatchSettings requires min_tissue_fraction > 0 with it
        if min_tissue_fraction <= 0:
            raise ValueError("preprocess.contour_fn 'none' needs preprocess.min_tissue_fraction > 0")
        keep[:] = True
    else:
        for poly, holes, (bx, by, bw, bh) in _rasters(tissue):
            ix = np.arange(max(0, bx // footprint - 1), min(nx, (bx + bw) // footprint + 2))
            iy = np.arange(max(0, by // footprint - 1), min(ny, (by + bh) // footprint + 2))
            gx, gy = np.meshgrid(ix, iy)
            cells = np.stack([gx.ravel(), gy.ravel()], 1)
            cells = cells[~keep[cells[:, 1], cells[:, 0]]]  # already kept by another contour
            ok = contour_keeps(poly, holes, cells * footprint, footprint, contour_fn)
            keep[cells[ok, 1], cells[ok, 0]] = True
    iy, ix = np.nonzero(keep)
    coords = np.stack([ix, iy], 1).astype(np.int64) * footprint
    if min_tissue_fraction > 0:
        coords = coords[tissue_fraction(tissue, coords, footprint) >= min_tissue_fraction]
    return coords


def edge_overhang(coords: np.ndarray, footprint: int, level0_size: tuple[int, int]) -> np.ndarray:
    """Fraction (N,) float32 of each ``footprint``-px cell that lies beyond the slide's right or bottom
    edge: a coarse (context) cell holding the last fine cells can run past it, and is read as white there."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    inside_w = np.clip(level0_size[0] - coords[:, 0], 0, footprint)
    inside_h = np.clip(level0_size[1] - coords[:, 1], 0, footprint)
    return (1.0 - inside_w * inside_h / float(footprint * footprint)).astype(np.float32)


def clam_grid(tissue: TissueMask, footprint: int, contour_fn: str = "four_pt", step: int | None = None) -> np.ndarray:
    """CLAM's ``process_contours`` coordinates: per contour (in order), a grid from its bounding box.

    Candidates run x-major from the box's top-left with ``step`` (default: ``footprint``) and padding
    on (CLAM's default), each tested against its own contour and holes. Equal to CLAM's output.
    """
    step = step or footprint
    parts = []
    for poly, holes, (bx, by, bw, bh) in _rasters(tissue):
        xs, ys = np.arange(bx, bx + bw, step), np.arange(by, by + bh, step)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        cand = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64)
        parts.append(cand[contour_keeps(poly, holes, cand, footprint, contour_fn)])
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def children_grid(coarse: np.ndarray, footprint: int, ratio: int) -> np.ndarray:
    """All ``ratio``² cells of ``footprint`` px inside each coarse cell (``ratio`` × ``footprint`` px), (N·r², 2).

    DSCA's big-to-small patching: a coarse patch kept on tissue brings every finer patch inside it,
    background included; offsets are in level-0 pixels (multiples of the fine footprint).
    """
    j, i = np.divmod(np.arange(ratio * ratio), ratio)  # cell k = row j, column i
    offsets = np.stack([i, j], 1).astype(np.int64) * footprint
    return (np.asarray(coarse, np.int64).reshape(-1, 1, 2) + offsets[None]).reshape(-1, 2)


@dataclass
class Level:
    """One magnification of an aligned multi-level patch set."""

    name: str  # e.g. "20x"
    mpp: float  # target µm/px
    footprint: int  # level-0 pixels
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    parents: dict[str, np.ndarray]  # coarser level name → (N,) row index into its coords


def nest_levels(fine: np.ndarray, fine_mpp: float, fine_footprint: int, coarse_mpps: list[float]) -> list[Level]:
    """Aligned levels: the fine grid plus, per coarser mpp, the cells (anchored at (0, 0)) that hold a
    kept fine patch; every fine patch and every intermediate patch records its parent at each coarser level.

    Coarse footprints are exact integer multiples of the fine one, so a parent holds up to r×r children.
    """
    levels = [Level(mag_name(fine_mpp), fine_mpp, fine_footprint, fine, {})]
    for mpp in sorted(coarse_mpps):
        ratio = mpp / fine_mpp
        r = int(round(ratio))
        if r < 2 or abs(ratio - r) > 1e-6:
            raise ValueError(
                f"preprocess.context_mpp {mpp} is not an integer multiple (≥2) of preprocess.target_mpp "
                f"{fine_mpp}; use e.g. {fine_mpp * 2:g} or {fine_mpp * 4:g}"
            )
        size = fine_footprint * r
        keys = _cell_keys(fine, size)
        uniq = np.unique(keys)  # row-major: y, then x
        coarse = np.stack([uniq % _KEY_BASE, uniq // _KEY_BASE], 1).astype(np.int64) * size
        level = Level(mag_name(mpp), mpp, size, coarse.reshape(-1, 2), {})
        for finer in levels:
            finer.parents[level.name] = np.searchsorted(uniq, _cell_keys(finer.coords, size)).astype(np.int64)
        levels.append(level)
    return levels


_KEY_BASE = 1 << 31


def _cell_keys(coords: np.ndarray, size: int) -> np.ndarray:
    """Row-major keys (y · base + x) of the ``size``-px cells containing ``coords``."""
    cells = np.asarray(coords, np.int64).reshape(-1, 2) // size
    return cells[:, 1] * _KEY_BASE + cells[:, 0]


def qc_tissue_image(thumb_rgb: np.ndarray, tissue: TissueMask, thumb_downsample: tuple[float, float]) -> np.ndarray:
    """Thumbnail with tissue contours (green) and kept holes (blue)."""
    img = np.ascontiguousarray(thumb_rgb.copy())
    scale = np.array([tissue.downsample[0] / thumb_downsample[0], tissue.downsample[1] / thumb_downsample[1]])
    for cnt, holes in zip(tissue.contours, tissue.holes):
        cv2.polylines(img, [(cnt.reshape(-1, 2) * scale).round().astype(np.int32)], True, (0, 160, 0), 2)
        for hole in holes:
            cv2.polylines(img, [(hole.reshape(-1, 2) * scale).round().astype(np.int32)], True, (0, 0, 255), 1)
    return img


def qc_grid_image(thumb_rgb: np.ndarray, levels: list[Level], thumb_downsample: tuple[float, float]) -> np.ndarray:
    """Thumbnail with the kept patch grid of every level (finest dark grey, coarser in colour)."""
    img = np.ascontiguousarray(thumb_rgb.copy())
    colours = [(30, 30, 30), (220, 120, 0), (170, 0, 170), (0, 120, 220)]
    tx, ty = thumb_downsample
    for i, level in enumerate(levels):
        colour, width = colours[i % len(colours)], 1 if i == 0 else 2
        for x, y in level.coords:
            cv2.rectangle(img, (int(x / tx), int(y / ty)), (int((x + level.footprint) / tx), int((y + level.footprint) / ty)), colour, width)
    return img
