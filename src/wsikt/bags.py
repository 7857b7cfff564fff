"""Patient bags: all patch features of all of a patient's slides, concatenated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsikt.features import load_features


def load_patient_bags(patient_ids: list[str], slides: pd.DataFrame, feature_path: dict[str, str | Path]) -> list[np.ndarray]:
    """One (N, D) float32 bag per patient, in ``patient_ids`` order; slides come from the sample sheet.

    A patient whose slides have no patches at all gets an error: such patients must be excluded
    when splits are made, not silently given an empty bag.
    """
    by_patient = slides.groupby("patient_id")["slide_id"].apply(list).to_dict()
    bags = []
    for pid in patient_ids:
        parts = [load_features(feature_path[s]) for s in sorted(by_patient.get(pid, []))]
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError(f"patient {pid} has no patch features; it should have been excluded at the split stage")
        bags.append(np.concatenate(parts).astype(np.float32))
    return bags
