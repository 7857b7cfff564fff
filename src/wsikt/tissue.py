"""Tissue segmentation on a low-resolution level: HSV saturation, median blur, threshold, close."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide

from wsikt.io import atomic_path
from wsikt.slide import best_level_for_downsample, read_region_rgb


@dataclass
class TissueMask:
    """Binary tissue mask at a pyramid level, with the scale back to level-0 pixels."""

    mask: np.ndarray  # uint8 {0,1}, shape (h, w)
    level: int
    downsample: tuple[float, float]  # level-0 pixels per mask pixel (x, y)
    contours: list[np.ndarray]  # tissue outer rings, mask pixels
    holes: list[list[np.ndarray]]  # per contour, its kept holes


def read_level_rgb(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    """The whole level as RGB (white where transparent)."""
    w, h = slide.level_dimensions[level]
    rgba = np.asarray(slide.read_region((0, 0), level, (w, h)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def segment_tissue(
    slide: openslide.OpenSlide,
    mpp0: float,
    seg_downsample: float = 64.0,
    sthresh: int = 8,
    mthresh: int = 7,
    close: int = 4,
    use_otsu: bool = True,
    min_tissue_um2: float = 0.0,
    min_hole_um2: float = 0.0,
) -> TissueMask:
    """Segment tissue at the level nearest ``seg_downsample``; areas thresholds in µm².

    Saturation is median-blurred (``mthresh``, odd) and thresholded at ``sthresh`` or Otsu; a
    morphological close of ``close`` pixels fills gaps. Pieces smaller than ``min_tissue_um2``
    (net of holes) are dropped; holes smaller than ``min_hole_um2`` are filled.
    """
    level = best_level_for_downsample(slide.level_downsamples, seg_downsample)
    rgb = read_level_rgb(slide, level)
    w0, h0 = slide.dimensions
    h, w = rgb.shape[:2]
    ds = (w0 / w, h0 / h)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(sat, mthresh if mthresh % 2 == 1 else mthresh + 1)
    if use_otsu:
        _, binary = cv2.threshold(sat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        # Otsu on a near-blank slide splits noise; require the fixed threshold too.
        binary &= (sat > sthresh).astype(np.uint8)
    else:
        binary = (sat > sthresh).astype(np.uint8)
    if close > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
    px_um2 = ds[0] * ds[1] * mpp0 * mpp0
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    kept, kept_holes = [], []
    if hierarchy is not None:
        hier = hierarchy[0]
        for i, cnt in enumerate(contours):
            if hier[i][3] != -1:
                continue  # a hole; handled with its parent
            holes = [contours[j] for j in range(len(contours)) if hier[j][3] == i]
            holes = [hc for hc in holes if cv2.contourArea(hc) * px_um2 >= min_hole_um2]
            net = cv2.contourArea(cnt) - sum(cv2.contourArea(hc) for hc in holes)
            if net * px_um2 >= min_tissue_um2 and net > 0:
                kept.append(cnt)
                kept_holes.append(holes)
    mask = np.zeros_like(binary)
    for cnt, holes in zip(kept, kept_holes):
        cv2.drawContours(mask, [cnt], -1, 1, thickness=cv2.FILLED)
        if holes:
            cv2.drawContours(mask, holes, -1, 0, thickness=cv2.FILLED)
    return TissueMask(mask=mask, level=level, downsample=ds, contours=kept, holes=kept_holes)


def tissue_geojson(tissue: TissueMask) -> dict:
    """Tissue as a GeoJSON FeatureCollection of polygons in level-0 pixels (QuPath opens it)."""
    sx, sy = tissue.downsample

    def ring(cnt: np.ndarray) -> list[list[float]]:
        pts = cnt.reshape(-1, 2).astype(float) * (sx, sy)
        coords = pts.round(1).tolist()
        coords.append(coords[0])
        return coords

    features = []
    for cnt, holes in zip(tissue.contours, tissue.holes):
        if len(cnt) < 3:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring(cnt)] + [ring(h) for h in holes if len(h) >= 3]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}},
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        "properties": {"seg_level": tissue.level, "downsample": list(tissue.downsample)},
    }


def write_geojson(obj: dict, path: str | Path) -> None:
    """Write GeoJSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj))
