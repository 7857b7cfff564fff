"""Per-fold plumbing shared by every trained model: the nested-CV score and the fold's output files.

Predictions TSV (``formats.tables``): patient_id, fold, split (train/test), time, event, risk and
the survival curve S_0…S_{T−1}. Metrics JSON: cancer, fold, test and train Harrell's C, counts,
then the model's own fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from wsikt.cohort.splits import inner_folds
from wsikt.core.io import write_json, write_tsv
from wsikt.survival.bins import fit_time_bins, risk_from_survival
from wsikt.survival.metrics import harrell_c
from wsikt.training.settings import TrainSettings

# fit_predict(train rows, validation rows) → risk of the validation rows (higher = shorter survival)
FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def inner_bins(times: np.ndarray, events: np.ndarray, rows: np.ndarray, settings: TrainSettings, fold: int,
               key: str) -> np.ndarray:
    """Time-bin edges fit on an inner fold's training ``rows``, as the outer model fits its own; an inner fold
    too small to fit them stops with the outer fold and ``key`` (the config key of the inner folds) named."""
    try:
        return fit_time_bins(times[rows], events[rows], settings.bins_kind, settings.n_bins, settings.bin_width_days)
    except ValueError as exc:
        off = " (0 = off)" if "null_gate" in key else ""
        raise ValueError(f"{key.rsplit('.', 1)[0]} inner fold of outer fold {fold}: {exc}; or lower {key}{off}") from None


def inner_cv_c(split: pd.DataFrame, fold: int, n_inner: int, seed: int, fit_predict: FitPredict, key: str) -> float:
    """Harrell's C of out-of-fold risks pooled over ``n_inner`` inner folds of outer fold ``fold``'s training patients.

    Inner folds are stratified like the outer ones. The risks are pooled (one C over all training
    patients) because a small cohort's inner validation folds hold too few comparable pairs on
    their own. The outer test fold is never read. ``key`` is the config key of ``n_inner``.
    """
    return float(inner_cv_curve(split, fold, n_inner, seed, fit_predict, key, pooled=True)[-1])


def inner_cv_curve(split: pd.DataFrame, fold: int, n_inner: int, seed: int, fit_predict: FitPredict, key: str,
                   pooled: bool = True) -> np.ndarray:
    """Inner-CV Harrell's C for each row of the risks ``fit_predict`` returns ((n_val,) or (E, n_val), e.g. one per epoch).

    ``pooled``: one C over the pooled out-of-fold risks of all training patients (see ``inner_cv_c``);
    else the mean over inner folds of each fold's own C (HistoSSLscaling's nested CV; folds without a
    comparable pair are skipped). The outer test fold is never read.
    """
    inner = inner_folds(split, fold, n_inner, seed, key=key)
    rows = split.index.get_indexer(inner.index)
    labels = inner.to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    risk: np.ndarray | None = None
    per_fold = []
    for j in range(n_inner):
        tr, va = rows[labels != j], rows[labels == j]
        r = np.atleast_2d(np.asarray(fit_predict(tr, va), float))
        if risk is None:
            risk = np.full((len(r), len(split)), np.nan)
        risk[:, va] = r
        per_fold.append([harrell_c(times[va], events[va], r_e) for r_e in r])
    assert risk is not None
    if pooled:
        return np.array([harrell_c(times[rows], events[rows], r_e[rows]) for r_e in risk])
    scores = np.array(per_fold, float)  # (n_inner, E)
    counted = np.isfinite(scores)
    return np.where(counted.any(0), np.nansum(scores, 0) / np.maximum(counted.sum(0), 1), np.nan)


def write_fold_outputs(
    split: pd.DataFrame, fold: int, surv: np.ndarray, extra: dict[str, Any], out_predictions: str | Path,
    out_metrics: str | Path, risk: np.ndarray | None = None,
) -> dict:
    """Write one outer fold's predictions TSV and metrics JSON; ``risk`` defaults to −Σ S_t."""
    train = (split["fold"] != fold).to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    risk = risk_from_survival(surv) if risk is None else np.asarray(risk)  # its own dtype: the TSV keeps its digits
    preds = pd.DataFrame({"patient_id": split["patient_id"].to_numpy(), "fold": fold, "split": np.where(train, "train", "test"),
                          "time": times, "event": events, "risk": risk})
    preds = pd.concat([preds, pd.DataFrame(surv, columns=[f"S_{k}" for k in range(surv.shape[1])])], axis=1)
    test = ~train
    metrics = {
        "cancer": str(split["cancer"].iloc[0]) if "cancer" in split else "", "fold": fold,
        "c_index_test": harrell_c(times[test], events[test], risk[test]),
        "c_index_train": harrell_c(times[train], events[train], risk[train]),
        "n_train": int(train.sum()), "n_test": int(test.sum()), "events_test": int(events[test].sum()),
        **extra,
    }
    write_tsv(preds, out_predictions)
    write_json(metrics, out_metrics)
    return metrics
