"""Patient bags: all patch features of all of a patient's slides, concatenated, at one or more magnifications.

Single-scale models see one (N, D) float32 array per patient (the primary magnification, the
features h5's top-level ``features``). Multi-scale models see a :class:`PatientBag` holding one
array per magnification plus, for every (fine, coarse) pair, the row of the coarse patch that
contains each fine patch and the fine patch's cell in that parent's r×r grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd

from wsikt.core.model_facts import PRIMARY
from wsikt.formats.features_h5 import load_features, read_levels

Pair = tuple[str, str]


@dataclass
class PatientBag:
    """One patient's patch features per magnification, concatenated over slides, with parent links.

    ``parents[(fine, coarse)]`` (N_fine,) int64: row in ``features[coarse]`` of the patch containing
    each fine patch (−1 if none). ``slots[(fine, coarse)]`` (N_fine,) int64: the fine patch's cell,
    row-major, in its parent's ``ratios[(fine, coarse)]``² grid. ``coords[name]`` (N, 2) int64:
    level-0 top-left of each patch in its own slide; ``slide_index[name]`` (N,) int64: which of the
    patient's slides (0, 1, … in load order) each row comes from.
    """

    features: dict[str, np.ndarray]
    primary: str = PRIMARY
    parents: dict[Pair, np.ndarray] = field(default_factory=dict)
    slots: dict[Pair, np.ndarray] = field(default_factory=dict)
    ratios: dict[Pair, int] = field(default_factory=dict)
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    slide_index: dict[str, np.ndarray] = field(default_factory=dict)

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


def load_patient_bags(
    patient_ids: list[str], slides: pd.DataFrame, feature_path: dict[str, str | Path], scales: Sequence[str] | None = None,
    max_tiles_per_slide: int | None = None,
) -> list[Bag]:
    """One bag per patient, in ``patient_ids`` order; slides come from the sample sheet.

    ``max_tiles_per_slide`` keeps each slide's first k patches in its features file (HistoSSLscaling's
    n_tiles: the first 1000 tiles of each slide); single magnification only. None keeps every patch.

    ``scales`` None (or only PRIMARY): (N, D) float32 arrays of the primary magnification.
    Otherwise a :class:`PatientBag` per patient with those magnifications (e.g. ("20x", "5x")) and
    parent links for every (fine, coarse) pair, parent rows offset over the patient's slides.
    A patient whose slides have no patches at all gets an error: such patients must be excluded
    when splits are made, not silently given an empty bag.
    """
    by_patient = slides.groupby("patient_id")["slide_id"].apply(list).to_dict()
    multi = scales is not None and any(s != PRIMARY for s in scales)
    if max_tiles_per_slide is not None and (multi or max_tiles_per_slide < 1):
        raise ValueError(f"experts.max_tiles_per_slide {max_tiles_per_slide}: must be >= 1, and only for single-magnification "
                         "models (null keeps every patch)")
    bags: list[Bag] = []
    for pid in patient_ids:
        paths = [feature_path[s] for s in sorted(by_patient.get(pid, []))]
        if multi:
            parts = [p for p in (_read_slide(path, list(scales)) for path in paths) if len(p)]
        else:
            parts = [p[:max_tiles_per_slide] for p in (load_features(path) for path in paths) if len(p)]
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
    coords = {k: np.concatenate([p.coords[k] for p in parts]).astype(np.int64) for k in first.coords}
    slide_index = {k: np.concatenate([np.full(len(p.features[k]), i, np.int64) for i, p in enumerate(parts)]) for k in first.features}
    return PatientBag(features=features, primary=first.primary, parents=parents, slots=slots, ratios=ratios,
                      coords=coords, slide_index=slide_index)


def _read_slide(path: str | Path, scales: list[str]) -> PatientBag:
    """One slide's features at ``scales`` with parent links (the features h5's reader)."""
    lv = read_levels(path, scales)
    return PatientBag(features=lv.features, primary=lv.primary, parents=lv.parents, slots=lv.slots, ratios=lv.ratios,
                      coords=lv.coords)
