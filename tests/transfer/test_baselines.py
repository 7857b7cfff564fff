"""HistoKT-style baselines: source chosen on the training fold only, fine-tuning modes, parameter averaging."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from support.transfer_cohort import (  # the session fixture `cohort` comes from conftest.py
    CPU,
    FOLDS,
    poison_test_labels,
)

from wsikt.cohort.splits import inner_folds
from wsikt.mil import pad_bags
from wsikt.survival.bins import assign_bins
from wsikt.training.experts import load_expert, run_expert_fold
from wsikt.training.gate import life_table_logits
from wsikt.training.settings import NullGate, TrainSettings
from wsikt.transfer.baseline_settings import BaselineSettings
from wsikt.transfer.baselines import (
    choose_source,
    fine_tune,
    lr_key,
    merge_experts,
    run_baseline_fold,
    source_head,
    source_pool,
)
from wsikt.transfer.embedding_cache import read_embeddings
from wsikt.transfer.matrix import selection_matrix


def _run(cohort, tmp_path, target, fold, settings, split=None):
    split = cohort.splits[target] if split is None else split
    d = tmp_path / settings.method
    m = run_baseline_fold(split, cohort.caches[target], target, fold, cohort.settings, settings, d / "model.pt",
                          d / "predictions.tsv", d / "metrics.json", CPU, bags=cohort.bags[target], checkpoints=cohort.experts)
    return m, d


def test_inner_split_covers_training_patients_only_and_ignores_test_labels(cohort):
    split = cohort.splits["SHA"]
    for fold in range(FOLDS):
        inner = inner_folds(split, fold, 3, seed=42)
        train_ids = set(split.loc[split["fold"] != fold, "patient_id"])
        assert set(split.loc[inner.index, "patient_id"]) == train_ids
        assert sorted(inner.unique()) == [0, 1, 2]
        pd.testing.assert_series_equal(inner, inner_folds(poison_test_labels(split, fold), fold, 3, seed=42))


def test_source_choice_never_reads_the_test_fold(cohort):
    split, fold = cohort.splits["SHB"], 1
    settings = BaselineSettings(method="head", inner_folds=3, lr_grid=())
    sources = source_pool(cohort.caches["SHB"], split, "SHB", fold, "all", 0.6)
    assert sources == ["NOI", "REV", "SHA"]
    emb = read_embeddings(cohort.caches["SHB"], [(s, fold) for s in sources], list(split["patient_id"]))
    chosen, lr, scores = choose_source("head", sources, split, fold, cohort.settings, settings, CPU, emb=emb)
    poisoned = poison_test_labels(split, fold)
    assert choose_source("head", sources, poisoned, fold, cohort.settings, settings, CPU, emb=emb) == (chosen, lr, scores)
    assert lr == cohort.settings.lr  # an empty grid: experts.lr
    best = {s: v[lr_key(lr)] for s, v in scores.items()}
    assert set(scores) == set(sources) and best[chosen] == max(best.values())
    # a retrained head can read the planted signal from any expert that encodes it (REV's, flipped, too)
    assert best[chosen] > 0.6, scores
    # positive pool (training-only zero-shot C) is also blind to the test fold
    assert source_pool(cohort.caches["SHB"], split, "SHB", fold, "positive", 0.6) == \
        source_pool(cohort.caches["SHB"], poisoned, "SHB", fold, "positive", 0.6) == ["SHA"]


@pytest.mark.parametrize("method", ["head", "mlp", "all"])
def test_fine_tuning_writes_expert_style_outputs(cohort, tmp_path, method):
    settings = BaselineSettings(method=method, inner_folds=2, candidates="positive", threshold=0.6, lr_grid=())
    metrics, d = _run(cohort, tmp_path, "SHA", 0, settings)
    preds = pd.read_csv(d / "predictions.tsv", sep="\t")
    ref = pd.read_csv(cohort.experts[("SHA", 0)].parent / "predictions.tsv", sep="\t")
    assert list(preds.columns) == list(ref.columns) and (preds["split"] == ref["split"]).all()
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["source_expert"] == "SHB/fold0" and saved["model"] == f"baseline_{method}"
    assert np.isfinite(saved["c_index_test"]) and metrics["c_index_train"] > 0.6
    state = torch.load(d / "model.pt", weights_only=True)["state_dict"]
    source = load_expert(cohort.experts[("SHB", 0)], CPU).state_dict()
    if method == "all":  # every layer moved away from the source expert
        trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
        assert trunk.keys() == source.keys()
        assert any(not torch.equal(trunk[k], source[k]) for k in source if source[k].is_floating_point())
    else:  # only a new head is saved: the trunk stays the frozen source expert
        assert not any(k.startswith("trunk.") for k in state)


def test_head_on_cached_embeddings_equals_head_on_the_frozen_trunk(cohort, tmp_path):
    settings = BaselineSettings(method="head", inner_folds=2, candidates="positive", lr_grid=())
    _, d = _run(cohort, tmp_path, "SHA", 2, settings)
    head = torch.nn.Linear(512, 4)
    head.load_state_dict(torch.load(d / "model.pt", weights_only=True)["state_dict"])
    trunk = load_expert(cohort.experts[("SHB", 2)], CPU)
    with torch.no_grad():
        emb = trunk(*pad_bags([torch.from_numpy(cohort.bags["SHA"][5])]))["embedding"]
        surv = torch.cumprod(1 - torch.sigmoid(head(emb)), 1).numpy()[0]
    preds = pd.read_csv(d / "predictions.tsv", sep="\t")
    np.testing.assert_allclose(preds.loc[5, [f"S_{k}" for k in range(4)]].to_numpy(float), surv, rtol=1e-4)


def test_merge_is_the_mean_of_the_experts_parameters(cohort, tmp_path):
    paths = [cohort.experts[("SHB", 0)], cohort.experts[("NOI", 0)]]
    merged = merge_experts(paths, CPU).state_dict()
    a, b = (load_expert(p, CPU).state_dict() for p in paths)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(merged[k], (a[k] + b[k]) / 2)
    metrics, d = _run(cohort, tmp_path, "SHA", 0, BaselineSettings(method="merge", merge_set="all"))
    assert metrics["merged_sources"] == ["NOI", "REV", "SHB"]
    assert len(pd.read_csv(d / "predictions.tsv", sep="\t")) == len(cohort.splits["SHA"])


def test_merge_refuses_experts_of_different_architectures(cohort, tmp_path):
    split = cohort.splits["NOI"]
    other = tmp_path / "mean.pt"
    run_expert_fold(split, cohort.bags["NOI"], 0, TrainSettings(model="mean", epochs=1, n_bins=4, bin_width_days=400.0),
                    other, tmp_path / "p.tsv", tmp_path / "m.json", CPU)
    with pytest.raises(ValueError, match="one architecture"):
        merge_experts([cohort.experts[("SHB", 0)], other], CPU)


def test_lr_is_chosen_on_the_training_fold_and_recorded(cohort, tmp_path):
    settings = BaselineSettings(method="head", inner_folds=2, candidates="positive", lr_grid=(2e-3, 1e-4))
    metrics, d = _run(cohort, tmp_path, "SHA", 1, settings)
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["lr"] in (2e-3, 1e-4) and saved["lr_grid"] == [2e-3, 1e-4]
    per_lr = saved["inner_c_index_per_lr"][saved["source"]]
    assert set(per_lr) == {"0.002", "0.0001"} and per_lr[lr_key(saved["lr"])] == max(per_lr.values())
    poisoned, _ = _run(cohort, tmp_path / "p", "SHA", 1, settings, split=poison_test_labels(cohort.splits["SHA"], 1))
    assert poisoned["lr"] == metrics["lr"] and poisoned["inner_c_index_per_lr"] == metrics["inner_c_index_per_lr"]


@pytest.mark.parametrize("head_init", ["new", "source"])
def test_head_init_new_is_random_and_source_copies_the_source_classifier(cohort, head_init):
    split, fold = cohort.splits["SHA"], 0
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    train_idx = np.flatnonzero(split["fold"] != fold)
    emb = read_embeddings(cohort.caches["SHA"], [("SHB", fold)], list(split["patient_id"]))
    untrained = dataclasses.replace(cohort.settings, epochs=0)
    module, edges, _ = fine_tune("head", ("SHB", fold), train_idx, times, events, untrained,
                                 BaselineSettings(method="head", head_init=head_init), CPU, emb=emb, checkpoints=cohort.experts)
    src = source_head(cohort.experts[("SHB", fold)], edges)
    assert src is not None  # the fixture's fixed-width bins match across cancers
    assert torch.equal(module.weight, src["weight"]) == (head_init == "source")


def test_merge_signal_pool_leaves_out_reversed_and_chance_sources_on_training_data_only(cohort):
    split, fold = cohort.splits["SHA"], 2
    sel = selection_matrix(cohort.caches["SHA"], split, "SHA", fold).set_index("source")["c_index_mean"]
    pool = source_pool(cohort.caches["SHA"], split, "SHA", fold, "signal", 0.6)
    assert pool == sorted(s for s in sel.index if sel[s] > 0.5) and "REV" not in pool and "SHB" in pool
    assert source_pool(cohort.caches["SHA"], poison_test_labels(split, fold), "SHA", fold, "signal", 0.6) == pool


def test_merge_tune_deep_tunes_the_averaged_experts(cohort, tmp_path):
    settings = BaselineSettings(method="merge_tune", inner_folds=2, merge_set="signal", lr_grid=())
    metrics, d = _run(cohort, tmp_path, "SHA", 0, settings)
    pool = metrics["merged_sources"]
    assert metrics["source_expert"] == f"merge({','.join(pool)})/fold0" and metrics["lr"] == cohort.settings.lr
    state = torch.load(d / "model.pt", weights_only=True)["state_dict"]
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    average = merge_experts([cohort.experts[(s, 0)] for s in pool], CPU).state_dict()
    assert trunk.keys() == average.keys()
    assert any(not torch.equal(trunk[k], average[k]) for k in average if average[k].is_floating_point())
    assert np.isfinite(metrics["c_index_test"])


@pytest.mark.parametrize("method", ["head", "merge"])
def test_null_gate_makes_a_no_signal_baseline_the_training_life_table(cohort, tmp_path, method):
    split, fold = cohort.splits["NOI"], 1
    strict = BaselineSettings(method=method, inner_folds=2, lr_grid=(), null_gate=NullGate(inner_folds=2, min_c=0.99))
    metrics, d = _run(cohort, tmp_path, "NOI", fold, strict)
    assert metrics["null"] and metrics["null_gate"]["null"] and metrics["null_gate"]["inner_c"] <= 0.99
    preds = pd.read_csv(d / "predictions.tsv", sep="\t")
    surv = preds.filter(like="S_").to_numpy()
    assert np.allclose(surv, surv[0]) and metrics["c_index_test"] == 0.5
    train = (split["fold"] != fold).to_numpy()  # the curve is the training fold's life table
    edges = np.asarray(torch.load(d / "model.pt", weights_only=True)["inner_edges"])
    bins = assign_bins(split["time"].to_numpy(float), edges)
    km = np.cumprod(1 - torch.sigmoid(life_table_logits(bins[train], split["event"].to_numpy()[train], len(edges) + 1)).numpy())
    np.testing.assert_allclose(surv[0], km, rtol=1e-5)
    # the gate reads training patients only; a lenient one keeps the model
    poisoned, _ = _run(cohort, tmp_path / "p", "NOI", fold, strict, split=poison_test_labels(split, fold))
    assert poisoned["null_gate"] == metrics["null_gate"]
    kept, _ = _run(cohort, tmp_path / "k", "NOI", fold, dataclasses.replace(strict, null_gate=NullGate(inner_folds=3, min_c=0.0)))
    assert kept["null_gate"]["inner_folds"] == 3 and kept["null"] == (not kept["null_gate"]["inner_c"] > 0.0)


@pytest.mark.parametrize("method", ["merge", "merge_tune"])
def test_an_empty_signal_pool_is_the_null_model(cohort, tmp_path, method):
    """On REV every other expert is reversed or chance on the training patients: nothing to combine."""
    assert source_pool(cohort.caches["REV"], cohort.splits["REV"], "REV", 0, "signal", 0.6) == []
    metrics, d = _run(cohort, tmp_path, "REV", 0, BaselineSettings(method=method, merge_set="signal", lr_grid=()))
    assert metrics["null"] and metrics["null_reason"] == "empty merge_set pool" and metrics["c_index_test"] == 0.5
    surv = pd.read_csv(d / "predictions.tsv", sep="\t").filter(like="S_").to_numpy()
    assert np.allclose(surv, surv[0])
