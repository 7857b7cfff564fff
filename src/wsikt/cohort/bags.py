"""Patient bags: all patch features of all of a patient's slides, concatenated, at one or more magnifications.

Single-scale models see one (N, D) float32 array per patient (the primary magnification, the
features h5's top-level ``features``). Multi-scale models see a :class:`PatientBag` holding one
array per magnification plus, for every (fine, coarse) pair, the row of the coarse patch that
contains each fine patch and the fine patch's cell in that parent's r×r grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import h5py
import numpy as np
import pandas as pd

from wsikt.core.model_facts import PRIMARY
from wsikt.features.extract import load_features

Pair = tuple[str, str]


@dataclass
class PatientBag:
    """One patient's patch features per magnification, concatenated over slides, with parent links.

    ``parents[(fine, coarse)]`` (N_fine,) int64: row in ``features[coarse]`` of the patch containing
    each fine patch (−1 if none). ``slots[(fine, coarse)]`` (N_fine,) int64: the fine patch's cell,
    row-major, in its parent's ``ratios[(fine, coarse)]``² grid.
    """

    features: dict[str, np.ndarray]
    primary: str = PRIMARY
    parents: dict[Pair, np.ndarray] = field(default_factory=dict)
    slots: dict[Pair, np.ndarray] = field(default_factory=dict)
    ratios: dict[Pair, int] = field(default_factory=dict)

    def scale(self, name: str) -> np.ndarray:
        """Features (N, D) at magnification ``name`` (PRIMARY = the primary one)."""
        key = self.primary if name == PRIMARY else name
        if key not in self.features:
            raise KeyError(
                f"this patient bag lacks magnification '{name}' (has: {', '.join(self.features)}); "
                "load bags with wsikt.cohort.bags.load_patient_bags(..., scales=model.scales)"
            )
        return self.features[key]

    def link(self, fine: str, coarse: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(parents, slots, ratio) of the (fine, coarse) pair."""
        pair = (self.primary if fine == PRIMARY else fine, self.primary if coarse == PRIMARY else coarse)
        if pair not in self.parents:
            raise KeyError(
                f"this patient bag has no parent links {pair[0]}→{pair[1]} (has: {list(self.parents)}); "
                "load bags with wsikt.cohort.bags.load_patient_bags(..., scales=model.scales)"
            )
        return self.parents[pair], self.slots[pair], self.ratios[pair]

    @property
    def x(self) -> np.ndarray:
        """Primary-magnification features (N, D)."""
        return self.features[self.primary]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def __len__(self) -> int:
        return len(self.x)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.x if dtype is None else self.x.astype(dtype)


Bag = Union[np.ndarray, PatientBag]


def as_patient_bag(bag: Bag) -> PatientBag:
    """Wrap a plain (N, D) array as a one-level PatientBag (its primary magnification)."""
    return bag if isinstance(bag, PatientBag) else PatientBag(features={PRIMARY: np.asarray(bag, np.float32)})


def primary_features(bag: Bag) -> np.ndarray:
    """The (N, D) primary-magnification features of a bag of either kind."""
    return bag.x if isinstance(bag, PatientBag) else bag


def magnification(name: str) -> float:
    """'20x' → 20.0; used to order magnifications fine → coarse."""
    try:
        return float(name.rstrip("x"))
    except ValueError:
        raise ValueError(f"magnification name '{name}' must look like '20x' (10/mpp)") from None


def load_patient_bags(
    patient_ids: list[str], slides: pd.DataFrame, feature_path: dict[str, str | Path], scales: Sequence[str] | None = None
) -> list[Bag]:
    """One bag per patient, in ``patient_ids`` order; slides come from the sample sheet.

    ``scales`` None (or only PRIMARY): (N, D) float32 arrays of the primary magnification.
    Otherwise a :class:`PatientBag` per patient with those magnifications (e.g. ("20x", "5x")) and
    parent links for every (fine, coarse) pair, parent rows offset over the patient's slides.
    A patient whose slides have no patches at all gets an error: such patients must be excluded
    when splits are made, not silently given an empty bag.
    """
    by_patient = slides.groupby("patient_id")["slide_id"].apply(list).to_dict()
    multi = scales is not None and any(s != PRIMARY for s in scales)
    bags: list[Bag] = []
    for pid in patient_ids:
        paths = [feature_path[s] for s in sorted(by_patient.get(pid, []))]
        if multi:
            parts = [p for p in (_read_slide(path, list(scales)) for path in paths) if len(p)]
        else:
            parts = [p for p in (load_features(path) for path in paths) if len(p)]
        if not parts:
            raise ValueError(f"patient {pid} has no patch features; it should have been excluded at the split stage")
        bags.append(_concat(parts) if multi else np.concatenate(parts).astype(np.float32))
    return bags


def _concat(parts: list[PatientBag]) -> PatientBag:
    """Concatenate slides' bags; parent rows are offset by the coarse rows of the slides before."""
    first = parts[0]
    features = {k: np.concatenate([p.features[k] for p in parts]).astype(np.float32) for k in first.features}
    parents, slots, ratios = {}, {}, {}
    for pair in first.parents:
        offsets = np.cumsum([0] + [len(p.features[pair[1]]) for p in parts[:-1]])
        parents[pair] = np.concatenate(
            [np.where(p.parents[pair] >= 0, p.parents[pair] + off, -1) for p, off in zip(parts, offsets)]
        ).astype(np.int64)
        slots[pair] = np.concatenate([p.slots[pair] for p in parts]).astype(np.int64)
        rs = {p.ratios[pair] for p in parts}
        if len(rs) > 1:
            raise ValueError(f"slides of one patient disagree on the {pair[0]}/{pair[1]} patch ratio: {sorted(rs)}; re-run preprocessing with one config")
        ratios[pair] = rs.pop()
    return PatientBag(features=features, primary=first.primary, parents=parents, slots=slots, ratios=ratios)


def _read_slide(path: str | Path, scales: list[str]) -> PatientBag:
    """One slide's features at ``scales`` with parent links; a clear error names a missing level."""
    with h5py.File(path, "r") as f:
        primary = _primary_name(f)
        have = [_str(m) for m in f.attrs.get("magnifications", [])] or [primary]
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
        bag = PatientBag(features=features, primary=primary if primary in features else ordered[0])
        for i, fine in enumerate(ordered):
            for coarse in ordered[i + 1:]:
                parents = _parents(f, fine, coarse, have)
                slots, ratio = _slots(f, fine, coarse, parents, primary)
                bag.parents[(fine, coarse)], bag.slots[(fine, coarse)], bag.ratios[(fine, coarse)] = parents, slots, ratio
    return bag


def _primary_name(f: h5py.File) -> str:
    """Root attr ``primary``, else the name 10/mpp of an old single-level file, else PRIMARY."""
    if "primary" in f.attrs:
        return _str(f.attrs["primary"])
    if "mpp" in f.attrs:
        return f"{10 / float(f.attrs['mpp']):g}x"
    return PRIMARY


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _level(f: h5py.File, name: str, primary: str, what: str) -> np.ndarray:
    """``mags/<name>/<what>``, or the top-level dataset for the primary level of an old file."""
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
    """Cell of each fine patch in its parent's r×r grid, from level-0 coords and footprints.

    Falls back to the order within each parent (r = ⌈√max children⌉) when coords lack footprints.
    """
    try:
        fc, cc = _coords(f, fine, primary), _coords(f, coarse, primary)
        fs = float(fc.attrs["patch_size_level0"])
        cs = float(cc.attrs["patch_size_level0"])
        fxy, cxy = fc[:].astype(np.int64), cc[:].astype(np.int64)
    except KeyError:
        fxy = None
    valid = parents >= 0
    if fxy is not None and len(fxy):
        ratio = max(1, int(round(cs / fs)))
        rel = np.zeros((len(parents), 2), np.int64)
        rel[valid] = np.floor((fxy[valid] - cxy[parents[valid]]) / fs).astype(np.int64)
        inside = valid & np.all((rel >= 0) & (rel < ratio), axis=1)
        slots = np.where(inside, rel[:, 1] * ratio + rel[:, 0], -1)
        return slots.astype(np.int64), ratio
    slots = np.full(len(parents), -1, np.int64)
    counts: dict[int, int] = {}
    for i in np.flatnonzero(valid):
        slots[i] = counts.get(int(parents[i]), 0)
        counts[int(parents[i])] = slots[i] + 1
    return slots, max(1, math.ceil(math.sqrt(max(counts.values(), default=1))))


def _coords(f: h5py.File, name: str, primary: str) -> h5py.Dataset:
    if f"mags/{name}/coords" in f:
        return f[f"mags/{name}/coords"]
    if name == primary and "coords" in f:
        return f["coords"]
    raise KeyError(name)
