"""HistoKT's fine-tuned source × target matrix: every other source fine-tuned on each target's training fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.transfer_cohort import (  # the session fixture `cohort` comes from conftest.py
    CPU,
    FOLDS,
    poison_test_labels,
)

from wsikt.survival.metrics import harrell_c
from wsikt.transfer.baseline_settings import BaselineSettings
from wsikt.transfer.finetuned_matrix import finetuned_cells, finetuned_matrix, read_cells, write_cells


def _cells(cohort, target, fold, settings, split=None):
    split = cohort.splits[target] if split is None else split
    return finetuned_cells(split, cohort.caches[target], target, fold, cohort.settings, settings, CPU, cohort.experts,
                           bags=cohort.bags[target])


def test_head_cells_cover_every_other_source_with_an_lr_chosen_on_training_data(cohort):
    settings = BaselineSettings(method="head", inner_folds=2, lr_grid=(2e-3, 1e-4))
    cells = _cells(cohort, "SHA", 0, settings)
    assert list(cells["source"]) == ["NOI", "REV", "SHB"] and (cells["target"] == "SHA").all()
    assert set(cells["lr"]) <= {2e-3, 1e-4} and (cells["n"] == (cohort.splits["SHA"]["fold"] == 0).sum()).all()
    assert cells.set_index("source").at["SHB", "c_index"] > 0.6  # the planted shared signal transfers
    poisoned = _cells(cohort, "SHA", 0, settings, split=poison_test_labels(cohort.splits["SHA"], 0))
    assert list(poisoned["lr"]) == list(cells["lr"])  # the lr never reads the test fold (its C does)


def test_all_cells_and_the_matrix_is_the_mean_over_folds(cohort, tmp_path):
    settings = BaselineSettings(method="all", inner_folds=2, lr_grid=())
    paths = []
    for fold in range(FOLDS):
        paths.append(tmp_path / f"fold{fold}.tsv")
        write_cells(_cells(cohort, "SHB", fold, settings), paths[-1])
    cells = read_cells(paths)
    assert len(cells) == 3 * FOLDS and (cells["lr"] == cohort.settings.lr).all()
    matrix = finetuned_matrix(cells).set_index(["method", "source", "target"])
    for source in ("NOI", "REV", "SHA"):
        c = cells.loc[cells["source"] == source, "c_index"]
        assert matrix.at[("all", source, "SHB"), "c_index_mean"] == pytest.approx(c.mean())
        assert matrix.at[("all", source, "SHB"), "n"] == FOLDS


def test_cell_c_is_harrell_c_of_the_test_fold(cohort):
    from wsikt.transfer.baselines import fine_tune, predict_baseline
    from wsikt.transfer.embedding_cache import read_embeddings

    split, fold = cohort.splits["REV"], 2
    settings = BaselineSettings(method="head", inner_folds=2, lr_grid=())
    cells = _cells(cohort, "REV", fold, settings).set_index("source")
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    test = (split["fold"] == fold).to_numpy()
    emb = read_embeddings(cohort.caches["REV"], [("SHA", fold)], list(split["patient_id"]))
    module, _, _ = fine_tune("head", ("SHA", fold), np.flatnonzero(~test), times, events, cohort.settings, settings, CPU,
                             emb=emb, checkpoints=cohort.experts)
    risk = -predict_baseline("head", module, ("SHA", fold), np.flatnonzero(test), CPU, emb=emb).sum(1)
    assert cells.at["SHA", "c_index"] == pytest.approx(harrell_c(times[test], events[test], risk))


def test_only_head_and_all_make_matrix_cells(cohort):
    with pytest.raises(ValueError, match="transfer.finetuned"):
        _cells(cohort, "SHA", 0, BaselineSettings(method="mlp", lr_grid=()))
    assert finetuned_matrix(pd.DataFrame(columns=["method", "source", "source_fold", "target", "target_fold", "c_index"])).empty
