"""Cross-cancer transfer: the zero-shot matrix and the training-only source selection.

Zero-shot: every source expert, unchanged, ranks every target's test patients (risks come from
the embedding cache, written in the same forward pass). Selection for ROUPKT and the baselines
uses the same experts' C on the target's *training* patients of an outer fold only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from wsikt.survival.metrics import harrell_c
from wsikt.transfer.embedding_cache import ExpertKey, read_risks

POSITIVE_THRESHOLDS = (0.5, 0.6)


def zero_shot_rows(risks: dict[ExpertKey, np.ndarray], split: pd.DataFrame, target: str) -> pd.DataFrame:
    """C-index per (source, source fold, target fold) on the target's test patients.

    ``risks`` rows align with ``split`` (patient_id, time, event, fold). For source == target only
    the fold-matched expert is scored on its own test fold: it never saw those patients.
    """
    times, events, folds = split["time"].to_numpy(float), split["event"].to_numpy(int), split["fold"].to_numpy(int)
    rows = []
    for (source, sfold), risk in sorted(risks.items()):
        for tfold in sorted(np.unique(folds[folds >= 0])):  # −1: trains in every fold, never tested
            if source == target and tfold != sfold:
                continue
            test = folds == tfold
            rows.append({"source": source, "source_fold": int(sfold), "target": target, "target_fold": int(tfold),
                         "c_index": harrell_c(times[test], events[test], risk[test]),
                         "n": int(test.sum()), "events": int(events[test].sum())})
    return pd.DataFrame(rows, columns=["source", "source_fold", "target", "target_fold", "c_index", "n", "events"])


def training_rows(risks: dict[ExpertKey, np.ndarray], split: pd.DataFrame, target: str) -> pd.DataFrame:
    """C-index per (source, source fold, target fold) on the target's TRAINING patients of that fold.

    The selection matrix: nothing of the target's test fold enters. The target's own experts are
    left out (they were trained on these patients).
    """
    times, events, folds = split["time"].to_numpy(float), split["event"].to_numpy(int), split["fold"].to_numpy(int)
    rows = []
    for (source, sfold), risk in sorted(risks.items()):
        if source == target:
            continue
        for tfold in sorted(np.unique(folds[folds >= 0])):  # −1: trains in every fold, never tested
            train = folds != tfold
            rows.append({"source": source, "source_fold": int(sfold), "target": target, "target_fold": int(tfold),
                         "c_index": harrell_c(times[train], events[train], risk[train]),
                         "n": int(train.sum()), "events": int(events[train].sum())})
    return pd.DataFrame(rows, columns=["source", "source_fold", "target", "target_fold", "c_index", "n", "events"])


def transfer_matrix(long: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd C-index per (source, target) over all (source fold, target fold) pairs; diagonal = cancer-specific."""
    g = long.groupby(["source", "target"])["c_index"]
    return g.agg(c_index_mean="mean", c_index_sd="std", n=lambda s: int(s.notna().sum())).reset_index()


def positive_sources(matrix: pd.DataFrame, target: str, threshold: float) -> list[str]:
    """Sources other than ``target`` whose mean C on ``target`` is above ``threshold``, best first.

    Strictly above: a null expert (one risk for every patient) scores exactly 0.5 and transfers nothing.
    """
    g = matrix[(matrix["target"] == target) & (matrix["source"] != target)]
    g = g[g["c_index_mean"] > threshold].sort_values(["c_index_mean", "source"], ascending=[False, True])
    return list(g["source"])


def positive_table(matrix: pd.DataFrame, thresholds: Sequence[float] = POSITIVE_THRESHOLDS) -> pd.DataFrame:
    """One row per target: the positive-transfer sources at each threshold."""
    rows = []
    for target in sorted(matrix["target"].unique()):
        row: dict = {"target": target}
        for thr in thresholds:
            hit = positive_sources(matrix, target, thr)
            row[f"n_above_{thr}"] = len(hit)
            row[f"sources_above_{thr}"] = ",".join(hit)
        rows.append(row)
    return pd.DataFrame(rows)


def selection_matrix(cache_h5: str | Path, split: pd.DataFrame, target: str, fold: int) -> pd.DataFrame:
    """Training-only matrix for one outer fold: each other source's mean C on the fold's training patients.

    Reads label-free risks from the embedding cache and only the training patients' labels.
    """
    train = split[split["fold"] != fold]
    risks = read_risks(cache_h5, patient_ids=list(train["patient_id"].astype(str)))
    times, events = train["time"].to_numpy(float), train["event"].to_numpy(int)
    rows = [{"source": s, "source_fold": int(k), "target": target, "target_fold": int(fold),
             "c_index": harrell_c(times, events, r)} for (s, k), r in sorted(risks.items()) if s != target]
    return transfer_matrix(pd.DataFrame(rows, columns=["source", "source_fold", "target", "target_fold", "c_index"]))
