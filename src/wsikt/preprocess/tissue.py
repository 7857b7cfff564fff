"""Tissue segmentation as CLAM does it (HSV saturation, median blur, threshold, close, contours with
holes, area filters), with CLAM's presets and an area mode in µm² that means the same at 40x and 20x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np
import openslide

from wsikt.core.io import atomic_path
from wsikt.preprocess.slide import SlideError, choose_level, read_level_rgb, read_level_scaled

CLAM_REF_PATCH = 512  # CLAM counts areas in 512×512 level-0 patches
REFERENCE_MPP = 0.25  # CLAM's presets were tuned on 40x scans: the µm² mode converts at this mpp
MAX_SEG_PIXELS = 1e8  # largest segmentation image (memory: ~0.5 GiB of RGB, HSV and masks at this size)


@dataclass(frozen=True)
class SegmentationParams:
    """CLAM's segmentation knobs; ``area_unit`` says how ``a_t``/``a_h`` are counted.

    ``area_unit='clam'``: in 512×512 level-0 patches (CLAM: the same number means 4× the tissue on
    a 20x scan as on a 40x scan). ``'um2'``: in µm², physical on every scan.
    ``seg_level_by='clam'``: segment at OpenSlide's best level for ``seg_downsample`` (CLAM; a 20x scan
    is then segmented at twice a 40x scan's µm/px). ``'mpp'``: segment at ``seg_downsample`` ×
    0.25 µm/px on every scan (64 → 16 µm/px), from a level within tolerance or a finer one shrunk.
    """

    seg_downsample: float = 64.0
    seg_level_by: str = "clam"  # 'clam': OpenSlide's best level for seg_downsample; 'mpp': seg_downsample × 0.25 µm/px
    sthresh: int = 8
    sthresh_up: int = 255
    mthresh: int = 7
    close: int = 4
    use_otsu: bool = False
    otsu_min: int = 0  # floor under Otsu's threshold (0 = CLAM); stops Otsu splitting a blank slide's noise
    a_t: float = 100.0
    a_h: float = 16.0
    max_n_holes: int = 8
    area_unit: str = "clam"


# CLAM's presets (presets/*.csv in mahmoodlab/CLAM) and its create_patches_fp.py defaults.
PRESETS: dict[str, dict] = {
    "clam_default": dict(sthresh=8, mthresh=7, close=4, use_otsu=False, a_t=100, a_h=16, max_n_holes=8),
    "tcga": dict(sthresh=8, mthresh=7, close=4, use_otsu=False, a_t=16, a_h=4, max_n_holes=8),
    "bwh_biopsy": dict(sthresh=15, mthresh=11, close=2, use_otsu=False, a_t=1, a_h=1, max_n_holes=2),
    "bwh_resection": dict(sthresh=15, mthresh=11, close=4, use_otsu=False, a_t=100, a_h=16, max_n_holes=8),
}


def clam_units_to_um2(n_patches: float) -> float:
    """A CLAM area (512×512 level-0 patches) in µm² at the 40x scans CLAM's presets were tuned on."""
    return float(n_patches) * (CLAM_REF_PATCH * REFERENCE_MPP) ** 2


def resolve_segmentation(cfg: dict | None) -> SegmentationParams:
    """Config (preprocess.segmentation) → params: CLAM defaults, then the preset, then explicit keys.

    With ``area_unit: um2`` a preset's a_t/a_h are converted to µm² at 0.25 µm/px, so ``tcga`` keeps
    the same physical tissue on a 20x scan as on the 40x scans it was tuned on.
    """
    cfg = {k: v for k, v in (cfg or {}).items() if v is not None}
    preset = cfg.pop("preset", None)
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(
                f"unknown segmentation preset '{preset}' (config key preprocess.segmentation.preset); "
                f"known: {', '.join(sorted(PRESETS))}"
            )
        values.update(PRESETS[preset])
        if cfg.get("area_unit") == "um2":
            values["a_t"] = clam_units_to_um2(values["a_t"])
            values["a_h"] = clam_units_to_um2(values["a_h"])
    known = {f.name for f in fields(SegmentationParams)}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in preprocess.segmentation; known: {sorted(known)}")
    values.update(cfg)
    params = replace(SegmentationParams(), **values)
    if params.area_unit not in ("clam", "um2"):
        raise ValueError(f"preprocess.segmentation.area_unit '{params.area_unit}' must be 'clam' or 'um2'")
    if params.seg_level_by not in ("clam", "mpp"):
        raise ValueError(f"preprocess.segmentation.seg_level_by '{params.seg_level_by}' must be 'mpp' or 'clam'")
    if params.mthresh % 2 != 1:
        raise ValueError(f"preprocess.segmentation.mthresh {params.mthresh} must be odd (a median-blur kernel)")
    return params


@dataclass
class TissueMask:
    """Kept tissue at the segmentation level: contours, their kept holes, the mask, the scale to level 0."""

    mask: np.ndarray  # uint8 {0,1} (h, w): kept tissue minus kept holes
    level: int
    downsample: tuple[float, float]  # level-0 pixels per mask pixel (x, y), CLAM's estimate
    contours: list[np.ndarray]  # tissue outer rings, mask pixels (findContours layout)
    holes: list[list[np.ndarray]]  # per contour, its kept holes, mask pixels

    @property
    def contours_level0(self) -> list[np.ndarray]:
        """Contours in level-0 pixels, scaled and truncated to int32 exactly as CLAM does."""
        return [np.array(c * np.asarray(self.downsample), dtype="int32") for c in self.contours]

    @property
    def holes_level0(self) -> list[list[np.ndarray]]:
        """Holes in level-0 pixels, scaled and truncated as CLAM does."""
        ds = np.asarray(self.downsample)
        return [[np.array(h * ds, dtype="int32") for h in hs] for hs in self.holes]


@dataclass
class SegmentationImage:
    """The RGB image tissue is segmented on: which level was read and its level-0 downsample (x, y)."""

    rgb: np.ndarray
    level: int
    downsample: tuple[float, float]


def segmentation_level(slide: openslide.OpenSlide, seg_downsample: float) -> int:
    """CLAM's choice: level 0 for a one-level slide, else OpenSlide's best level for the downsample."""
    if slide.level_count == 1:
        return 0
    return int(slide.get_best_level_for_downsample(seg_downsample))


def segmentation_image(
    slide: openslide.OpenSlide, mpp0: float | None, params: SegmentationParams, name: str = "slide", tolerance: float = 0.1
) -> SegmentationImage:
    """Read the image to segment, once. 'mpp' mode: at seg_downsample × 0.25 µm/px, from the level within
    ``tolerance`` or the coarsest finer one shrunk strip by strip (any single-level slide fits in memory);
    a scan coarser than that µm/px is segmented at level 0, never enlarged.
    'clam' mode: CLAM's level, read whole. ``name`` (the slide's path) heads any error."""
    if params.seg_level_by == "mpp":
        if mpp0 is None:
            raise ValueError(f"{name}: preprocess.segmentation.seg_level_by 'mpp' needs the slide's mpp")
        seg_mpp = params.seg_downsample * REFERENCE_MPP
        level, native = choose_level(tuple(slide.level_downsamples), mpp0, seg_mpp, tolerance)
        w0, h0 = slide.dimensions
        size = slide.level_dimensions[level]
        if not native and seg_mpp > mpp0 * slide.level_downsamples[level]:  # shrink, never enlarge
            size = (max(1, round(w0 * mpp0 / seg_mpp)), max(1, round(h0 * mpp0 / seg_mpp)))
        key = "raise preprocess.segmentation.seg_downsample"
    else:
        level = segmentation_level(slide, params.seg_downsample)
        size = slide.level_dimensions[level]
        key = "set preprocess.segmentation.seg_level_by: mpp (reads the slide in strips and shrinks them)"
    if size[0] * size[1] > MAX_SEG_PIXELS:
        raise SlideError(f"{name}: segmentation image would be {size[0]}×{size[1]} px (> {MAX_SEG_PIXELS:.0e}); {key}")
    rgb = read_level_scaled(slide, level, size) if params.seg_level_by == "mpp" else read_level_rgb(slide, level)
    return SegmentationImage(rgb, level, (slide.dimensions[0] / size[0], slide.dimensions[1] / size[1]))


def threshold_saturation(rgb: np.ndarray, p: SegmentationParams) -> np.ndarray:
    """CLAM's binary image: HSV saturation, median blur, fixed or Otsu threshold, close (values 0/255)."""
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(sat, p.mthresh)
    if p.use_otsu:
        t, binary = cv2.threshold(sat, 0, p.sthresh_up, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
        if t < p.otsu_min:
            _, binary = cv2.threshold(sat, p.otsu_min, p.sthresh_up, cv2.THRESH_BINARY)
    else:
        _, binary = cv2.threshold(sat, p.sthresh, p.sthresh_up, cv2.THRESH_BINARY)
    if p.close > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((p.close, p.close), np.uint8))
    return binary


def filter_contours(
    contours: tuple[np.ndarray, ...], hierarchy: np.ndarray | None, a_t: float, a_h: float, max_n_holes: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """CLAM's filter: keep outer contours whose area net of all holes exceeds ``a_t`` (mask px²);
    per kept contour the ``max_n_holes`` largest holes, then those larger than ``a_h``."""
    if hierarchy is None or len(contours) == 0:
        return [], []
    parent = hierarchy.reshape(-1, 4)[:, 3]
    areas = np.array([cv2.contourArea(c) for c in contours])
    kept, kept_holes = [], []
    for idx in np.flatnonzero(parent == -1):
        hole_idx = np.flatnonzero(parent == idx)
        net = areas[idx] - areas[hole_idx].sum()
        if net == 0 or not (a_t < net):
            continue
        kept.append(contours[idx])
        ranked = sorted(hole_idx, key=lambda j: areas[j], reverse=True)[:max_n_holes]
        kept_holes.append([contours[j] for j in ranked if areas[j] > a_h])
    return kept, kept_holes


def segment_tissue(
    slide: openslide.OpenSlide, mpp0: float | None, params: SegmentationParams, name: str = "slide", tolerance: float = 0.1
) -> TissueMask:
    """Read the segmentation image (see ``segmentation_image``) and segment it with CLAM's algorithm.

    ``mpp0`` (level-0 µm/px) is needed when ``params.area_unit`` is 'um2' or ``seg_level_by`` is 'mpp'.
    """
    return segment_image(segmentation_image(slide, mpp0, params, name, tolerance), mpp0, params)


def segment_image(image: SegmentationImage, mpp0: float | None, params: SegmentationParams) -> TissueMask:
    """CLAM's segmentTissue on an already read image: threshold, contours with holes, area filters."""
    ds = image.downsample
    binary = threshold_saturation(image.rgb, params)
    if params.area_unit == "um2":
        if mpp0 is None:
            raise ValueError("preprocess.segmentation.area_unit 'um2' needs the slide's mpp")
        px_area = ds[0] * ds[1] * mpp0 * mpp0  # µm² per mask pixel
        a_t, a_h = params.a_t / px_area, params.a_h / px_area
    else:
        ref_area = int(CLAM_REF_PATCH**2 / (ds[0] * ds[1]))  # CLAM truncates to int
        a_t, a_h = params.a_t * ref_area, params.a_h * ref_area
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    kept, kept_holes = filter_contours(contours, hierarchy, a_t, a_h, params.max_n_holes)
    mask = np.zeros(binary.shape, np.uint8)
    for cnt, holes in zip(kept, kept_holes):
        cv2.drawContours(mask, [cnt], -1, 1, thickness=cv2.FILLED)
        if holes:
            cv2.drawContours(mask, holes, -1, 0, thickness=cv2.FILLED)
    return TissueMask(mask=mask, level=image.level, downsample=ds, contours=kept, holes=kept_holes)


def tissue_geojson(tissue: TissueMask, properties: dict | None = None) -> dict:
    """Tissue as a GeoJSON FeatureCollection in level-0 pixels (QuPath opens it): one Polygon per
    tissue piece, outer ring = contour, further rings = its kept holes."""

    def ring(cnt: np.ndarray) -> list[list[int]]:
        pts = cnt.reshape(-1, 2).tolist()
        return pts + [pts[0]]

    features = []
    for cnt, holes in zip(tissue.contours_level0, tissue.holes_level0):
        if len(cnt) < 3:
            continue
        rings = [ring(cnt)] + [ring(h) for h in holes if len(h) >= 3]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}},
            }
        )
    props = {"seg_level": tissue.level, "downsample": list(tissue.downsample)}
    props.update(properties or {})
    return {"type": "FeatureCollection", "features": features, "properties": props}


def empty_geojson(properties: dict) -> dict:
    """A valid, empty FeatureCollection carrying a status (failed or tissue-free slides)."""
    return {"type": "FeatureCollection", "features": [], "properties": properties}


def write_geojson(obj: dict, path: str | Path) -> None:
    """Write GeoJSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj))
