"""Exact, vectorised point-in-polygon tests with OpenCV's ``pointPolygonTest`` semantics.

CLAM keeps a patch when ``cv2.pointPolygonTest`` puts its test points inside a tissue contour, one
Python call per point. Here the same integer algorithm runs over all points at once, and points far
from a contour are decided from its raster (a lookup), so only points near the boundary need the
exact edge test. Results equal OpenCV's: +1 inside, 0 on an edge or vertex, -1 outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_MARGIN = 3.0  # seg-level pixels from the raster boundary within which the exact test decides


def polygon_test(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """OpenCV's ``pointPolygonTest(polygon, pt, measureDist=False)`` for many points: int8 in {-1, 0, 1}.

    ``points`` (M, 2) and ``polygon`` (K, 2) may hold half-integers: both are doubled so the
    crossing test runs in exact int64 arithmetic. Only (point, edge) pairs whose edge touches the
    point's row can change OpenCV's result, so just those pairs are formed, all at once.
    """
    pts = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2) * 2).astype(np.int64)
    poly = np.rint(np.asarray(polygon, dtype=np.float64).reshape(-1, 2) * 2).astype(np.int64)
    out = np.full(len(pts), -1, dtype=np.int8)
    if len(pts) == 0 or len(poly) == 0:
        return out
    v0 = np.roll(poly, 1, axis=0)  # OpenCV walks edges (cnt[i-1] → cnt[i]), starting from the last vertex
    v = poly
    rows, inverse = np.unique(pts[:, 1], return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # points grouped by row
    bounds = np.searchsorted(inverse[order], np.arange(len(rows) + 1))
    # rows touched by each edge: [lo, hi) into ``rows``
    lo = np.searchsorted(rows, np.minimum(v0[:, 1], v[:, 1]), "left")
    hi = np.searchsorted(rows, np.maximum(v0[:, 1], v[:, 1]), "right")
    edge, row = _expand(np.arange(len(v)), lo, hi - lo)
    per_row = np.diff(bounds)
    edge, slot = _expand(edge, bounds[row], per_row[row])
    if len(edge) == 0:
        return out
    p = order[slot]
    px, py = pts[p, 0], pts[p, 1]
    vx, vy, v0x, v0y = v[edge, 0], v[edge, 1], v0[edge, 0], v0[edge, 1]
    skip = ((v0y <= py) & (vy <= py)) | ((v0y > py) & (vy > py)) | ((v0x < px) & (vx < px))
    on_skipped = skip & (py == vy) & (
        (px == vx) | ((py == v0y) & (((v0x <= px) & (px <= vx)) | ((vx <= px) & (px <= v0x))))
    )
    dist = (py - v0y) * (vx - v0x) - (px - v0x) * (vy - v0y)
    active = ~skip
    on_edge = np.bincount(p, weights=on_skipped | (active & (dist == 0)), minlength=len(pts)) > 0
    dist = np.where(vy < v0y, -dist, dist)
    crossings = np.bincount(p, weights=active & (dist > 0), minlength=len(pts)).astype(np.int64)
    return np.where(on_edge, 0, np.where(crossings % 2 == 1, 1, -1)).astype(np.int8)


def _expand(keys: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, the run ``starts .. starts + counts``: (repeated keys, run values), flattened."""
    counts = np.maximum(counts, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(keys, counts), np.repeat(starts, counts) + (np.arange(total) - first)


@dataclass
class RasterPolygon:
    """A polygon in level-0 pixels plus its raster at the segmentation level, for fast lookups.

    ``level0`` is what the exact test uses (CLAM's int32-scaled contour); the raster (filled mask and
    a band around the drawn boundary, both at the segmentation level) decides points farther than
    ``_MARGIN`` pixels from the boundary, where raster and polygon cannot disagree.
    """

    level0: np.ndarray  # (K, 2) int64, level-0 pixels
    scale: tuple[float, float]  # level-0 pixels per segmentation-level pixel (x, y)
    origin: tuple[int, int]  # top-left of the raster crop, segmentation-level pixels
    filled: np.ndarray  # uint8 (h, w), 1 inside or on the polygon
    near: np.ndarray  # uint8 (h, w), 1 within _MARGIN pixels of the drawn boundary

    @classmethod
    def from_seg_contour(cls, seg_contour: np.ndarray, level0: np.ndarray, scale: tuple[float, float]) -> "RasterPolygon":
        """Raster a contour given at the segmentation level (as findContours returns it)."""
        pts = seg_contour.reshape(-1, 2).astype(np.int64)
        pad = int(_MARGIN) + 2
        x0, y0 = pts.min(0) - pad
        x1, y1 = pts.max(0) + pad + 1
        local = (pts - (x0, y0)).astype(np.int32).reshape(-1, 1, 2)
        shape = (int(y1 - y0), int(x1 - x0))
        filled = np.zeros(shape, np.uint8)
        cv2.drawContours(filled, [local], -1, 1, thickness=cv2.FILLED)
        boundary = np.zeros(shape, np.uint8)
        cv2.drawContours(boundary, [local], -1, 1, thickness=1)
        k = 2 * int(np.ceil(_MARGIN)) + 1  # a square covers the disc of radius _MARGIN: conservative
        near = cv2.dilate(boundary, np.ones((k, k), np.uint8))
        return cls(level0.reshape(-1, 2).astype(np.int64), scale, (int(x0), int(y0)), filled, near)

    def test(self, points: np.ndarray) -> np.ndarray:
        """``polygon_test`` for level-0 ``points`` (M, 2): raster lookup far from the edge, exact near it."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = np.full(len(pts), -1, dtype=np.int8)
        if len(pts) == 0:
            return out
        h, w = self.filled.shape
        cx = np.rint(pts[:, 0] / self.scale[0]).astype(np.int64) - self.origin[0]
        cy = np.rint(pts[:, 1] / self.scale[1]).astype(np.int64) - self.origin[1]
        inside_crop = (cx >= 0) & (cy >= 0) & (cx < w) & (cy < h)
        idx = np.flatnonzero(inside_crop)
        far = self.near[cy[idx], cx[idx]] == 0
        decided = idx[far]
        out[decided] = np.where(self.filled[cy[decided], cx[decided]] > 0, 1, -1)
        near = idx[~far]
        if len(near):
            out[near] = polygon_test(pts[near], self.level0)
        return out
