"""Per-slide preprocessing: resolve mpp, segment tissue, patch at the target mpp, QC image."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import openslide

from wsikt.patching import patch_grid, qc_image, write_patches_h5, write_png
from wsikt.slide import SlideError, open_slide, plan_read, slide_mpp
from wsikt.tissue import read_level_rgb, segment_tissue, tissue_geojson, write_geojson

log = logging.getLogger("wsikt.preprocess")


def preprocess_slide(
    slide_path: str | Path,
    slide_id: str,
    out_geojson: str | Path,
    out_patches: str | Path,
    out_qc: str | Path,
    mpp_override: float | None = None,
    target_mpp: float = 0.5,
    patch_size: int = 256,
    mpp_tolerance: float = 0.1,
    min_tissue_fraction: float = 0.5,
    segmentation: dict | None = None,
    qc_max_side: int = 1024,
) -> int:
    """Segment and patch one slide; returns the number of patches written."""
    slide = open_slide(slide_path)
    try:
        return _preprocess_open_slide(
            slide, slide_path, slide_id, out_geojson, out_patches, out_qc, mpp_override, target_mpp,
            patch_size, mpp_tolerance, min_tissue_fraction, segmentation, qc_max_side,
        )
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{slide_path}: OpenSlide failed to read tiles ({exc}); the file may be corrupt") from exc
    finally:
        slide.close()


def _preprocess_open_slide(
    slide: openslide.OpenSlide, slide_path, slide_id, out_geojson, out_patches, out_qc, mpp_override,
    target_mpp, patch_size, mpp_tolerance, min_tissue_fraction, segmentation, qc_max_side,
) -> int:
    """preprocess_slide's body on an open handle; the caller turns OpenSlide errors into SlideError."""
    mpp0 = slide_mpp(slide, mpp_override, name=str(slide_path))
    plan = plan_read(slide.level_downsamples, mpp0, target_mpp, patch_size, mpp_tolerance)
    tissue = segment_tissue(slide, mpp0, **(segmentation or {}))
    coords = patch_grid(tissue, slide.dimensions, plan.footprint, min_tissue_fraction)
    log.info(
        "%s: mpp %.4f, %d tissue pieces, %d patches of %d px at %.3f µm/px (level %d, read %d px%s)",
        slide_id, mpp0, len(tissue.contours), len(coords), patch_size, target_mpp,
        plan.level, plan.read_size, ", resized" if plan.resized else "",
    )
    write_geojson(tissue_geojson(tissue), out_geojson)
    write_patches_h5(
        out_patches, coords, plan, slide_id, slide.dimensions,
        [tuple(d) for d in slide.level_dimensions], mpp0, target_mpp,
    )
    thumb = read_level_rgb(slide, tissue.level)
    h, w = thumb.shape[:2]
    scale = min(1.0, qc_max_side / max(h, w))
    if scale < 1.0:
        thumb = cv2.resize(thumb, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    tds = (slide.dimensions[0] / thumb.shape[1], slide.dimensions[1] / thumb.shape[0])
    write_png(qc_image(thumb, tissue, coords, plan.footprint, tds), out_qc)
    return len(coords)
