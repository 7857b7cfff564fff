"""The patch h5: wsikt's multi-magnification layout (written and read here), or CLAM's single-level one (read).

Layout: top-level ``coords`` = the primary (finest) level, for CLAM/TRIDENT readers; every level
under ``mags/<name>/coords`` with ``parent_<coarser>`` row indices and ``overhang`` (fraction past the slide edge); coords attrs carry CLAM's,
TRIDENT's and wsikt's geometry; root attrs the magnifications, the primary and the slide's status
(slide_id, status, reason, n_patches, mpp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from wsikt.core.io import atomic_path
from wsikt.core.mags import mag_name


@dataclass
class Magnification:
    """One magnification of a patch h5: its coords (with attrs) and how to read them."""

    name: str
    coords: np.ndarray
    attrs: dict
    level: int
    read_size: int
    target_size: int
    parents: dict[str, np.ndarray] = field(default_factory=dict)  # 'parent_<coarse>' → row indices


@dataclass
class PatchLevel:
    """One magnification to write: its name, level-0 coords, coords attrs and parent rows per coarser level."""

    name: str
    coords: np.ndarray
    attrs: dict
    parents: dict[str, np.ndarray] = field(default_factory=dict)  # coarser level name → (N,) row index
    overhang: np.ndarray | None = None  # (N,) fraction of each patch past the slide edge (read as white)


@dataclass(frozen=True)
class PatchStatus:
    """What preprocessing recorded for a slide in the patch h5's root attrs."""

    slide_id: str
    status: str
    reason: str
    n_patches: int
    mpp: float


@dataclass
class PatchFile:
    """Every magnification of one patch h5 (primary first), their names in the file's order, and its layout."""

    mags: list[Magnification]
    names: list[str]
    has_mags: bool  # the file has a ``mags`` group (written by wsikt), not only top-level coords

    @property
    def n_patches(self) -> int:
        """Patches over every magnification."""
        return sum(len(m.coords) for m in self.mags)


def read_geometry(attrs: dict, source: str) -> tuple[int, int, int]:
    """(level, pixels read at level, pixels the encoder sees) from a patch h5's coords attrs.

    wsikt writes read_level/read_size/target_patch_size; a CLAM h5 has only patch_level and
    patch_size (read at patch_level, no resize), which is used as is.
    """
    try:
        level = int(attrs["read_level"] if "read_level" in attrs else attrs["patch_level"])
        read_size = int(attrs["read_size"] if "read_size" in attrs else attrs["patch_size"])
    except KeyError:
        raise ValueError(f"{source}: coords lack patch_level/patch_size attrs; re-run patching or add them") from None
    return level, read_size, int(attrs.get("target_patch_size", read_size))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_patch_file(path: str | Path) -> PatchFile:
    """Every magnification of a patch h5; a file without ``mags`` (CLAM's own) is one magnification."""
    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise ValueError(f"{path}: no 'coords' dataset; not a patch h5 (run preprocessing first)")
        if "mags" not in f:
            attrs = dict(f["coords"].attrs)
            mpp = float(attrs.get("target_mpp", math.nan))
            mag = Magnification(mag_name(mpp), f["coords"][:], attrs, *read_geometry(attrs, str(path)))
            return PatchFile([mag], [mag.name], has_mags=False)
        names = [_text(n) for n in f.attrs.get("magnifications", list(f["mags"]))]
        primary = _text(f.attrs.get("primary", names[0]))
        if primary not in names:
            raise ValueError(f"{path}: primary magnification '{primary}' not among {names}")
        mags = []
        for name in [primary] + [n for n in names if n != primary]:
            g = f["mags"][name]
            attrs = dict(g["coords"].attrs)
            parents = {k: g[k][:] for k in g if k.startswith("parent_")}
            mags.append(Magnification(name, g["coords"][:], attrs, *read_geometry(attrs, f"{path}:mags/{name}"), parents))
        if not np.array_equal(mags[0].coords, f["coords"][:]):
            raise ValueError(f"{path}: top-level coords differ from mags/{primary}/coords; re-run preprocessing")
    return PatchFile(mags, names, has_mags=True)



def write_patch_file(path: str | Path, levels: Sequence[PatchLevel], status: dict) -> None:
    """Write a patch h5 atomically: ``levels`` finest first (the primary), ``status`` (and edge_policy) as root attrs."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for i, lv in enumerate(levels):
            group = f.create_group(f"mags/{lv.name}")
            dsets = [group.create_dataset("coords", data=np.asarray(lv.coords, np.int64).reshape(-1, 2))]
            if i == 0:
                dsets.append(f.create_dataset("coords", data=np.asarray(lv.coords, np.int64).reshape(-1, 2)))
            for d in dsets:
                d.attrs.update(lv.attrs)
            for coarse, parent in lv.parents.items():
                group.create_dataset(f"parent_{coarse}", data=np.asarray(parent, np.int64))
            if lv.overhang is not None:
                group.create_dataset("overhang", data=np.asarray(lv.overhang, np.float32))
        f.attrs["magnifications"] = [lv.name for lv in levels]
        f.attrs["primary"] = levels[0].name
        f.attrs.update(status)


def read_status(path: str | Path) -> PatchStatus:
    """The slide's preprocessing status from a patch h5 written by wsikt."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        if "status" not in a:
            raise ValueError(f"{path}: no 'status' attr; not a patch h5 written by wsikt — delete it and rerun preprocessing")
        return PatchStatus(_text(a["slide_id"]), _text(a["status"]), _text(a.get("reason", "")),
                           int(f["coords"].shape[0]), float(a.get("mpp", math.nan)))
