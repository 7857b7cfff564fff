"""The statistics tables, computed from prediction files only (no model is loaded, nothing is retrained).

* ``chance_table``: per (method, cancer) the test-fold permutation reference of the reported C;
* ``compare_table``: per (method, cancer) the paired bootstrap of C(method) − C(own expert);
* ``matrix_ci_table``: per transfer-matrix cell its bootstrap CI, from the embedding caches' risks;
* ``retrained_summary``: the opt-in retrained null (``stats.permutations``) against the observed C.

Below chance, for a method's result: its permutation ``p_below`` < ``stats.below_chance_p`` (random
rankings of the same test patients beat it that rarely); for a matrix cell (no permutation
reference, for cost): its CI lies wholly under 0.5. Seeds mix ``stats.seed`` with CRC32 of the cancer
(and method), so a table does not depend on the order cancers are processed in, and every method
of one cancer is compared on the same resamples.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from wsikt.formats.stats_tables import COLUMNS
from wsikt.formats.tables import read_json, read_table
from wsikt.stats.settings import StatsSettings
from wsikt.survival.chance import mean_c_bootstrap_ci, paired_bootstrap_delta, permutation_null_c, pooled_null

REFERENCE = "expert"  # the method every other is compared with: the cancer's own expert

Fold = tuple[np.ndarray, np.ndarray, np.ndarray]


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def read_test_folds(prediction_tsvs: Sequence[str | Path]) -> dict[str, dict[int, pd.DataFrame]]:
    """Test rows (patient_id, time, event, risk; sorted by patient) per cancer and fold.

    The cancer is the one recorded in each predictions file's sibling ``metrics.json``.
    """
    out: dict[str, dict[int, pd.DataFrame]] = {}
    for p in map(Path, prediction_tsvs):
        metrics = p.parent / "metrics.json"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics}: missing beside {p.name}; rerun the training job of this fold")
        table = read_table(p)
        test = table[table["split"] == "test"].sort_values("patient_id", kind="stable")
        fold = int(test["fold"].iloc[0]) if len(test) else int(p.parent.name.removeprefix("fold"))
        out.setdefault(str(read_json(metrics)["cancer"]), {})[fold] = test[["patient_id", "time", "event", "risk"]]
    return out


def _arrays(folds: Mapping[int, pd.DataFrame]) -> list[Fold]:
    return [tuple(folds[k][c].to_numpy(float) for c in ("time", "event", "risk")) for k in sorted(folds)]


def chance_table(predictions: Mapping[str, Sequence[str | Path]], settings: StatsSettings) -> pd.DataFrame:
    """Per (method, cancer): observed mean-over-folds C, the permutation null's mean and sd, p-values, flag."""
    rows = []
    for method, paths in predictions.items():
        for cancer, folds in sorted(read_test_folds(paths).items()):
            res = permutation_null_c(_arrays(folds), settings.chance_permutations, [settings.seed, _crc(cancer), _crc(method)])
            rows.append({"method": method, "cancer": cancer, "c_index_mean": res.observed, "folds": len(folds),
                         "null_mean": res.null_mean, "null_sd": res.null_sd, "p_above": res.p_above, "p_below": res.p_below,
                         "n_perm": res.n_perm, "below_chance": bool(res.p_below < settings.below_chance_p)})
    return pd.DataFrame(rows, columns=COLUMNS["chance"])


def compare_table(predictions: Mapping[str, Sequence[str | Path]], settings: StatsSettings,
                  chance: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (method, cancer) other than the reference: paired bootstrap of C(method) − C(own expert).

    Both methods' fold k must hold the same test patients (they share the cancer's split).
    ``chance`` (``chance_table``) supplies each method's below-chance flag.
    """
    if REFERENCE not in predictions:
        raise ValueError(f"the comparisons need the '{REFERENCE}' predictions (the cancers' own experts)")
    ref = read_test_folds(predictions[REFERENCE])
    flags = {} if chance is None else {(r.method, r.cancer): bool(r.below_chance) for r in chance.itertuples()}
    rows = []
    for method, paths in predictions.items():
        if method == REFERENCE:
            continue
        for cancer, folds in sorted(read_test_folds(paths).items()):
            if cancer not in ref or sorted(ref[cancer]) != sorted(folds):
                raise ValueError(f"{method} {cancer}: folds {sorted(folds)} but the expert has {sorted(ref.get(cancer, {}))}")
            for k in folds:
                if list(folds[k]["patient_id"]) != list(ref[cancer][k]["patient_id"]):
                    raise ValueError(f"{method} {cancer} fold {k}: test patients differ from the expert's; rerun it on the same split")
            res = paired_bootstrap_delta(_arrays(ref[cancer]), _arrays(folds), settings.n_boot, [settings.seed, _crc(cancer)],
                                         settings.level)
            rows.append({"method": method, "reference": REFERENCE, "cancer": cancer, "delta": res.delta, "ci_low": res.low,
                         "ci_high": res.high, "p_value": res.p_value, "n_boot_valid": res.n_valid, "level": settings.level,
                         "below_chance": flags.get((method, cancer), False)})
    return pd.DataFrame(rows, columns=COLUMNS["compare"])


def matrix_cells(split: pd.DataFrame, risks: Mapping[tuple[str, int], np.ndarray]) -> dict[str, list]:
    """Per source: (time, event, [risk of each source fold]) on each of the target's test folds, in fold order.

    As in the zero-shot matrix: the target's own experts score only their own test fold.
    ``risks`` rows align with ``split``.
    """
    target = str(split["cancer"].iloc[0])
    times, events, folds = split["time"].to_numpy(float), split["event"].to_numpy(float), split["fold"].to_numpy(int)
    cells: dict[str, list] = {}
    for source in sorted({s for s, _ in risks}):
        groups = []
        for tfold in sorted(np.unique(folds)):
            test = folds == tfold
            rs = [r[test] for (s, k), r in sorted(risks.items()) if s == source and (s != target or k == tfold)]
            if rs:
                groups.append((times[test], events[test], rs))
        cells[source] = groups
    return cells


def matrix_ci_table(cells_by_target: Mapping[str, Mapping[str, list]], settings: StatsSettings) -> pd.DataFrame:
    """Per (source, target) cell: mean C over fold pairs, its bootstrap CI (each target fold resampled once
    for all source folds) and the below-chance flag (CI wholly under 0.5)."""
    rows = []
    for target, cells in sorted(cells_by_target.items()):
        for source, groups in sorted(cells.items()):
            ci = mean_c_bootstrap_ci(groups, settings.n_boot, [settings.seed, _crc(target)], settings.level)
            rows.append({"source": source, "target": target, "c_index_mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                         "n_boot_valid": ci.n_valid, "level": settings.level, "below_chance": bool(ci.high < 0.5)})
    return pd.DataFrame(rows, columns=COLUMNS["matrix_ci"])


def retrained_summary(retrained: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """Per (method, cancer): the retrained null of the mean-over-folds C (one value per permutation) against
    the observed C of ``chance``: null mean, sd and one-sided p-values."""
    observed = {(r.method, r.cancer): r.c_index_mean for r in chance.itertuples()}
    rows = []
    for (method, cancer), g in retrained.groupby(["method", "cancer"], sort=True):
        null = g.groupby("permutation")["c_index_test"].mean().to_numpy(float)  # pooled like the reported C
        res = pooled_null(float(observed.get((method, cancer), np.nan)), null)
        rows.append({"method": method, "cancer": cancer, "retrained_n": res.n_perm, "retrained_mean": res.null_mean,
                     "retrained_sd": res.null_sd, "retrained_p_above": res.p_above, "retrained_p_below": res.p_below,
                     "retrained_null_folds": int(g["null"].astype(bool).sum())})
    return pd.DataFrame(rows, columns=["method", "cancer", "retrained_n", "retrained_mean", "retrained_sd",
                                       "retrained_p_above", "retrained_p_below", "retrained_null_folds"])
