"""Render an H&E-like slide in physical units and write it as a pyramidal tiled TIFF."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from wsikt.core.io import atomic_path

# Coarse grid (µm per pixel) on which tissue shape and texture are drawn before upsampling.
_COARSE_UM = 8.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed noise scaled to [0, 1]."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    lo, hi = float(noise.min()), float(noise.max())
    return (noise - lo) / (hi - lo + 1e-9)


def tissue_shape(rng: np.random.Generator, side_um: float, n_pieces: int) -> np.ndarray:
    """A coarse float mask in [0, 1] with ``n_pieces`` irregular tissue pieces on background."""
    n = int(side_um / _COARSE_UM)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    field = np.zeros((n, n), np.float32)
    for _ in range(n_pieces):
        cx, cy = rng.uniform(0.35, 0.65, size=2)
        rx, ry = rng.uniform(0.3, 0.42, size=2) / np.sqrt(n_pieces)
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        field = np.maximum(field, 1.0 - (u * u + v * v))
    wobble = _smooth_noise(rng, (n, n), sigma=n / 20) - 0.5
    return np.clip(field + 0.4 * wobble, 0, None)


def render_slide(
    rng: np.random.Generator,
    mpp: float,
    side_um: float,
    nuclei_per_10k_um2: float,
    eosin_rgb: tuple[int, int, int],
    nucleus_um: float,
    n_pieces: int,
    stain: float = 1.0,
    nucleus_tone: float = 1.0,
    texture: float = 0.3,
    blur_um: float = 0.0,
    white_balance: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """RGB uint8 image of ``side_um`` µm at ``mpp`` µm/px with nuclei at the given mean density.

    Density varies smoothly in space (±25 %) around the mean; nuclei are dark purple ellipses
    drawn at full resolution so a 40x and a 20x scan show the same tissue at their own detail.
    The appearance knobs model what varies between real slides without bearing on outcome:
    ``stain`` and ``nucleus_tone`` scale eosin and haematoxylin optical density, ``texture`` is the
    stroma's shade contrast, ``blur_um`` the scanner's focus (Gaussian σ in µm) and
    ``white_balance`` an RGB offset (drawn at random when None).
    """
    coarse = tissue_shape(rng, side_um, n_pieces)
    n_coarse = coarse.shape[0]
    side_px = int(round(side_um / mpp))
    tissue_coarse = (coarse > 0.25).astype(np.float32)
    tissue_coarse = cv2.GaussianBlur(tissue_coarse, (0, 0), 1.0)
    tissue = cv2.resize(tissue_coarse, (side_px, side_px), interpolation=cv2.INTER_LINEAR) > 0.5

    texture_coarse = _smooth_noise(rng, (n_coarse, n_coarse), sigma=2.0)
    texture_map = cv2.resize(texture_coarse, (side_px, side_px), interpolation=cv2.INTER_LINEAR)
    fine = rng.standard_normal((side_px // 4 + 1, side_px // 4 + 1)).astype(np.float32)
    fine = cv2.resize(fine, (side_px, side_px), interpolation=cv2.INTER_LINEAR)[:side_px, :side_px]
    shade = (1.0 + texture * (texture_map - 0.5) + 0.04 * fine)[..., None]
    img = np.full((side_px, side_px, 3), 243, np.float32)
    img[tissue] = (_scale_od(eosin_rgb, stain)[None, :] * shade[tissue]).clip(0, 255)
    wb = rng.normal(0, 2.0, size=3) if white_balance is None else np.asarray(white_balance)
    img += wb.astype(np.float32)[None, None, :]
    img = img.clip(0, 255).astype(np.uint8)

    # Nuclei: Poisson count over the tissue area, positions thinned by a smooth density field.
    density_field = 0.75 + 0.5 * _smooth_noise(rng, (n_coarse, n_coarse), sigma=3.0)
    n_nuclei = rng.poisson(nuclei_per_10k_um2 * side_um * side_um / 1e4 * 1.25)
    pts = rng.uniform(0, side_um, size=(n_nuclei, 2))
    keep_p = density_field[(pts[:, 1] / _COARSE_UM).astype(int).clip(0, n_coarse - 1),
                           (pts[:, 0] / _COARSE_UM).astype(int).clip(0, n_coarse - 1)] / 1.25
    pts = pts[rng.uniform(size=len(pts)) < keep_p]
    px = (pts / mpp).astype(int).clip(0, side_px - 1)
    pts = pts[tissue[px[:, 1], px[:, 0]]]
    nucleus_rgb = _scale_od((72, 40, 120), nucleus_tone)
    for x_um, y_um in pts:
        ax = max(1, int(round(nucleus_um * rng.uniform(0.8, 1.25) / mpp)))
        ay = max(1, int(round(ax * rng.uniform(0.6, 1.0))))
        tone = rng.uniform(0.75, 1.1)
        colour = tuple(int(c * tone) for c in nucleus_rgb)
        cv2.ellipse(img, (int(x_um / mpp), int(y_um / mpp)), (ax, ay), float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    if blur_um > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_um / mpp)
    return img


def _scale_od(rgb: tuple[int, int, int], factor: float) -> np.ndarray:
    """``rgb`` with its optical density scaled by ``factor`` (a lighter or heavier stain)."""
    return 255.0 * (np.asarray(rgb, np.float32).clip(1, 255) / 255.0) ** factor


def write_pyramid_tiff(path: str | Path, rgb: np.ndarray, mpp: float, aperio: bool, quality: int = 85) -> None:
    """Write a tiled JPEG pyramid (each level its own page) that OpenSlide opens, with mpp metadata.

    ``aperio=True`` writes an Aperio-style ImageDescription (AppMag, MPP); otherwise the mpp lives
    only in the TIFF resolution tags (generic-tiff vendor).
    """
    levels = [rgb]
    while min(levels[-1].shape[:2]) > 512:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    h, w = rgb.shape[:2]
    mag = int(round(10.0 / mpp))
    desc = f"Aperio Image Library wsikt-demo\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG Q={quality}|AppMag = {mag}|MPP = {mpp}"
    with atomic_path(path, suffix=".partial.tiff") as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
            for i, level in enumerate(levels):
                scale = mpp * (w / level.shape[1])
                tif.write(
                    level,
                    tile=(256, 256),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if i == 0 else 1,
                    resolution=(1e4 / scale, 1e4 / scale),
                    resolutionunit="CENTIMETER",
                    description=desc if (aperio and i == 0) else None,
                    metadata=None,
                )
