"""HistoKT conformance: what of its protocol our transfer baselines share, against values recorded from its code.

HistoKT (mahdihosseini/HistoKT) fine-tunes ImageNet-style ResNet18 classifiers; it has no survival
model, so no forward pass can be compared. What can be: its fine-tuning modes (which parameters
train, whether the output layer is new), its learning-rate grid, and that combined weights are
deep-tuned. The recorded values are in tests/reference/papers/histokt/reference.json, written by
make_reference.py there from HistoKT's own loader and job scripts at the commit it names.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsikt.mil import build_model
from wsikt.survival.bins import assign_bins, fit_time_bins
from wsikt.training.experts import load_expert, predict, save_expert
from wsikt.training.fit import survival_loss
from wsikt.training.settings import TrainSettings
from wsikt.transfer.baseline_settings import HISTOKT_LR_GRID, METHODS, BaselineSettings
from wsikt.transfer.baselines import average_states, fine_tune

ROOT = Path(__file__).resolve().parents[2]
REF = json.loads((ROOT / "tests/reference/papers/histokt/reference.json").read_text())
COMMIT = "0d23d4210a14f2f227e129cb7deec78d483ea8f5"
CPU = torch.device("cpu")
SETTINGS = TrainSettings(epochs=0, n_bins=4, bin_width_days=400.0, patients_per_step=8, seed=5)  # epochs 0: the initial model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small source expert on disk and a target cohort of bags, their embeddings and labels."""
    rng = np.random.default_rng(0)
    n = 24
    bags = [rng.normal(size=(int(rng.integers(4, 9)), 8)).astype(np.float32) for _ in range(n)]
    times, events = rng.uniform(10, 2000, n).round(), (rng.random(n) < 0.7).astype(int)
    edges = fit_time_bins(times, events, "uniform", 4, 400.0)
    torch.manual_seed(1)
    expert = build_model("abmil", 8, len(edges) + 1)
    path = tmp_path_factory.mktemp("histokt") / "model.pt"
    save_expert(path, expert, 8, len(edges) + 1, edges, SETTINGS, cancer="SRC", fold=0)
    emb = {("SRC", 0): predict(load_expert(path, CPU), bags, CPU)[1]}
    return {"path": path, "bags": bags, "times": times, "events": events, "emb": emb, "checkpoints": {("SRC", 0): path}}


def _fine_tune(source, method, **settings):
    return fine_tune(method, ("SRC", 0), np.arange(len(source["bags"])), source["times"], source["events"], SETTINGS,
                     BaselineSettings(method=method, **settings), CPU, emb=source["emb"], bags=source["bags"],
                     checkpoints=source["checkpoints"])


def test_reference_is_histokt_at_the_pinned_commit():
    assert REF["paper_repo"] == "mahdihosseini/HistoKT" and REF["commit"] == COMMIT


def test_lr_grid_and_its_default_are_histokts():
    grids = {tuple(float(v) for v in g) for g in REF["lr_grids"]}
    assert grids == {HISTOKT_LR_GRID}  # every fine-/deep-tuning sweep in its job scripts uses the same five rates
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["baselines"]["properties"]["lr_grid"]["default"]) == HISTOKT_LR_GRID
    assert BaselineSettings().lr_grid == HISTOKT_LR_GRID
    assert set(REF["best_lrs"].values()) <= set(HISTOKT_LR_GRID)  # the rates it settled on per dataset come from it


def test_fine_tuning_trains_only_a_new_output_layer(source):
    """HistoKT 'fine tuning' (freeze_encoder True): fc replaced by a new Linear(512, classes), the only trainable part."""
    ref = REF["modes"]["fine_tuning"]
    assert ref["trainable"] == ["fc.weight", "fc.bias"] and not ref["fc_from_source"] and ref["encoder_from_source"]
    assert ref["fc_shape"][1] == 512
    module, edges, _ = _fine_tune(source, "head")  # head_init default: 'new', as HistoKT
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["weight", "bias"]
    assert list(module.weight.shape) == [len(edges) + 1, 512]
    classifier = torch.load(source["path"], weights_only=True)["state_dict"]["aggregator.classifier.weight"]
    assert classifier.shape == module.weight.shape and not torch.equal(module.weight, classifier)
    # the frozen encoder: head trains on the source expert's own (cached) embedding, which fine-tuning never changes
    np.testing.assert_array_equal(source["emb"][("SRC", 0)], predict(load_expert(source["path"], CPU), source["bags"], CPU)[1])


def test_deep_tuning_trains_every_layer_from_the_source_with_a_new_output_layer(source):
    """HistoKT 'deep tuning' (freeze_encoder False): every parameter trainable, encoder from the source, fc new."""
    ref = REF["modes"]["deep_tuning"]
    assert len(ref["trainable"]) == ref["n_parameters"] and not ref["fc_from_source"] and ref["encoder_from_source"]
    module, edges, _ = _fine_tune(source, "all")
    assert all(p.requires_grad for p in module.parameters())
    src = load_expert(source["path"], CPU).state_dict()
    trunk = {k[len("trunk."):]: v for k, v in module.state_dict().items() if k.startswith("trunk.")}
    assert all(torch.equal(trunk[k], src[k]) for k in src)  # the encoder starts as the source
    assert not torch.equal(module.head.weight, src["aggregator.classifier.weight"])  # a new output layer
    module.train()
    bins = torch.as_tensor(assign_bins(source["times"], edges)[:8])
    logits = module(*module.collate(source["bags"][:8], CPU))["logits"]
    survival_loss(logits, bins, torch.as_tensor(source["events"][:8]), None, replace(SETTINGS, loss="nll")).backward()
    trained = {n for n, p in module.named_parameters() if p.grad is not None}
    # every parameter learns except the source's own output layer, which the new head replaces (HistoKT drops its fc)
    assert trained == {n for n, _ in module.named_parameters() if not n.startswith("trunk.aggregator.classifier.")}


def test_combined_weights_are_deep_tuned():
    """HistoKT deep-tunes its combined (distilled) weights (freeze_encoder False in every combined-weights sweep)."""
    assert REF["freeze_encoders"] and all(f == ["False"] for f in REF["freeze_encoders"])
    assert METHODS["merge_tune"].merges and METHODS["merge_tune"].tunes_trunk and METHODS["merge_tune"].head == "linear"
    a, b = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(2)}, {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(7)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["n"] == 2  # uniform mean of weights; counters kept


def test_preset_runs_histokts_protocol_and_nothing_else():
    from wsikt.config.validate import validate_config

    cfg = validate_config(yaml.safe_load((ROOT / "config/papers/histokt.yaml").read_text()),
                          ROOT / "workflow/schemas/config.schema.yaml")
    assert cfg["transfer"]["finetuned"] == ["head", "all"]  # the fine-tuned matrix: fine and deep tuning
    assert cfg["baselines"]["methods"] == ["merge_tune"]  # weight distillation: combine, then deep-tune
    settings = BaselineSettings.from_config(cfg["baselines"], method="merge_tune")
    assert settings.lr_grid == HISTOKT_LR_GRID and settings.head_init == "new" and settings.merge_set == "all"
    assert settings.null_gate.inner_folds == 0 and cfg["experts"]["null_gate"]["inner_folds"] == 0  # wsikt's gates off
    assert cfg["roupkt"]["targets"] == [] and not cfg["demo"]["enabled"]
