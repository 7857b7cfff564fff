"""Numbers of the report computed from per-fold test predictions.

* bootstrap 95% CI of the mean-over-folds Harrell's C (test patients resampled within each fold);
* Kaplan–Meier low/high predicted-risk groups (median split of each fold's test risks, pooled) and
  the log-rank p-value (lifelines);
* time-dependent AUC (``cumulative_dynamic_auc``) and integrated Brier score (scikit-survival) per
  fold, with the training fold giving the censoring distribution.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

N_BOOT = 1000
BOOT_SEED = 20240611
N_EVAL_TIMES = 10  # evaluation times of td-AUC / IBS per fold
MIN_TEST_EVENTS = 2  # fewer test events in a fold: td-AUC / IBS not computed ('—')


@dataclass
class FoldPredictions:
    """One expert fold: its predictions table (train + test rows) and the expert's inner bin edges."""

    cancer: str
    fold: int
    table: pd.DataFrame
    inner_edges: np.ndarray

    @property
    def test(self) -> pd.DataFrame:
        return self.table[self.table["split"] == "test"]

    @property
    def train(self) -> pd.DataFrame:
        return self.table[self.table["split"] == "train"]

    def survival_columns(self) -> list[str]:
        cols = [c for c in self.table.columns if c.startswith("S_")]
        return sorted(cols, key=lambda c: int(c[2:]))


def read_inner_edges(model_pt: str | Path | None, n_bins: int, width_days: float = 365.0) -> np.ndarray:
    """Inner bin edges of an expert: checkpoint key 'inner_edges', else uniform ``width_days`` bins."""
    if model_pt is not None and Path(model_pt).exists():
        import torch

        ckpt = torch.load(model_pt, map_location="cpu", weights_only=True)
        if "inner_edges" in ckpt:
            return np.asarray(ckpt["inner_edges"], dtype=float)
    return np.arange(1, n_bins, dtype=float) * width_days


def load_fold_predictions(prediction_tsvs: list[str | Path]) -> list[FoldPredictions]:
    """Read ``.../{cancer}/fold{k}/predictions.tsv`` with the sibling ``model.pt``'s bin edges."""
    out = []
    for p in sorted(map(Path, prediction_tsvs)):
        table = pd.read_csv(p, sep="\t", dtype={"patient_id": str})
        n_bins = sum(c.startswith("S_") for c in table.columns)
        fold = int(table["fold"].iloc[0]) if len(table) else int(p.parent.name.removeprefix("fold"))
        edges = read_inner_edges(p.parent / "model.pt", n_bins)
        out.append(FoldPredictions(p.parent.parent.name, fold, table, edges))
    return out


# --------------------------------------------------------------------------- Harrell's C, bootstrap

def harrell_c_batch(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = 1e-8) -> np.ndarray:
    """Harrell's C of each row of (B, n) arrays, with scikit-survival's rules; NaN without comparable pairs.

    Pair (i, j) is comparable when i has an event and t_j > t_i, or t_j == t_i and j is censored;
    concordant when r_i > r_j, half when |r_i − r_j| ≤ ``tied_tol``.
    """
    time, risk = np.atleast_2d(time).astype(float), np.atleast_2d(risk).astype(float)
    event = np.atleast_2d(event).astype(bool)
    ti, tj = time[:, :, None], time[:, None, :]
    ei, ej = event[:, :, None], event[:, None, :]
    comparable = ei & ((tj > ti) | ((tj == ti) & ~ej))
    diff = risk[:, :, None] - risk[:, None, :]
    tie = np.abs(diff) <= tied_tol
    score = np.where(tie, 0.5, (diff > 0).astype(float))
    n = comparable.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (score * comparable).sum(axis=(1, 2)) / np.maximum(n, 1), np.nan)


@dataclass
class BootstrapCI:
    mean: float  # mean over folds of the test C on the original data
    low: float
    high: float
    n_valid: int  # resamples with a finite mean-over-folds C


def bootstrap_c_index(folds: list[FoldPredictions], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> BootstrapCI:
    """Percentile 95% CI of the mean-over-folds test C: each fold's test patients resampled with replacement.

    The generator is seeded with (seed, CRC32 of the cancer name): the CI does not depend on the
    order in which cancers are processed.
    """
    if not folds:
        return BootstrapCI(np.nan, np.nan, np.nan, 0)
    rng = np.random.default_rng([seed, zlib.crc32(folds[0].cancer.encode())])
    point, boots = [], []
    for f in sorted(folds, key=lambda f: f.fold):
        t, e, r = (f.test[c].to_numpy(float) for c in ("time", "event", "risk"))
        point.append(harrell_c_batch(t, e, r)[0] if len(t) else np.nan)
        if len(t) == 0:
            boots.append(np.full(n_boot, np.nan))
            continue
        chunk = max(1, int(2e7 // max(1, len(t) ** 2)))  # bound the (B, n, n) pair arrays
        idx = rng.integers(0, len(t), size=(n_boot, len(t)))
        boots.append(np.concatenate(
            [harrell_c_batch(t[idx[s:s + chunk]], e[idx[s:s + chunk]], r[idx[s:s + chunk]]) for s in range(0, n_boot, chunk)]
        ))
    with warnings.catch_warnings():  # all-NaN columns (no comparable pair) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_boot = np.nanmean(np.vstack(boots), axis=0)
        mean = float(np.nanmean(point))
    valid = mean_boot[np.isfinite(mean_boot)]
    if len(valid) == 0:
        return BootstrapCI(mean, np.nan, np.nan, 0)
    low, high = np.percentile(valid, [2.5, 97.5])
    return BootstrapCI(mean, float(low), float(high), int(len(valid)))


# --------------------------------------------------------------------------- Kaplan–Meier risk groups

@dataclass
class RiskGroups:
    time: np.ndarray
    event: np.ndarray
    high: np.ndarray  # bool: above its fold's median test risk
    p_value: float = np.nan
    extra: dict = field(default_factory=dict)


def risk_groups(folds: list[FoldPredictions]) -> RiskGroups:
    """Median split of each fold's test risks (high: risk > fold median), pooled over folds; log-rank p."""
    from lifelines.statistics import logrank_test

    times, events, high = [], [], []
    for f in folds:
        test = f.test
        r = test["risk"].to_numpy(float)
        times.append(test["time"].to_numpy(float))
        events.append(test["event"].to_numpy(int))
        high.append(r > np.median(r) if len(r) else np.zeros(0, bool))
    g = RiskGroups(np.concatenate(times) if times else np.zeros(0), np.concatenate(events) if events else np.zeros(0, int),
                   np.concatenate(high) if high else np.zeros(0, bool))
    if g.high.any() and (~g.high).any() and g.event.sum() > 0:
        res = logrank_test(g.time[g.high], g.time[~g.high], event_observed_A=g.event[g.high], event_observed_B=g.event[~g.high])
        g.p_value = float(res.p_value)
    return g


# --------------------------------------------------------------------------- td-AUC and IBS

def survival_at(surv: np.ndarray, inner_edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) from discrete-time curves: S_k is survival to the end of bin k (the edge ``inner_edges[k]``).

    A step function: S(t) = 1 before the first edge, S_k for ``inner_edges[k] ≤ t < inner_edges[k+1]``.
    """
    surv = np.atleast_2d(np.asarray(surv, float))
    k = np.searchsorted(np.asarray(inner_edges, float), np.asarray(times, float), side="right") - 1
    padded = np.hstack([np.ones((surv.shape[0], 1)), surv])
    return padded[:, np.clip(k + 1, 0, surv.shape[1])]


def evaluation_times(test_time: np.ndarray, test_event: np.ndarray, train_time: np.ndarray, n: int = N_EVAL_TIMES) -> np.ndarray:
    """``n`` equally spaced times from the first test event to just before the horizon.

    The horizon is the last test time, or the last training time when earlier (the censoring
    distribution is unknown beyond it). Empty when the range is empty.
    """
    events = test_time[test_event.astype(bool)]
    if len(events) == 0 or len(train_time) == 0:
        return np.zeros(0)
    lo, hi = float(events.min()), float(min(test_time.max(), train_time.max()))
    if not hi > lo:
        return np.zeros(0)
    return np.linspace(lo, hi, n + 1)[:-1]


@dataclass
class TimeMetrics:
    times: np.ndarray
    auc: np.ndarray  # td-AUC at each time
    mean_auc: float  # scikit-survival's summary over times
    ibs: float  # integrated Brier score of the expert's survival curves
    ibs_km: float  # the same for the training fold's Kaplan–Meier curve (no-skill reference)
    reason: str = ""  # why not computed


def time_metrics(
    train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray, test_event: np.ndarray,
    test_risk: np.ndarray, test_surv: np.ndarray, inner_edges: np.ndarray, times: np.ndarray | None = None,
) -> TimeMetrics:
    """td-AUC (risk) and IBS (S_k at the evaluation times) for one fold; NaN with a reason when impossible.

    Test follow-up beyond the last training time is administratively censored there: metrics at
    earlier evaluation times are unchanged and the training-fold censoring distribution stays defined.
    """
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    nan = TimeMetrics(np.zeros(0), np.zeros(0), np.nan, np.nan, np.nan)
    train_time, test_time = np.asarray(train_time, float), np.asarray(test_time, float)
    train_event, test_event = np.asarray(train_event).astype(bool), np.asarray(test_event).astype(bool)
    if test_event.sum() < MIN_TEST_EVENTS or train_event.sum() < 1:
        nan.reason = f"{int(test_event.sum())} test events (< {MIN_TEST_EVENTS})"
        return nan
    horizon = train_time.max()
    cut = test_time > horizon
    test_time, test_event = np.where(cut, horizon, test_time), np.where(cut, False, test_event)
    if times is None:
        times = evaluation_times(test_time, test_event, train_time)
    if len(times) < 2:
        nan.reason = "follow-up range too short"
        return nan
    y_train, y_test = Surv.from_arrays(train_event, train_time), Surv.from_arrays(test_event, test_time)
    try:
        auc, mean_auc = cumulative_dynamic_auc(y_train, y_test, np.asarray(test_risk, float), times)
        ibs = integrated_brier_score(y_train, y_test, survival_at(test_surv, inner_edges, times), times)
        km_t, km_s = kaplan_meier_estimator(train_event, train_time)
        km = km_s[np.clip(np.searchsorted(km_t, times, side="right") - 1, 0, None)] * (times >= km_t[0]) + (times < km_t[0])
        ibs_km = integrated_brier_score(y_train, y_test, np.tile(km, (len(test_time), 1)), times)
    except ValueError as err:
        nan.reason = str(err)
        return nan
    return TimeMetrics(np.asarray(times), np.asarray(auc, float), float(mean_auc), float(ibs), float(ibs_km))


def fold_time_metrics(f: FoldPredictions) -> TimeMetrics:
    """td-AUC / IBS of one expert fold from its predictions table (train rows give censoring)."""
    tr, te = f.train, f.test
    return time_metrics(
        tr["time"].to_numpy(float), tr["event"].to_numpy(int), te["time"].to_numpy(float), te["event"].to_numpy(int),
        te["risk"].to_numpy(float), te[f.survival_columns()].to_numpy(float), f.inner_edges,
    )


def expert_metrics(folds: list[FoldPredictions], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[pd.DataFrame, dict]:
    """Per cancer: bootstrap CI, log-rank p, td-AUC and IBS (mean ± sd over folds where computable).

    Returns the table and cancer → RiskGroups (for the Kaplan–Meier figure).
    """
    rows, groups = [], {}
    by_cancer: dict[str, list[FoldPredictions]] = {}
    for f in folds:
        by_cancer.setdefault(f.cancer, []).append(f)
    for cancer in sorted(by_cancer):
        fs = sorted(by_cancer[cancer], key=lambda f: f.fold)
        ci = bootstrap_c_index(fs, n_boot, seed)
        g = risk_groups(fs)
        groups[cancer] = g
        tm = [fold_time_metrics(f) for f in fs]
        row = {"cancer": cancer, "c_index_mean_predictions": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
               "n_boot_valid": ci.n_valid, "logrank_p": g.p_value, "n_high": int(g.high.sum()), "n_low": int((~g.high).sum()),
               "folds": len(fs)}
        for key in ("mean_auc", "ibs", "ibs_km"):
            vals = np.array([getattr(m, key) for m in tm], float)
            ok = vals[np.isfinite(vals)]
            row[f"{key}_mean"] = float(ok.mean()) if len(ok) else np.nan
            row[f"{key}_sd"] = float(ok.std(ddof=1)) if len(ok) > 1 else np.nan
            row[f"{key}_folds"] = int(len(ok))
        row["time_metrics_skipped"] = "; ".join(f"fold {f.fold}: {m.reason}" for f, m in zip(fs, tm) if m.reason)
        rows.append(row)
    return pd.DataFrame(rows), groups
