"""The opt-in retrained null (config key stats.permutations): the whole fold pipeline refit on permuted labels.

For permutation p and outer fold k, the training patients' (time, event) pairs are shuffled among
themselves; the test fold keeps its true labels and every fold keeps its patients. The expert
(with its null gate) is trained exactly as ``run_expert_fold`` trains it, and, for ROUPKT targets,
ROUPKT is trained the same way over the real experts' cached embeddings (the source experts never
saw this cancer; the self expert's embeddings come from the real labels but its permuted-label
router and head cannot use them to fit the true test labels). The test C of each refit gives a
null that keeps what the cheap test-fold shuffle loses: the bias of small outcome-stratified folds
and of fitting noise.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from wsikt.cohort.bags import Bag
from wsikt.formats.stats_tables import COLUMNS
from wsikt.training.experts import run_expert_fold
from wsikt.training.settings import NullGate, TrainSettings
from wsikt.transfer.roupkt import RoupktSettings, run_roupkt_fold

log = logging.getLogger("wsikt.stats.retrain")


def permute_training_labels(split: pd.DataFrame, fold: int, rng: np.random.Generator) -> pd.DataFrame:
    """``split`` with the (time, event) pairs of outer fold ``fold``'s training patients shuffled among them."""
    out = split.copy()
    train = np.flatnonzero((out["fold"] != fold).to_numpy())
    labels = out[["time", "event"]].to_numpy()
    out.iloc[train, out.columns.get_indexer(["time", "event"])] = labels[rng.permutation(train)]
    out["event"] = out["event"].astype(int)
    return out


def retrained_null(
    split: pd.DataFrame, bags: Sequence[Bag], n_perm: int, train: TrainSettings, gate: NullGate, device: torch.device,
    seed: int, roupkt: RoupktSettings | None = None, cache_h5: str | Path | None = None,
) -> pd.DataFrame:
    """Test C of the expert (and ROUPKT, given ``roupkt`` and ``cache_h5``) refit on ``n_perm`` label permutations
    inside every training fold: one row per (method, permutation, fold), ``stats_tables`` 'retrained_null'."""
    cancer = str(split["cancer"].iloc[0])
    folds = sorted(int(k) for k in split["fold"].unique())
    rows = []
    with tempfile.TemporaryDirectory(prefix="wsikt-null-") as tmp:
        d = Path(tmp)
        for p in range(n_perm):
            for k in folds:
                permuted = permute_training_labels(split, k, np.random.default_rng([seed, p, k]))
                m = run_expert_fold(permuted, bags, k, train, d / "e.pt", d / "e.tsv", d / "e.json", device, gate)
                rows.append({"method": "expert", "cancer": cancer, "permutation": p, "fold": k,
                             "c_index_test": m["c_index_test"], "null": bool(m.get("null", False))})
                if roupkt is not None and cache_h5 is not None:
                    r = run_roupkt_fold(permuted, list(bags), cache_h5, cancer, k, train, roupkt, d / "r.pt", d / "r.tsv",
                                        d / "router.tsv", d / "r.json", device)
                    rows.append({"method": "roupkt", "cancer": cancer, "permutation": p, "fold": k,
                                 "c_index_test": r["c_index_test"], "null": bool(r.get("null", False))})
            log.info("%s permutation %d of %d refit on every fold", cancer, p + 1, n_perm)
    return pd.DataFrame(rows, columns=COLUMNS["retrained_null"])
