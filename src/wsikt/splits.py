"""Patient-level K-fold splits, stratified by event (and time where counts allow), from a seed."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold


def make_splits(patients: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each patient (rows: patient_id, time, event) a test fold in [0, n_folds).

    Strata: event × time-half (median split) when every stratum has ≥ n_folds patients, else event
    alone (so every fold gets events even when few patients are censored), else unstratified. Deterministic for a given seed and patient order (sorted by id).
    """
    df = patients.sort_values("patient_id").reset_index(drop=True).copy()
    if len(df) < n_folds:
        raise ValueError(
            f"cancer {df['cancer'].iloc[0] if len(df) else '?'}: {len(df)} patients cannot fill "
            f"{n_folds} folds; lower experts.folds or drop the cancer from the cohort"
        )
    event = df["event"].astype(int).to_numpy()
    late = (df["time"].to_numpy() > np.median(df["time"])).astype(int)
    joint = event * 2 + late
    if len(np.unique(joint)) > 1 and np.bincount(joint).min() >= n_folds:
        strata = joint
    elif len(np.unique(event)) > 1 and np.bincount(event).max() >= n_folds:
        strata = event  # events spread over folds even when few patients are censored
    else:
        strata = None
    if strata is None:
        folds = KFold(n_folds, shuffle=True, random_state=seed).split(df)
    else:
        with warnings.catch_warnings():  # sklearn warns when the rarer class has < n_folds members
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(df, strata))
    df["fold"] = -1
    for k, (_, test_idx) in enumerate(folds):
        df.loc[test_idx, "fold"] = k
    return df


def patients_with_patches(slides: pd.DataFrame, patch_path: dict[str, str]) -> tuple[set[str], pd.DataFrame]:
    """Patients with ≥1 patch over their slides, and an exclusion table for the others."""
    counts: dict[str, int] = {}
    for row in slides.itertuples():
        with h5py.File(patch_path[row.slide_id], "r") as f:
            counts[row.patient_id] = counts.get(row.patient_id, 0) + int(f["coords"].shape[0])
    keep = {p for p, n in counts.items() if n > 0}
    excluded = slides[~slides["patient_id"].isin(keep)][["patient_id", "cancer"]].drop_duplicates()
    excluded = excluded.assign(reason="no tissue patches on any slide")
    return keep, excluded
