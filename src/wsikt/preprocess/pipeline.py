"""Per-slide preprocessing: resolve mpp, segment tissue, aligned multi-level patches, QC images, status.

A slide that cannot be used (unopenable, unreadable tiles, no mpp, no tissue) still gets valid,
empty outputs carrying a status and a one-line reason, so the rest of the cohort goes on and later
stages exclude the slide with the reason recorded (``on_error='fail'`` raises instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide

from wsikt.core.io import atomic_path
from wsikt.core.mags import mag_name
from wsikt.formats.patches_h5 import PatchLevel, write_patch_file
from wsikt.formats.patches_h5 import read_status as read_patch_status
from wsikt.preprocess.grid import (
    Level,
    children_grid,
    clam_grid,
    edge_overhang,
    global_grid,
    nest_levels,
    qc_grid_image,
    qc_tissue_image,
)
from wsikt.preprocess.settings import PatchSettings
from wsikt.preprocess.slide import ReadPlan, SlideError, open_slide, plan_read, slide_mpp
from wsikt.preprocess.tissue import (
    SegmentationImage,
    empty_geojson,
    resolve_segmentation,
    segment_image,
    segmentation_image,
    tissue_geojson,
    write_geojson,
)

log = logging.getLogger("wsikt.preprocess.pipeline")

STATUS_OK, STATUS_NO_TISSUE, STATUS_FAILED = "ok", "no_tissue", "failed"
EDGE_POLICY = (
    "finest level: whole cells only (partial cells at the right/bottom edges dropped); coarser levels: a "
    "patch running past the slide edge is kept, the part outside is read as white, and 'overhang' holds "
    "each patch's fraction outside the slide"
)


@dataclass
class SlideResult:
    """What preprocessing did to one slide (written as h5 root attrs and GeoJSON properties)."""

    slide_id: str
    status: str
    reason: str = ""
    n_patches: int = 0
    mpp: float = float("nan")

    def attrs(self) -> dict:
        return {"slide_id": self.slide_id, "status": self.status, "reason": self.reason,
                "n_patches": self.n_patches, "mpp": self.mpp}


def preprocess_slide(
    slide_path: str | Path,
    slide_id: str,
    out_geojson: str | Path,
    out_patches: str | Path,
    out_qc_tissue: str | Path,
    out_qc_patches: str | Path,
    settings: PatchSettings,
    mpp_override: float | None = None,
    on_error: str = "skip",
) -> SlideResult:
    """Segment and patch one slide. Bad input → status 'failed' with empty outputs (or raise when
    ``on_error='fail'``); no tissue → status 'no_tissue' with empty outputs."""
    outs = (out_geojson, out_patches, out_qc_tissue, out_qc_patches)
    try:
        slide = open_slide(slide_path)
        try:
            return _preprocess_open(slide, slide_path, slide_id, outs, settings, mpp_override)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{slide_path}: OpenSlide failed to read tiles ({exc}); the file may be corrupt — re-download it or remove it from the sample sheet") from exc
        finally:
            slide.close()
    except SlideError as exc:
        if on_error == "fail":
            raise
        log.error("%s", exc)
        result = SlideResult(slide_id, STATUS_FAILED, str(exc))
        _write_empty(outs, result, settings)
        return result


def _preprocess_open(slide: openslide.OpenSlide, slide_path, slide_id: str, outs, settings: PatchSettings, mpp_override) -> SlideResult:
    """preprocess_slide's body on an open handle; the caller turns OpenSlide errors into SlideError."""
    out_geojson, out_patches, out_qc_tissue, out_qc_patches = outs
    mpp0 = slide_mpp(slide, mpp_override, name=f"{slide_id} ({slide_path})")
    seg = resolve_segmentation(settings.segmentation)
    plan = plan_read(slide.level_downsamples, mpp0, settings.target_mpp, settings.patch_size, settings.mpp_tolerance)
    image = segmentation_image(slide, mpp0, seg, name=str(slide_path), tolerance=settings.mpp_tolerance)
    tissue = segment_image(image, mpp0, seg)
    if settings.grid == "clam":
        fine = clam_grid(tissue, plan.footprint, settings.contour_fn)
    elif settings.nest_from == "coarse":  # the coarsest level on tissue, then all its finer cells (DSCA)
        ratio = int(round(max(settings.context_mpp) / settings.target_mpp))
        coarse = global_grid(tissue, slide.dimensions, plan.footprint * ratio, settings.contour_fn, settings.min_tissue_fraction)
        fine = children_grid(coarse, plan.footprint, ratio)
    else:
        fine = global_grid(tissue, slide.dimensions, plan.footprint, settings.contour_fn, settings.min_tissue_fraction)
    levels = nest_levels(fine, settings.target_mpp, plan.footprint, list(settings.context_mpp))
    plans = [plan] + [
        plan_read(slide.level_downsamples, mpp0, lv.mpp, settings.patch_size, settings.mpp_tolerance, footprint=lv.footprint)
        for lv in levels[1:]
    ]
    status = STATUS_OK if len(fine) else STATUS_NO_TISSUE
    reason = "" if len(fine) else f"no tissue patches ({len(tissue.contours)} tissue pieces kept by segmentation)"
    result = SlideResult(slide_id, status, reason, len(fine), mpp0)
    log.info(
        "%s: mpp %.4f, seg level %d, %d tissue pieces; %s",
        slide_id, mpp0, tissue.level, len(tissue.contours),
        ", ".join(f"{lv.name}: {len(lv.coords)} patches ({p.read_size} px at level {p.level}{', resized' if p.resized else ''})" for lv, p in zip(levels, plans)),
    )
    if status != STATUS_OK:
        log.warning("%s: %s", slide_id, reason)
    write_geojson(tissue_geojson(tissue, result.attrs()), out_geojson)
    _write_levels(out_patches, levels, plans, slide_id, slide, mpp0, result)
    thumb, tds = _thumbnail(image, slide.dimensions, settings.qc_max_side)
    tissue_png = qc_tissue_image(thumb, tissue, tds)
    write_png(tissue_png, out_qc_tissue)
    write_png(qc_grid_image(tissue_png, levels, tds), out_qc_patches)
    return result


def _thumbnail(image: SegmentationImage, level0_size: tuple[int, int], max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The segmentation image (read once, for both), shrunk to at most ``max_side``, and its level-0 downsample."""
    thumb = image.rgb
    h, w = thumb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        thumb = cv2.resize(thumb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    return thumb, (level0_size[0] / thumb.shape[1], level0_size[1] / thumb.shape[0])


def level_attrs(plan: ReadPlan, slide_name: str, level0_size, level_dims, mpp0: float, target_mpp: float) -> dict:
    """CLAM's and TRIDENT's coords attrs, plus how wsikt reaches the target mpp."""
    lw, lh = level_dims[plan.level]
    return {
        # CLAM: patch_size pixels are read at patch_level (its meaning; equals the target size
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
        # wsikt
        "mpp": float(mpp0),
        "target_mpp": float(target_mpp),
        "read_level": plan.level,
        "read_size": plan.read_size,
        "target_patch_size": plan.patch_size,
        "level_mpp": float(plan.level_mpp),
        "patch_mpp": float(plan.patch_mpp),
        "resized": bool(plan.resized),
    }


def _write_levels(path, levels: list[Level], plans: list[ReadPlan], slide_name: str, slide: openslide.OpenSlide, mpp0: float, result: SlideResult) -> None:
    """The patch h5 of a slide's aligned levels, each with its read geometry as coords attrs and its
    ``overhang`` (fraction past the slide edge, read as white); root attrs add the ``edge_policy``."""
    dims = [tuple(d) for d in slide.level_dimensions]
    write_patch_file(path, [PatchLevel(lv.name, lv.coords, level_attrs(plan, slide_name, slide.dimensions, dims, mpp0, lv.mpp), lv.parents,
                                       edge_overhang(lv.coords, lv.footprint, slide.dimensions))
                            for lv, plan in zip(levels, plans)], {**result.attrs(), "edge_policy": EDGE_POLICY})


def _write_empty(outs, result: SlideResult, settings: PatchSettings) -> None:
    """Valid outputs for a slide that yields no patches: empty coords (attrs enough for feature
    extraction to write an empty features file), empty GeoJSON, QC images stating the reason."""
    out_geojson, out_patches, out_qc_tissue, out_qc_patches = outs
    write_geojson(empty_geojson(result.attrs()), out_geojson)
    mpps = (settings.target_mpp, *sorted(settings.context_mpp))
    names = [mag_name(m) for m in mpps]
    attrs = {"patch_level": 0, "patch_size": settings.patch_size, "read_level": 0, "read_size": settings.patch_size,
             "target_patch_size": settings.patch_size, "name": result.slide_id}
    empty = np.zeros((0, 2), np.int64)
    write_patch_file(out_patches, [PatchLevel(name, empty, {**attrs, "target_mpp": mpp}, {c: np.zeros(0, np.int64) for c in names[i + 1:]},
                                              np.zeros(0, np.float32)) for i, (name, mpp) in enumerate(zip(names, mpps))],
                     {**result.attrs(), "edge_policy": EDGE_POLICY})
    card = _status_card(result)
    write_png(card, out_qc_tissue)
    write_png(card, out_qc_patches)


def _status_card(result: SlideResult) -> np.ndarray:
    """A small white image with the slide id, its status and the reason (wrapped)."""
    img = np.full((200, 640, 3), 255, np.uint8)
    lines = [f"{result.slide_id}: {result.status}"]
    words, line = result.reason.split(), ""
    for word in words:
        if len(line) + len(word) > 70:
            lines.append(line)
            line = ""
        line += word + " "
    lines.append(line)
    for i, text in enumerate(lines[:8]):
        cv2.putText(img, text, (10, 25 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 160) if i == 0 else (40, 40, 40), 1, cv2.LINE_AA)
    return img


def write_png(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB image as PNG atomically."""
    with atomic_path(path, suffix=".partial.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write PNG")


def read_status(patches_h5: str | Path) -> SlideResult:
    """A slide's preprocessing status from its patch h5."""
    st = read_patch_status(patches_h5)
    return SlideResult(st.slide_id, st.status, st.reason, st.n_patches, st.mpp)


def usable_patients(slides, patch_path: dict[str, str | Path]):
    """Patients with ≥1 patch over their slides, and an exclusion table (patient_id, cancer, reason)
    naming each unusable slide's status and reason; slides without patches are logged and skipped."""
    import pandas as pd

    counts: dict[str, int] = {}
    reasons: dict[str, list[str]] = {}
    for row in slides.itertuples():
        status = read_status(patch_path[row.slide_id])
        counts[row.patient_id] = counts.get(row.patient_id, 0) + status.n_patches
        if status.n_patches == 0:
            why = f"{row.slide_id}: {status.status}" + (f" ({status.reason})" if status.reason else "")
            reasons.setdefault(row.patient_id, []).append(why)
            log.warning("slide %s skipped: %s", row.slide_id, why)
    keep = {p for p, n in counts.items() if n > 0}
    rows = [
        {"patient_id": p, "cancer": c, "reason": "no usable slide: " + "; ".join(reasons.get(p, ["no tissue patches"]))}
        for p, c in slides[["patient_id", "cancer"]].drop_duplicates().itertuples(index=False) if p not in keep
    ]
    return keep, pd.DataFrame(rows, columns=["patient_id", "cancer", "reason"])
