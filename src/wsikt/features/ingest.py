"""Bring your own features: CLAM, TRIDENT and per-slide .pt outputs → wsikt's features h5 (and back to CLAM's layout).

Layouts read (one file per slide, the file stem is the slide id):

- ``clam``: ``<dir>/h5_files/<slide>.h5`` (``features`` + ``coords``) and/or ``<dir>/pt_files/<slide>.pt``
  (a tensor (N, D), no coords); the h5 is preferred.
- ``trident``: ``<dir>/features_<encoder>/<slide>.h5`` (``features`` + ``coords``), or that folder itself.
- ``pt``: ``<dir>/<slide>.pt``, one tensor (N, D) per slide without coords (as UNI2-h-DSS is shared).

Missing coords are written as -1 with the coords attr ``known = False``; the mpp is taken from the
coords attrs when they say (wsikt ``target_mpp``, TRIDENT ``target_magnification``), else NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from wsikt.core.io import atomic_path
from wsikt.core.mags import mag_name
from wsikt.formats.features_h5 import describe_features, write_features
from wsikt.formats.patches_h5 import PatchLevel

log = logging.getLogger("wsikt.features.ingest")

LAYOUTS = ("clam", "trident", "pt")
EXPECTED = (
    "expected a CLAM directory (h5_files/<slide>.h5 with features+coords, or pt_files/<slide>.pt), a TRIDENT "
    "directory (features_<encoder>/<slide>.h5) or a directory of per-slide <slide>.pt tensors (N, D)"
)


def detect_layout(source: str | Path, encoder: str | None = None) -> tuple[str, Path]:
    """(layout, folder holding the per-slide files) of an external features directory."""
    src = Path(source)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: features directory not found (config key features.ingest); {EXPECTED}")
    if (src / "h5_files").is_dir() or (src / "pt_files").is_dir():
        return "clam", src
    trident = sorted(p for p in src.glob("features_*") if p.is_dir())
    if encoder and (src / f"features_{encoder}").is_dir():
        return "trident", src / f"features_{encoder}"
    if len(trident) == 1:
        return "trident", trident[0]
    if len(trident) > 1:
        raise ValueError(f"{src}: several TRIDENT folders ({', '.join(p.name for p in trident)}); name the encoder "
                         "so features_<encoder> is picked, or point features.ingest at one folder")
    if src.name.startswith("features_") and any(src.glob("*.h5")):
        return "trident", src
    if any(src.glob("*.pt")):
        return "pt", src
    if any(src.glob("*.h5")):
        return "trident", src  # a flat folder of features h5 files reads like TRIDENT's
    raise ValueError(f"{src}: no feature files found; {EXPECTED}")


def list_slides(source: str | Path, encoder: str | None = None) -> list[str]:
    """Slide ids available in an external features directory."""
    layout, folder = detect_layout(source, encoder)
    if layout == "clam":
        ids = {p.stem for p in (folder / "h5_files").glob("*.h5")} | {p.stem for p in (folder / "pt_files").glob("*.pt")}
    else:
        ids = {p.stem for p in folder.glob("*.pt" if layout == "pt" else "*.h5")}
    if not ids:
        raise ValueError(f"{folder}: empty; {EXPECTED}")
    return sorted(ids)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(path, "r") as f:
        if "features" not in f:
            raise ValueError(f"{path}: no 'features' dataset; {EXPECTED}")
        feats = f["features"][:]
        if "coords" in f:
            coords, attrs = f["coords"][:], dict(f["coords"].attrs)
        else:
            coords, attrs = None, {}
    feats = feats.reshape(-1, feats.shape[-1]) if feats.ndim == 3 and feats.shape[0] == 1 else feats  # (1, N, D)
    coords = coords.reshape(-1, 2) if coords is not None and coords.ndim == 3 and coords.shape[0] == 1 else coords
    return feats, coords, attrs


def _read_pt(path: Path) -> np.ndarray:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = obj.get("features", obj.get("feats"))
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path}: not a tensor (or dict with 'features'); {EXPECTED}")
    if obj.ndim == 3 and obj.shape[0] == 1:
        obj = obj[0]
    return obj.float().numpy()


def read_external(source: str | Path, slide_id: str, encoder: str | None = None) -> tuple[np.ndarray, np.ndarray | None, dict, str]:
    """(features (N, D), coords (N, 2) or None, coords attrs, layout) of one slide in an external directory."""
    layout, folder = detect_layout(source, encoder)
    if layout == "clam":
        h5, pt = folder / "h5_files" / f"{slide_id}.h5", folder / "pt_files" / f"{slide_id}.pt"
        if h5.is_file():
            feats, coords, attrs = _read_h5(h5)
            where = h5
        elif pt.is_file():
            feats, coords, attrs, where = _read_pt(pt), None, {}, pt
        else:
            raise FileNotFoundError(f"{folder}: no h5_files/{slide_id}.h5 or pt_files/{slide_id}.pt (CLAM layout)")
    else:
        where = folder / f"{slide_id}.{'pt' if layout == 'pt' else 'h5'}"
        if not where.is_file():
            raise FileNotFoundError(f"{where}: not found ({layout} layout: one file per slide, named <slide_id>)")
        feats, coords, attrs = (_read_pt(where), None, {}) if layout == "pt" else _read_h5(where)
    if feats.ndim != 2:
        raise ValueError(f"{where}: features have shape {feats.shape}, expected (N, D)")
    if coords is not None and (coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats)):
        raise ValueError(f"{where}: {len(feats)} feature rows but coords of shape {coords.shape}; "
                         "features and coords must have one row per patch")
    if not np.isfinite(feats).all():
        raise ValueError(f"{where}: features contain NaN/inf; re-extract this slide")
    return feats.astype(np.float32, copy=False), coords, attrs, layout


def _mpp_from_attrs(attrs: dict) -> float:
    if "target_mpp" in attrs:
        return float(attrs["target_mpp"])
    if "target_magnification" in attrs and float(attrs["target_magnification"]) > 0:
        return 10.0 / float(attrs["target_magnification"])
    return math.nan


def ingest_slide(source: str | Path, slide_id: str, out_h5: str | Path, encoder: str, mpp: float | None = None) -> int:
    """Write one slide's external features as wsikt's features h5 (atomically); returns N.

    ``encoder`` is the name the user gives these features (it names results/features/<encoder>/).
    """
    feats, coords, attrs, layout = read_external(source, slide_id, encoder)
    known = coords is not None
    if not known:
        coords = np.full((len(feats), 2), -1, np.int64)
        log.warning("%s: %s layout has no coords; written as -1 (coords attr known=False)", slide_id, layout)
    mpp = float(mpp) if mpp is not None else _mpp_from_attrs(attrs)
    name = mag_name(mpp)
    level = PatchLevel(name, coords.astype(np.int64), {**attrs, "known": known})
    write_features(out_h5, level, feats, dict(encoder=encoder, dim=feats.shape[1], weights_hash=f"external:{layout}",
                                              source=str(source)), mpp)
    return len(feats)


def ingest_features(source: str | Path, out_dir: str | Path, encoder: str, slides: list[str] | None = None,
                    mpp: float | None = None) -> list[Path]:
    """Ingest every slide (or the named ``slides``) of an external directory into ``out_dir/<slide>.h5``.

    All slides must share one feature dim; a slide asked for but absent is an error naming it.
    """
    available = list_slides(source, encoder)
    wanted = list(slides) if slides is not None else available
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise FileNotFoundError(f"{source}: no features for {len(missing)} slides (e.g. {missing[:5]}); "
                                f"it has {len(available)} slides")
    out, dims = [], {}
    for slide_id in wanted:
        path = Path(out_dir) / f"{slide_id}.h5"
        ingest_slide(source, slide_id, path, encoder, mpp)
        dims.setdefault(int(describe_features(path)["dim"]), slide_id)
        if len(dims) > 1:
            raise ValueError(f"{source}: slides have different feature dims ({dims}); one encoder per directory")
        out.append(path)
    return out


def write_clam_layout(features_h5s: list[str | Path], out_dir: str | Path) -> list[str]:
    """Write wsikt features h5 files in CLAM's layout: ``h5_files/<slide>.h5`` and ``pt_files/<slide>.pt``."""
    out_dir = Path(out_dir)
    ids = []
    for src in map(Path, features_h5s):
        with h5py.File(src, "r") as f:
            feats, coords, attrs = f["features"][:], f["coords"][:], dict(f["coords"].attrs)
        slide_id = src.stem
        with atomic_path(out_dir / "h5_files" / f"{slide_id}.h5") as tmp, h5py.File(tmp, "w") as g:
            g.create_dataset("features", data=feats)
            c = g.create_dataset("coords", data=coords)
            for k, v in attrs.items():
                c.attrs[k] = v
        with atomic_path(out_dir / "pt_files" / f"{slide_id}.pt") as tmp:
            torch.save(torch.from_numpy(feats), tmp)
        ids.append(slide_id)
    return ids
