"""The features h5: one slide's patch features at each magnification (written and read only here).

Layout: ``features`` (N, D) float32, ``coords`` (N, 2) level-0 top-left (attrs copied from the patch
h5) and ``flagged`` (N,) bool (tiles that could not be read) for the primary magnification; when
the slide has several magnifications, ``mags/<name>/{features,coords,flagged,parent_<coarser>}``
for each (the primary's features and flags are hard links, stored once), with attr ``mpp``. Root
attrs: encoder, dim, mpp, weights_hash, precision, primary, magnifications (and ``source`` for
ingested features).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import h5py
import numpy as np

from wsikt.core.io import atomic_path
from wsikt.core.mags import magnification
from wsikt.core.model_facts import PRIMARY

Pair = tuple[str, str]


class Level(Protocol):
    """A magnification to write: what both the patch h5 reader and writer types provide."""

    name: str
    coords: np.ndarray
    attrs: dict
    parents: dict[str, np.ndarray]


class FeatureWriter:
    """One slide's features h5: rows go into a temporary file as they arrive; ``close`` publishes it.

    Rows arrive in stream order, magnifications one after another (``levels`` primary first).
    ``multi`` writes the ``mags`` groups (the patch h5 had them).
    """

    def __init__(self, out: str | Path, levels: Sequence[Level], dim: int, multi: bool) -> None:
        self.levels, self.multi = list(levels), multi
        self.offsets = np.cumsum([0] + [len(lv.coords) for lv in self.levels])
        self._tmp_cm = atomic_path(out)
        self.tmp = self._tmp_cm.__enter__()
        self.f = h5py.File(self.tmp, "w")
        self.feats, self.flags = [], []
        for i, lv in enumerate(self.levels):
            g = self.f if i == 0 else self.f.require_group(f"mags/{lv.name}")
            self.feats.append(g.create_dataset("features", shape=(len(lv.coords), dim), dtype=np.float32))
            self.flags.append(g.create_dataset("flagged", shape=(len(lv.coords),), dtype=bool))
        self.written = self.flagged = 0

    @property
    def complete(self) -> bool:
        """Every row of every magnification has been written."""
        return self.written == int(self.offsets[-1])

    def write(self, row: int, values: np.ndarray, ok: np.ndarray) -> None:
        """Rows ``row …`` of the slide's stream; ``ok`` False flags a tile that could not be read."""
        end = row + len(values)
        for i in range(len(self.feats)):  # a batch may span two magnifications
            lo, hi = max(row, self.offsets[i]), min(end, self.offsets[i + 1])
            if lo < hi:
                self.feats[i][lo - self.offsets[i]:hi - self.offsets[i]] = values[lo - row:hi - row]
                self.flags[i][lo - self.offsets[i]:hi - self.offsets[i]] = ~ok[lo - row:hi - row]
        self.written += len(values)
        self.flagged += int((~ok).sum())

    def close(self, attrs: dict, mpps: Sequence[float], before_publish: Callable[[Path], None] | None = None) -> None:
        """Coords, parents and root attrs; ``before_publish(tmp)`` runs before the rename onto the output."""
        f, primary = self.f, self.levels[0]
        _write_coords(f, primary)
        if self.multi:
            for i, lv in enumerate(self.levels):
                g = f.require_group(f"mags/{lv.name}")
                if i == 0:
                    g["features"], g["flagged"] = f["features"], f["flagged"]  # hard links: stored once
                _write_coords(g, lv)
                for key, parent in lv.parents.items():
                    g.create_dataset(key if key.startswith("parent_") else f"parent_{key}", data=parent)
                g.attrs["mpp"] = mpps[i]
        f.attrs.update(mpp=mpps[0], primary=primary.name, magnifications=[lv.name for lv in self.levels], **attrs)
        f.close()
        if before_publish is not None:
            before_publish(self.tmp)
        self._tmp_cm.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the temporary file (the slide was not finished)."""
        with contextlib.suppress(Exception):
            self.f.close()
        err = RuntimeError("aborted")
        with contextlib.suppress(RuntimeError):
            self._tmp_cm.__exit__(RuntimeError, err, None)


def _write_coords(group: h5py.Group, level: Level) -> None:
    d = group.create_dataset("coords", data=level.coords)
    for k, v in level.attrs.items():
        d.attrs[k] = v


def write_features(out: str | Path, level: Level, features: np.ndarray, attrs: dict, mpp: float) -> None:
    """A single-magnification features h5 from a whole (N, D) matrix (e.g. ingested features)."""
    writer = FeatureWriter(out, [level], features.shape[1], multi=False)
    writer.write(0, features, np.ones(len(features), bool))
    writer.close(attrs, [mpp])


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (np.ndarray, list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def load_features(path: str | Path, magnification: str | None = None) -> np.ndarray:
    """The (N, D) feature matrix of one slide's h5 (the primary magnification unless named)."""
    with h5py.File(path, "r") as f:
        if magnification is None:
            return f["features"][:]
        if "mags" not in f or magnification not in f["mags"]:
            have = list(f["mags"]) if "mags" in f else [f.attrs.get("primary", PRIMARY)]
            raise KeyError(f"{path}: no magnification '{magnification}' (has {have})")
        return f["mags"][magnification]["features"][:]


def count_rows(path: str | Path) -> int:
    """Patches of the primary magnification."""
    with h5py.File(path, "r") as f:
        return len(f["features"])


def describe_features(path: str | Path) -> dict:
    """The index fields of one features h5 (shape, encoder, magnifications, flagged tiles)."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise ValueError(f"{path}: no 'features' dataset; it is not a wsikt features file — delete it and rerun feature extraction")
            a = f.attrs
            n, dim = f["features"].shape
            return dict(
                features=str(path), n_patches=int(n), dim=int(a.get("dim", dim)), encoder=_text(a.get("encoder", "")),
                weights_hash=_text(a.get("weights_hash", "")), primary=_text(a.get("primary", "")),
                magnifications=_text(a.get("magnifications", a.get("primary", ""))),
                mpp=float(a["mpp"]) if "mpp" in a else math.nan,
                flagged=int(np.count_nonzero(f["flagged"][:])) if "flagged" in f else 0,
            )
    except OSError as exc:
        raise ValueError(f"{path}: not a readable h5 file ({exc}); delete it and rerun feature extraction for this slide") from None


@dataclass
class SlideLevels:
    """One slide's features at several magnifications, with each (fine, coarse) pair's links.

    ``parents[pair]``: row of the coarse patch holding each fine patch (−1 if none); ``slots[pair]``:
    the fine patch's cell, row-major, in its parent's ``ratios[pair]``² grid; ``coords[name]``: the
    level-0 top-left (N, 2) of each patch (position-aware models, e.g. DSCA, read it).
    """

    features: dict[str, np.ndarray]
    primary: str
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    parents: dict[Pair, np.ndarray] = field(default_factory=dict)
    slots: dict[Pair, np.ndarray] = field(default_factory=dict)
    ratios: dict[Pair, int] = field(default_factory=dict)


def read_levels(path: str | Path, scales: Sequence[str]) -> SlideLevels:
    """Features at ``scales`` (PRIMARY = the file's primary) with links; a clear error names a missing level."""
    with h5py.File(path, "r") as f:
        primary = _text(f.attrs.get("primary", PRIMARY))
        have = [_text(m) for m in f.attrs.get("magnifications", [])] or [primary]
        names = [primary if s == PRIMARY else s for s in scales]
        missing = [s for s in names if s not in have]
        if missing:
            raise ValueError(
                f"{path}: features lack magnification(s) {', '.join(missing)} (has: {', '.join(have)}); the model "
                "(experts.model) needs them. Set preprocess.context_mpp to the missing levels' µm/px (e.g. [2.0] "
                "for 5x, [1.0, 2.0] for 10x and 5x) and rerun preprocessing and feature extraction"
            )
        features = {s: _level(f, s, primary, "features").astype(np.float32) for s in names}
        ordered = sorted(set(names), key=magnification, reverse=True)
        coords = {s: _coords(f, s, primary)[:].astype(np.int64) for s in names}
        out = SlideLevels(features=features, primary=primary if primary in features else ordered[0], coords=coords)
        for i, fine in enumerate(ordered):
            for coarse in ordered[i + 1:]:
                parents = _parents(f, fine, coarse, have)
                out.parents[(fine, coarse)] = parents
                out.slots[(fine, coarse)], out.ratios[(fine, coarse)] = _slots(f, fine, coarse, parents, primary)
    return out


def _level(f: h5py.File, name: str, primary: str, what: str) -> np.ndarray:
    """``mags/<name>/<what>``, or the top-level dataset for the primary of a single-magnification file."""
    if f"mags/{name}/{what}" in f:
        return f[f"mags/{name}/{what}"][:]
    if name == primary:
        return f[what][:]
    raise KeyError(f"{f.filename}: no mags/{name}/{what}")


def _parents(f: h5py.File, fine: str, coarse: str, have: list[str]) -> np.ndarray:
    """``parent_<coarse>`` of the fine level, composed through intermediate levels where not stored."""
    key = f"mags/{fine}/parent_{coarse}"
    if key in f:
        return f[key][:].astype(np.int64)
    for mid in sorted(have, key=magnification, reverse=True):
        if magnification(coarse) < magnification(mid) < magnification(fine) and f"mags/{fine}/parent_{mid}" in f:
            up = _parents(f, mid, coarse, have)
            first = f[f"mags/{fine}/parent_{mid}"][:].astype(np.int64)
            return np.where(first >= 0, up[np.clip(first, 0, None)], -1) if len(up) else np.full(len(first), -1, np.int64)
    raise ValueError(f"{f.filename}: no mags/{fine}/parent_{coarse} (nor a chain through other levels); rerun preprocessing")


def _slots(f: h5py.File, fine: str, coarse: str, parents: np.ndarray, primary: str) -> tuple[np.ndarray, int]:
    """Cell of each fine patch in its parent's r×r grid, from level-0 coords and footprints."""
    fc, cc = _coords(f, fine, primary), _coords(f, coarse, primary)
    try:
        fs, cs = float(fc.attrs["patch_size_level0"]), float(cc.attrs["patch_size_level0"])
    except KeyError:
        raise ValueError(f"{f.filename}: coords lack attr patch_size_level0; rerun preprocessing and feature extraction") from None
    fxy, cxy = fc[:].astype(np.int64), cc[:].astype(np.int64)
    ratio = max(1, int(round(cs / fs)))
    valid = parents >= 0
    rel = np.zeros((len(parents), 2), np.int64)
    rel[valid] = np.floor((fxy[valid] - cxy[parents[valid]]) / fs).astype(np.int64)
    inside = valid & np.all((rel >= 0) & (rel < ratio), axis=1)
    return np.where(inside, rel[:, 1] * ratio + rel[:, 0], -1).astype(np.int64), ratio


def _coords(f: h5py.File, name: str, primary: str) -> h5py.Dataset:
    if f"mags/{name}/coords" in f:
        return f[f"mags/{name}/coords"]
    if name == primary and "coords" in f:
        return f["coords"]
    raise ValueError(f"{f.filename}: no coords for magnification {name}; rerun feature extraction")


def load_coords(path: str | Path, scale: str = PRIMARY) -> tuple[str, np.ndarray, int]:
    """(magnification name, level-0 top-left coords (N, 2) int64, patch side in level-0 px) of one level.

    The side is the coords' ``patch_size_level0`` (wsikt, TRIDENT) or CLAM's ``patch_size`` ×
    ``downsample`` at ``patch_level``; rows are in the order of that level's features.
    """
    with h5py.File(path, "r") as f:
        primary = _text(f.attrs.get("primary", PRIMARY))
        name = primary if scale == PRIMARY else scale
        d = _coords(f, name, primary)
        a = d.attrs
        if "patch_size_level0" in a:
            side = int(round(float(a["patch_size_level0"])))
        elif "patch_size" in a:
            down = np.asarray(a.get("downsample", [1.0]), float).reshape(-1)
            side = int(round(float(a["patch_size"]) * float(down[0])))
        else:
            raise ValueError(f"{path}: coords of {name} lack patch_size_level0 (and CLAM's patch_size); rerun feature extraction")
        return name, d[:].astype(np.int64), side
