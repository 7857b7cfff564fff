"""Patient-level test folds: K folds stratified by event (and time where counts allow), from a seed; the
external split; and the inner folds of nested CV. Site-preserved folds: ``site_splits``; a paper's
fold files: ``split_files``. A split's ``fold`` is each patient's test fold; −1 marks a patient that
trains in every fold and is never tested (external mode's training cohorts, fold files' train-only
patients), so every rule reads fold k's training set as ``fold != k``.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from wsikt.cohort.site_splits import site_folds

TRAIN_ONLY = -1  # the fold of a patient that is never tested


def _strata(df: pd.DataFrame, n_folds: int) -> np.ndarray | None:
    """Event × time-half when every stratum has ≥ n_folds patients, else event, else None (unstratified)."""
    event = df["event"].astype(int).to_numpy()
    late = (df["time"].to_numpy() > np.median(df["time"])).astype(int)
    joint = event * 2 + late
    if len(np.unique(joint)) > 1 and np.bincount(joint).min() >= n_folds:
        return joint
    if len(np.unique(event)) > 1 and np.bincount(event).max() >= n_folds:
        return event  # events spread over folds even when few patients are censored
    return None


def _assign_folds(df: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold in [0, n_folds) of each row of ``df`` (already in canonical order), stratified by ``_strata``."""
    from sklearn.model_selection import KFold, StratifiedKFold  # 0.75 s of import: only jobs that split pay it

    strata = _strata(df, n_folds)
    if strata is None:
        folds = KFold(n_folds, shuffle=True, random_state=seed).split(df)
    else:
        with warnings.catch_warnings():  # sklearn warns when the rarer class has < n_folds members
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(df, strata))
    out = np.full(len(df), -1, dtype=np.int64)
    for k, (_, test_idx) in enumerate(folds):
        out[test_idx] = k
    return out


def make_splits(patients: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each patient (rows: patient_id, time, event) a test fold in [0, n_folds).

    Strata: event × time-half (median split) when every stratum has ≥ n_folds patients, else event
    alone (so every fold gets events even when few patients are censored), else unstratified.
    Deterministic for a given seed and patient set (rows are sorted by id first).
    """
    df = patients.sort_values("patient_id").reset_index(drop=True).copy()
    if len(df) < n_folds:
        raise ValueError(
            f"cancer {df['cancer'].iloc[0] if len(df) else '?'}: {len(df)} patients cannot fill "
            f"{n_folds} folds; lower experts.folds or drop the cancer from the cohort"
        )
    df["fold"] = _assign_folds(df, n_folds, seed)
    return df


def make_external_splits(patients: pd.DataFrame, cohorts: Mapping[str, str], test_cohorts: Iterable[str]) -> pd.DataFrame:
    """One test fold (0) of the patients of ``test_cohorts``; everyone else trains (fold −1) and is never tested.

    ``cohorts``: patient → cohort (the sample sheet's ``cohort`` column). A cancer without a test
    or a training patient raises ValueError naming the cancer and the fix.
    """
    df = patients.sort_values("patient_id").reset_index(drop=True).copy()
    cancer = str(df["cancer"].iloc[0]) if "cancer" in df and len(df) else "?"
    tests = {str(c) for c in test_cohorts}
    df["cohort"] = [cohorts.get(str(p)) for p in df["patient_id"]]
    if df["cohort"].isna().any():
        pid = df.loc[df["cohort"].isna(), "patient_id"].iloc[0]
        raise ValueError(f"cancer {cancer}: patient {pid} has no cohort; fill the sample sheet's 'cohort' column")
    is_test = df["cohort"].isin(tests).to_numpy()
    for n, what in ((is_test.sum(), f"test cohort(s) {sorted(tests)}"), ((~is_test).sum(), "training cohort")):
        if n == 0:
            raise ValueError(f"cancer {cancer}: no labelled patient with patches in its {what}; "
                             "add patients to it or drop the cancer (splits.strategy external)")
    df["fold"] = np.where(is_test, 0, TRAIN_ONLY)
    return df


def inner_folds(split_df: pd.DataFrame, outer_fold: int, n_inner: int = 5, seed: int = 42,
                key: str = "baselines.inner_folds") -> pd.Series:
    """Nested CV: inner folds in [0, n_inner) for the training patients of one outer fold only.

    Stratified like ``make_splits`` (the time-half median is the training patients' own), so
    hyper-parameters can be chosen without the outer test fold; site-preserved (``site_splits``)
    when the split has a ``site`` column and the training patients span ≥ n_inner sites, else
    stratified. Returns a Series named
    ``inner_fold`` indexed like the training rows of ``split_df`` (the outer fold's test patients
    are absent); deterministic for a given seed and patient set. ``key`` is the config key that
    sets ``n_inner``, named in the error when the training fold is too small.
    """
    if outer_fold not in set(split_df["fold"]):
        raise ValueError(f"outer fold {outer_fold} is not in the split (folds {sorted(set(split_df['fold']))})")
    train = split_df[split_df["fold"] != outer_fold].sort_values("patient_id")
    if len(train) < n_inner:
        raise ValueError(
            f"outer fold {outer_fold}: {len(train)} training patients cannot fill {n_inner} inner folds; "
            f"lower {key}"
        )
    train_rows = train.reset_index(drop=True)
    if "site" in train_rows and train_rows["site"].nunique() >= n_inner:
        folds = site_folds(train_rows["site"], train_rows["event"], n_inner, seed, key=key)
    else:
        folds = _assign_folds(train_rows, n_inner, seed)
    return pd.Series(folds, index=train.index, name="inner_fold").reindex(split_df.index[split_df["fold"] != outer_fold])
