"""HistoKT-style baselines: source chosen on the training fold only, fine-tuning modes, parameter averaging."""

from __future__ import annotations

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
from wsikt.training.experts import load_expert, run_expert_fold
from wsikt.training.settings import TrainSettings
from wsikt.transfer.baselines import (
    BaselineSettings,
    choose_source,
    merge_experts,
    run_baseline_fold,
    lr_key,
    source_pool,
)
from wsikt.transfer.embedding_cache import read_embeddings


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
