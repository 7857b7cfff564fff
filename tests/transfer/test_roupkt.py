"""ROUPKT: routing hand checks, losses, expert sets chosen on training data only, and one full fold."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from support.transfer_cohort import (  # the session fixture `cohort` comes from conftest.py
    CPU,
    FOLDS,
    poison_test_labels,
)

from wsikt.training.checkpoint import read_checkpoint
from wsikt.training.gate import null_gate
from wsikt.training.settings import NullGate
from wsikt.transfer.embedding_cache import parse_key, stack_embeddings
from wsikt.transfer.roupkt import (
    ROUPKT,
    RoupktSettings,
    balance_loss,
    load_roupkt,
    predict_roupkt,
    roupkt_experts,
    roupkt_fit_predict,
    route,
    run_roupkt_fold,
    z_loss,
)


def test_route_keeps_topk_probabilities_without_renormalising():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    r = route(logits, 2)
    z = sum(math.exp(v) for v in (2.0, 0.0, 1.0, -1.0))
    assert r["topk_idx"].tolist() == [[0, 2]]
    np.testing.assert_allclose(r["topk_weight"].numpy(), [[math.exp(2) / z, math.exp(1) / z]], rtol=1e-6)
    np.testing.assert_allclose(r["dense"].numpy(), [[math.exp(2) / z, 0, math.exp(1) / z, 0]], rtol=1e-6)
    assert r["dense"].sum() < 1  # not renormalised
    assert route(logits, 9)["topk_idx"].shape == (1, 4)  # k larger than E: every expert


def test_roupkt_forward_matches_a_hand_computation():
    """One-patch bag → attention 1 → router embedding = ReLU(fc bias); gate column 0 gives the logits."""
    torch.manual_seed(0)
    model = ROUPKT(in_dim=3, n_experts=3, n_bins=2, topk=2, emb_dim=512, dropout=0.0).eval()
    fc = model.router.abmil.fc[0]
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.bias[0] = 1.0
        model.router.gate.weight.zero_()
        model.router.gate.weight[:, 0] = torch.tensor([0.5, -1.0, 1.5])
        for a in model.adapters:
            a[0].weight.copy_(torch.eye(512))
            a[0].bias.zero_()
        model.head.weight.zero_()
        model.head.weight[0, :2] = torch.tensor([1.0, 2.0])
        model.head.bias.copy_(torch.tensor([0.1, -0.2]))
    emb = torch.zeros(1, 3, 512)
    emb[0, 0, :2] = torch.tensor([1.0, 0.0])
    emb[0, 1, :2] = torch.tensor([5.0, 5.0])
    emb[0, 2, :2] = torch.tensor([0.0, 3.0])
    with torch.no_grad():
        out = model(torch.randn(1, 1, 3), torch.ones(1, 1, dtype=torch.bool), emb)
    z = math.exp(0.5) + math.exp(-1.0) + math.exp(1.5)
    w0, w2 = math.exp(0.5) / z, math.exp(1.5) / z
    assert out["topk_idx"].tolist() == [[2, 0]]
    np.testing.assert_allclose(out["topk_weight"].numpy(), [[w2, w0]], rtol=1e-5)
    np.testing.assert_allclose(out["embedding"][0, :2].numpy(), [w0 * 1.0, w2 * 3.0], rtol=1e-5)  # expert 1 unused
    np.testing.assert_allclose(out["logits"].numpy(), [[w0 * 1.0 + 2 * w2 * 3.0 + 0.1, -0.2]], rtol=1e-5)


def test_balance_and_z_losses_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    # top-1 shares (2/3, 0, 1/3), mean probabilities (1.4/3, 0.6/3, 1.0/3)
    assert balance_loss(probs, "switch").item() == pytest.approx(3 * (2 / 3 * 1.4 / 3 + 1 / 3 * 1.0 / 3))
    assert balance_loss(probs, "top1").item() == pytest.approx((0.7 + 0.6 + 0.8) / 3)
    uniform = torch.full((4, 3), 1 / 3)
    assert balance_loss(uniform, "switch").item() == pytest.approx(1.0)  # the Switch minimum
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2), math.log(math.e + math.e ** 2)]
    assert z_loss(logits).item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2, rel=1e-6)


def test_settings_name_the_config_key():
    with pytest.raises(ValueError, match="roupkt.expert_set"):
        RoupktSettings(expert_set="best")
    with pytest.raises(ValueError, match="roupkt.topk"):
        RoupktSettings(topk=0)
    with pytest.raises(ValueError, match="roupkt.source_folds"):
        RoupktSettings(source_folds="first")
    with pytest.raises(ValueError, match="roupkt.source_folds"):
        RoupktSettings(source_folds=-1)
    assert (RoupktSettings().balance, RoupktSettings().source_folds) == ("top1", 0)  # CROPKT's code and config
    with pytest.raises(ValueError, match="roupkt.null_gate.inner_folds"):
        RoupktSettings.from_config({"null_gate": {"inner_folds": 1}})
    gated = RoupktSettings.from_config({"targets": "all", "topk": 3, "null_gate": {"inner_folds": 3, "min_c": 0.6}})
    assert gated.null_gate == NullGate(3, 0.6) and RoupktSettings.from_config({}).null_gate.inner_folds == 0


def test_expert_sets_self_first_and_positive_from_training_data_only(cohort):
    split = cohort.splits["SHA"]
    every = roupkt_experts(cohort.caches["SHA"], split, "SHA", 1, RoupktSettings())  # CROPKT: fold 0 of every source
    assert every == [("SHA", 1), ("NOI", 0), ("REV", 0), ("SHB", 0)]
    matched = roupkt_experts(cohort.caches["SHA"], split, "SHA", 1, RoupktSettings(source_folds="matched"))
    assert matched == [("SHA", 1), ("NOI", 1), ("REV", 1), ("SHB", 1)]
    assert roupkt_experts(cohort.caches["SHA"], split, "SHA", 0, RoupktSettings(source_folds=2))[1:] == [("NOI", 2), ("REV", 2), ("SHB", 2)]
    with pytest.raises(KeyError, match="roupkt.source_folds"):
        roupkt_experts(cohort.caches["SHA"], split, "SHA", 0, RoupktSettings(source_folds=FOLDS))
    all_folds = roupkt_experts(cohort.caches["SHA"], split, "SHA", 1, RoupktSettings(source_folds="all"))
    assert all_folds[0] == ("SHA", 1) and len(all_folds) == 1 + 3 * FOLDS and ("SHA", 0) not in all_folds
    for fold in range(FOLDS):
        pos = roupkt_experts(cohort.caches["SHA"], split, "SHA", fold, RoupktSettings(expert_set="positive", threshold=0.6, source_folds="matched"))
        assert ("SHB", fold) in pos and ("REV", fold) not in pos
        assert pos == roupkt_experts(cohort.caches["SHA"], poison_test_labels(split, fold), "SHA", fold,
                                     RoupktSettings(expert_set="positive", threshold=0.6, source_folds="matched"))


def test_one_fold_writes_expert_style_predictions_router_usage_and_metrics(cohort, tmp_path):
    split, fold = cohort.splits["SHB"], 2
    out = {k: tmp_path / f for k, f in (("m", "model.pt"), ("p", "predictions.tsv"), ("r", "router.tsv"), ("j", "metrics.json"))}
    settings = RoupktSettings(topk=2, source_folds="matched")
    metrics = run_roupkt_fold(split, cohort.bags["SHB"], cohort.caches["SHB"], "SHB", fold, cohort.settings, settings,
                              out["m"], out["p"], out["r"], out["j"], CPU)
    preds = pd.read_csv(out["p"], sep="\t")
    expert_preds = pd.read_csv(cohort.experts[("SHB", fold)].parent / "predictions.tsv", sep="\t")
    assert list(preds.columns) == list(expert_preds.columns)
    assert (preds["patient_id"] == split["patient_id"]).all() and (preds["split"] == "test").sum() == (split["fold"] == fold).sum()
    routes = pd.read_csv(out["r"], sep="\t")
    names = ["SHB/fold2", "NOI/fold2", "REV/fold2", "SHA/fold2"]
    assert set(routes["expert_1"]) | set(routes["expert_2"]) <= set(names)
    assert (routes["expert_1"] != routes["expert_2"]).all()
    assert (routes["weight_1"] >= routes["weight_2"]).all() and (routes["weight_1"] + routes["weight_2"] < 1).all()
    np.testing.assert_allclose(routes[[f"p_{n}" for n in names]].sum(1), 1.0, rtol=1e-5)
    saved = json.loads(out["j"].read_text())
    assert saved["experts"] == names and saved["self_expert"] == "SHB/fold2" and saved["topk_effective"] == 2
    assert saved["c_index_test"] == pytest.approx(metrics["c_index_test"])
    assert saved["loss_per_epoch"][-1] < saved["loss_per_epoch"][0]
    assert metrics["c_index_train"] > 0.6  # it learns the planted signal through the experts' embeddings
    ckpt = read_checkpoint(out["m"], kind="roupkt")
    assert ckpt.meta["experts"] == names and ckpt.state_dict["router.gate.weight"].shape == (4, 512)
    assert "router.gate.bias" not in ckpt.state_dict
    model, loaded = load_roupkt(out["m"], CPU)  # the saved model reproduces the written predictions and routes
    emb = stack_embeddings(cohort.caches["SHB"], [parse_key(n) for n in loaded], list(split["patient_id"]))
    again = predict_roupkt(model, cohort.bags["SHB"], emb, CPU)
    np.testing.assert_allclose(again["surv"], preds[[c for c in preds if c.startswith("S_")]].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(again["topk_weight"][:, 0], routes["weight_1"], rtol=1e-5)


def test_training_ignores_test_labels(cohort, tmp_path):
    """Poisoned test-fold labels: identical router and training-patient predictions."""
    split, fold = cohort.splits["SHA"], 0
    tables = []
    for name, s in (("clean", split), ("poisoned", poison_test_labels(split, fold))):
        d = tmp_path / name
        run_roupkt_fold(s, cohort.bags["SHA"], cohort.caches["SHA"], "SHA", fold, cohort.settings,
                        RoupktSettings(expert_set="positive", threshold=0.5), d / "m.pt", d / "p.tsv", d / "r.tsv", d / "j.json", CPU)
        tables.append((pd.read_csv(d / "p.tsv", sep="\t"), pd.read_csv(d / "r.tsv", sep="\t"),
                       json.loads((d / "j.json").read_text())))
    (p0, r0, j0), (p1, r1, j1) = tables
    pd.testing.assert_frame_equal(r0, r1)
    pd.testing.assert_frame_equal(p0.drop(columns=["time", "event"]), p1.drop(columns=["time", "event"]))
    assert j0["experts"] == j1["experts"] and j0["loss_per_epoch"] == j1["loss_per_epoch"]


def _gated_fold(cohort, split, target: str, fold: int, out, gate: NullGate) -> dict:
    return run_roupkt_fold(split, cohort.bags[target], cohort.caches[target], target, fold, cohort.settings,
                           RoupktSettings(topk=2, null_gate=gate), out / "m.pt", out / "p.tsv", out / "r.tsv", out / "j.json", CPU)


def test_null_gate_makes_a_noise_fit_the_training_life_table(cohort, tmp_path):
    """NOI has no signal: inner CV finds none, so every test patient gets one curve (C 0.5); SHA keeps its model."""
    metrics = _gated_fold(cohort, cohort.splits["NOI"], "NOI", 0, tmp_path / "noi", NullGate(3, 0.55))
    gate = metrics["null_gate"]
    assert metrics["null"] and gate["null"] and gate["inner_c"] <= 0.55 and gate["inner_folds"] == 3
    preds = pd.read_csv(tmp_path / "noi" / "p.tsv", sep="\t")
    assert np.ptp(preds["risk"]) == 0 and metrics["c_index_test"] == 0.5
    model, _ = load_roupkt(tmp_path / "noi" / "m.pt", CPU)  # the checkpoint is the null model too
    assert float(model.head.weight.detach().abs().max()) == 0.0
    kept = _gated_fold(cohort, cohort.splits["SHA"], "SHA", 0, tmp_path / "sha", NullGate(3, 0.55))
    assert not kept["null"] and kept["null_gate"]["inner_c"] > 0.6
    assert np.ptp(pd.read_csv(tmp_path / "sha" / "p.tsv", sep="\t")["risk"]) > 0


def test_null_gate_never_reads_the_test_fold(cohort):
    """Poisoned test-fold labels leave the gate's inner C unchanged; poisoning a training fold moves it."""
    split, fold = cohort.splits["SHA"], 0
    keys = roupkt_experts(cohort.caches["SHA"], split, "SHA", fold, RoupktSettings())
    emb = stack_embeddings(cohort.caches["SHA"], keys, list(split["patient_id"]))
    settings = RoupktSettings(topk=2, null_gate=NullGate(3, 0.55))

    def score(s):
        fit_predict = roupkt_fit_predict(s, cohort.bags["SHA"], emb, fold, cohort.settings, settings, CPU)
        return null_gate(s, fold, settings.null_gate, cohort.settings.seed, fit_predict, "roupkt.null_gate.inner_folds")["inner_c"]

    clean = score(split)
    assert score(poison_test_labels(split, fold)) == clean
    assert score(poison_test_labels(split, 1)) != clean
