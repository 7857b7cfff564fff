"""Numbers of the report computed from per-fold test predictions.

* bootstrap 95% CI of the mean-over-folds Harrell's C (test patients resampled within each fold);
* Kaplan–Meier low/high predicted-risk groups (median split of each fold's test risks, pooled) and
  the log-rank p-value (lifelines);
* time-dependent AUC and integrated Brier score per fold, with the training fold giving the
  censoring distribution.

The metrics themselves live in ``wsikt.survival.metrics`` (equal to scikit-survival's); this module reads
the per-fold prediction tables and arranges them per cancer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsikt.formats.tables import read_json, read_table
from wsikt.survival import metrics as M
from wsikt.survival.metrics import (
    BOOT_SEED,
    N_BOOT,
    BootstrapCI,
    TimeMetrics,
    time_metrics,
)


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


def load_fold_predictions(prediction_tsvs: list[str | Path]) -> list[FoldPredictions]:
    """Read fold predictions TSVs with the cancer and bin edges recorded in each sibling ``metrics.json``."""
    out = []
    for p in sorted(map(Path, prediction_tsvs)):
        table = read_table(p)
        fold = int(table["fold"].iloc[0]) if len(table) else int(p.parent.name.removeprefix("fold"))
        metrics = p.parent / "metrics.json"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics}: missing beside {p.name}; rerun the training job of this fold")
        recorded = read_json(metrics)
        out.append(FoldPredictions(str(recorded["cancer"]), fold, table, np.asarray(recorded["inner_edges"], float)))
    return out


# --------------------------------------------------------------------------- Harrell's C, bootstrap

def harrell_c_batch(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = M.TIED_TOL) -> np.ndarray:
    """Harrell's C of each row of (B, n) arrays (wsikt.survival.metrics.harrell_c); NaN without comparable pairs."""
    time, event, risk = np.atleast_2d(time), np.atleast_2d(event), np.atleast_2d(risk)
    return np.array([M.harrell_c(t, e, r, tied_tol) for t, e, r in zip(time, event, risk)], dtype=float)


def bootstrap_c_index(folds: list[FoldPredictions], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> BootstrapCI:
    """Percentile 95% CI of the mean-over-folds test C: each fold's test patients resampled with replacement.

    The generator is seeded with (seed, CRC32 of the cancer name): the CI does not depend on the
    order in which cancers are processed.
    """
    if not folds:
        return BootstrapCI(np.nan, np.nan, np.nan, 0)
    arrays = [tuple(f.test[c].to_numpy(float) for c in ("time", "event", "risk")) for f in sorted(folds, key=lambda f: f.fold)]
    return M.bootstrap_c_index(arrays, n_boot, [seed, zlib.crc32(folds[0].cancer.encode())])


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
