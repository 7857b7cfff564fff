"""Slide access through OpenSlide, in microns per pixel rather than pyramid levels."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide

_MPP_RANGE = (0.05, 50.0)


class SlideError(RuntimeError):
    """A slide cannot be opened or read; the message names the file and what to do."""


class MissingMppError(SlideError):
    """The slide carries no microns-per-pixel metadata and no override was given."""


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a slide with OpenSlide, turning its errors into one clear line naming the file."""
    if not str(path).strip():  # the workflow's stand-in for a sample-sheet path that did not exist (on_error: skip)
        raise SlideError("no slide file: the sample sheet's path did not exist when the workflow started (its first "
                         "lines name the row); correct the 'path' column and rerun")
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: slide file not found; check the 'path' column of the sample sheet")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(
            f"{path}: not a slide format OpenSlide can open ({exc}); re-export it as SVS/TIFF "
            "or remove it from the sample sheet"
        ) from exc
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path}: OpenSlide failed to open it ({exc}); the file may be corrupt: re-download it or remove it from the sample sheet") from exc


def slide_mpp(slide: openslide.OpenSlide, override: float | None = None, name: str = "") -> float:
    """Level-0 microns per pixel: the override wins, then openslide.mpp-x, aperio.MPP, TIFF resolution."""
    if override is not None and not (isinstance(override, float) and math.isnan(override)):
        if override <= 0:
            raise SlideError(f"{name}: mpp override {override} must be > 0 (sample sheet column 'mpp')")
        return float(override)
    props = slide.properties
    candidates = [props.get(openslide.PROPERTY_NAME_MPP_X), props.get("aperio.MPP")]
    res, unit = props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit")
    if res and unit in ("centimeter", "inch"):
        with contextlib.suppress(ValueError, ZeroDivisionError):
            candidates.append((1e4 if unit == "centimeter" else 25400.0) / float(res))
    for value in candidates:
        try:
            mpp = float(value) if value not in (None, "") else None
        except ValueError:
            continue
        # A microscope scan lies in (0.05, 50) µm/px; outside is a placeholder (e.g. TIFF's 72 dpi).
        if mpp is not None and _MPP_RANGE[0] < mpp < _MPP_RANGE[1]:
            return mpp
    raise MissingMppError(
        f"{name or 'slide'}: no microns-per-pixel metadata (openslide.mpp-x, aperio.MPP, TIFF "
        "resolution); add its scan resolution to the 'mpp' column of the sample sheet "
        "(0.25 for 40x, 0.5 for 20x)"
    )


@dataclass(frozen=True)
class ReadPlan:
    """How to read patches of ``target_mpp`` µm/px: from which level, how many pixels, resized or not."""

    level: int
    read_size: int  # side in pixels at ``level``
    patch_size: int  # side in pixels at the target mpp (what the encoder sees)
    footprint: int  # side in level-0 pixels
    level_mpp: float  # µm/px of the level read
    resized: bool

    @property
    def patch_mpp(self) -> float:
        """µm/px of what the encoder sees (after any resize)."""
        return self.level_mpp * self.read_size / self.patch_size


def plan_read(
    level_downsamples: tuple[float, ...],
    mpp0: float,
    target_mpp: float,
    patch_size: int,
    tolerance: float = 0.1,
    footprint: int | None = None,
) -> ReadPlan:
    """Pick the pyramid level to read ``patch_size`` patches at ``target_mpp``.

    A level whose mpp is within ``tolerance`` (relative) of the target is read natively: exactly
    ``patch_size`` pixels, no resize, footprint = patch_size × its downsample (CLAM/TRIDENT do the
    same). Otherwise the coarsest level finer than the target is read and resized. A given
    ``footprint`` (level-0 px; coarse levels of a nested set) is honoured: the read size follows it.
    """
    if target_mpp < mpp0 * (1 - tolerance):
        raise SlideError(
            f"target {target_mpp} µm/px is finer than the scan ({mpp0:.4f} µm/px); "
            "raise preprocess.target_mpp or use a higher-magnification scan"
        )
    level, native = choose_level(level_downsamples, mpp0, target_mpp, tolerance)
    ds = level_downsamples[level]
    if native:
        fp = footprint if footprint is not None else int(round(patch_size * ds))
        read_size = int(round(fp / ds))
        return ReadPlan(level, read_size, patch_size, fp, mpp0 * ds, read_size != patch_size)
    fp = footprint if footprint is not None else int(round(patch_size * target_mpp / mpp0))
    read_size = int(round(fp / ds))
    return ReadPlan(level, read_size, patch_size, fp, mpp0 * ds, True)


def choose_level(level_downsamples: tuple[float, ...], mpp0: float, target_mpp: float, tolerance: float) -> tuple[int, bool]:
    """(level, native): the level whose µm/px is within ``tolerance`` (relative) of ``target_mpp``,
    else the coarsest level finer than it (level 0 when none is), to be resized.

    By µm/px, not OpenSlide's best level for a downsample: Aperio levels sit at 4.0002× or 16.0025×,
    which ``get_best_level_for_downsample(16)`` skips.
    """
    native = [lv for lv, ds in enumerate(level_downsamples) if abs(mpp0 * ds - target_mpp) <= tolerance * target_mpp]
    if native:
        return min(native, key=lambda lv: abs(mpp0 * level_downsamples[lv] - target_mpp)), True
    finer = [lv for lv, ds in enumerate(level_downsamples) if mpp0 * ds < target_mpp]
    return (max(finer, key=lambda lv: level_downsamples[lv]) if finer else 0), False


def read_region_rgb(
    slide: openslide.OpenSlide, x: int, y: int, level: int, size: int
) -> np.ndarray:
    """Read a ``size``×``size`` RGB patch whose top-left is level-0 (x, y); transparent areas → white."""
    rgba = np.asarray(slide.read_region((int(x), int(y)), level, (size, size)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb



def read_level_rgb(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    """The whole level as RGB in one read (white where transparent)."""
    w, h = slide.level_dimensions[level]
    rgba = np.asarray(slide.read_region((0, 0), level, (w, h)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def read_level_scaled(slide: openslide.OpenSlide, level: int, size: tuple[int, int], strip_pixels: int = 1 << 24) -> np.ndarray:
    """Level ``level`` shrunk to ``size`` (w, h) with cv2.INTER_AREA, read in full-width strips of about
    ``strip_pixels`` level pixels, so memory stays bounded on a single-level slide of any size.

    A level already of ``size`` and no larger than ``strip_pixels`` × 4 is read in one piece (bit-exact).
    """
    w, h = slide.level_dimensions[level]
    ow, oh = int(size[0]), int(size[1])
    if (ow, oh) == (w, h) and w * h <= 4 * strip_pixels:
        return read_level_rgb(slide, level)
    ds, sy = slide.level_downsamples[level], h / oh
    rows = max(1, int(round(max(strip_pixels / w, 512) / sy)))  # output rows per strip (≥ 512 level rows: whole tiles)
    out = np.empty((oh, ow, 3), np.uint8)
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        y0, y1 = int(round(r0 * sy)), min(h, int(round(r1 * sy)))  # exact strips when h / oh is an integer
        rgba = np.asarray(slide.read_region((0, int(round(y0 * ds))), level, (w, max(1, y1 - y0))))
        if rgba.shape[:2] != (r1 - r0, ow):
            rgba = cv2.resize(rgba, (ow, r1 - r0), interpolation=cv2.INTER_AREA)
        out[r0:r1] = _over_white(rgba)
    return out


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of OpenSlide's RGBA (transparent pixels are 0, 0, 0, 0) composited over white; after an
    area resize a pixel that was partly transparent is lightened by the transparent share."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return rgba[..., :3]
    return np.minimum(rgba[..., :3].astype(np.uint16) + (255 - alpha), 255).astype(np.uint8)
