"""HistoKT's fine-tuned transfer matrix: every source expert fine-tuned on every target (head and all).

Beside the zero-shot matrix (matrix.tsv), each off-diagonal cell is the test C of the fold-k expert
of a source, fine-tuned (``head``: a new head on the frozen expert; ``all``: deep tuning) on the
target's training fold k, with the learning rate picked from ``baselines.lr_grid`` by inner CV on
that training fold. This module owns both files: the per-(method, target, fold) cells TSV and the
matrix TSV (method, source, target, c_index_mean, c_index_sd, n). No null gate: a cell is the raw
fine-tuned model, as in HistoKT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from wsikt.core.io import write_tsv
from wsikt.survival.bins import risk_from_survival
from wsikt.survival.metrics import harrell_c
from wsikt.training.settings import TrainSettings
from wsikt.transfer.baseline_settings import BaselineSettings, needs_bags
from wsikt.transfer.baselines import choose_source, fine_tune, predict_baseline
from wsikt.transfer.embedding_cache import ExpertKey, cache_keys, read_embeddings
from wsikt.transfer.matrix import transfer_matrix

MATRIX_METHODS = ("head", "all")  # HistoKT's fine tuning (frozen encoder) and deep tuning
CELL_COLUMNS = ["method", "source", "source_fold", "target", "target_fold", "lr", "c_index", "n", "events"]


def finetuned_cells(
    split: pd.DataFrame, cache_h5: str | Path, target: str, fold: int, train: TrainSettings, settings: BaselineSettings,
    device: torch.device, checkpoints: dict[ExpertKey, str | Path], bags: list | None = None,
) -> pd.DataFrame:
    """One row per other source: its fold-``fold`` expert fine-tuned by ``settings.method`` on ``target``'s fold.

    The learning rate is chosen by inner CV on the training patients (when the grid has more than
    one); the C is on the test patients of outer fold ``fold``.
    """
    if settings.method not in MATRIX_METHODS:
        raise ValueError(f"transfer.finetuned method '{settings.method}' must be one of {', '.join(MATRIX_METHODS)}")
    if needs_bags(settings.method) and bags is None:
        raise ValueError(f"the fine-tuned matrix's '{settings.method}' cells need the target's bags")
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    test = (split["fold"] == fold).to_numpy()
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    sources = sorted({s for s, k in cache_keys(cache_h5) if s != target and k == fold})
    data: dict = {"bags": bags, "checkpoints": checkpoints}
    if not needs_bags(settings.method):
        data = {"emb": read_embeddings(cache_h5, [(s, fold) for s in sources], list(split["patient_id"].astype(str))),
                "checkpoints": checkpoints}
    rows = []
    for source in sources:
        lr = settings.grid(train)[0]
        if len(settings.grid(train)) > 1:
            _, lr, _ = choose_source(settings.method, [source], split, fold, train, settings, device, **data)
        module, _, _ = fine_tune(settings.method, (source, fold), train_idx, times, events, train, settings, device, lr=lr, **data)
        risk = risk_from_survival(predict_baseline(settings.method, module, (source, fold), test_idx, device,
                                                   data.get("emb"), data.get("bags")))
        rows.append({"method": settings.method, "source": source, "source_fold": fold, "target": target, "target_fold": fold,
                     "lr": lr, "c_index": harrell_c(times[test], events[test], risk), "n": int(test.sum()),
                     "events": int(events[test].sum())})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def write_cells(cells: pd.DataFrame, path: str | Path) -> None:
    """Write one (method, target, fold)'s cells TSV atomically."""
    write_tsv(cells[CELL_COLUMNS], path)


def read_cells(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every cells TSV, concatenated."""
    frames = [pd.read_csv(p, sep="\t", dtype={"source": str, "target": str}) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CELL_COLUMNS)


def finetuned_matrix(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd test C per (method, source, target) over the target's folds (the zero-shot matrix's layout, plus method)."""
    parts = [transfer_matrix(g).assign(method=m) for m, g in cells.groupby("method", sort=True)]
    columns = ["method", "source", "target", "c_index_mean", "c_index_sd", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def read_finetuned_matrix(path: str | Path) -> pd.DataFrame:
    """The matrix TSV written by the ``finetuned_matrix`` rule."""
    return pd.read_csv(path, sep="\t", dtype={"method": str, "source": str, "target": str})
