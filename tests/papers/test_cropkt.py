"""CROPKT conformance: our ABMIL, ROUPKT (router, MoE, balance and z-losses), steps per epoch and lr schedule vs CROPKT's code.

The numbers come from tests/reference/papers/cropkt/reference.npz, written by make_reference.py there:
CROPKT (liupei101/CROPKT, commit in the file's meta, f6743a9a) run outside the repo with OUR weights
copied into its DeepMIL / DeepMIL_TFL_MoE, and its runner's scheduler and epoch loop. The tests need
no CROPKT code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsikt.mil import ABMIL, pad_bags
from wsikt.training import fit as fit_module
from wsikt.training.fit import Targets, fit
from wsikt.training.settings import TrainSettings
from wsikt.transfer.roupkt import ROUPKT, RoupktSettings, balance_loss, z_loss

REF = Path(__file__).resolve().parents[1] / "reference" / "papers" / "cropkt" / "reference.npz"
CROPKT_COMMIT = "f6743a9a26eb315fc06d65c792b74ee7f995629e"
IN_DIM, EMB, ATTN, N_BINS, N_EXPERTS, TOPK = 12, 16, 8, 5, 4, 2  # as make_reference.py


@pytest.fixture(scope="module")
def ref() -> dict:
    data = np.load(REF)
    out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(data["meta"]))
    assert out["meta"]["commit"] == CROPKT_COMMIT
    return out


def _bags(ref: dict) -> list[torch.Tensor]:
    return [torch.from_numpy(ref[f"bag{i}"]) for i in range(sum(k.startswith("bag") for k in ref))]


def _weights(ref: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in ref.items() if k.startswith(prefix)}


def _layer_types(seq: nn.Module) -> list[str]:
    return [type(m).__name__ for m in seq if not (isinstance(m, nn.Identity) or (isinstance(m, nn.Dropout) and m.p == 0))]


def test_abmil_forward_equals_cropkt_deepmil(ref):
    """CROPKT's ABMIL expert: logits, bag embedding and attention, every bag in one padded batch."""
    model = ABMIL(IN_DIM, N_BINS, hidden=EMB, attn_hidden=ATTN)
    model.load_state_dict(_weights(ref, "abmil_w/"))
    bags = _bags(ref)
    x, mask = pad_bags(bags)
    with torch.no_grad():
        out = model.eval()(x, mask)
    for i, b in enumerate(bags):
        np.testing.assert_allclose(out["logits"][i].numpy(), ref[f"abmil_logits{i}"][0], atol=1e-5)
        np.testing.assert_allclose(out["embedding"][i].numpy(), ref[f"abmil_emb{i}"][0], atol=1e-5)
        np.testing.assert_allclose(out["attention"][i, : len(b)].numpy(), ref[f"abmil_attn{i}"][0], atol=1e-5)


def test_feature_projection_is_linear_relu_only_by_default(ref):
    """CROPKT's projection (num_feat_proj_layers 0) has no dropout; ours neither unless experts.projection_dropout is set."""
    train = TrainSettings()
    expert = ABMIL(IN_DIM, N_BINS, dropout=train.dropout, projection_dropout=train.projection_dropout)
    router = ROUPKT(IN_DIM, N_EXPERTS, N_BINS, dropout=train.dropout, projection_dropout=train.projection_dropout).router
    assert _layer_types(expert.fc) == ref["meta"]["abmil_feat_proj_types"] == ["Linear", "ReLU"]
    assert _layer_types(router.abmil.fc) == ref["meta"]["moe_feat_proj_types"]
    adapter = ROUPKT(IN_DIM, N_EXPERTS, N_BINS).adapters[0]
    assert _layer_types(adapter) == ref["meta"]["moe_expert_types"] == ["Linear", "ReLU"]
    rows = torch.randn(50, IN_DIM)
    expert.train()
    torch.testing.assert_close(expert.fc(rows), expert.fc(rows))  # training mode: the projection is deterministic
    assert _layer_types(ABMIL(IN_DIM, N_BINS, projection_dropout=0.25).fc) == ["Linear", "ReLU", "Dropout"]  # the demo's


def test_roupkt_forward_and_routing_losses_equal_cropkt_moe(ref):
    """Router + top-k MoE over cached embeddings (eval), and the step's top1 balance and z-losses (train, dropout 0)."""
    model = ROUPKT(IN_DIM, N_EXPERTS, N_BINS, TOPK, EMB, dropout=0.0, attn_hidden=ATTN)
    model.load_state_dict(_weights(ref, "roupkt_w/"))
    bags, emb = _bags(ref), torch.from_numpy(ref["tfl_emb"])
    x, mask = pad_bags(bags)
    with torch.no_grad():
        out = model.eval()(x, mask, emb)
    for i in range(len(bags)):
        np.testing.assert_allclose(out["logits"][i].numpy(), ref[f"moe_logits{i}"][0], atol=1e-5)
        np.testing.assert_allclose(out["embedding"][i].numpy(), ref[f"moe_mixed{i}"][0], atol=1e-5)
        np.testing.assert_allclose(out["probs"][i].numpy(), ref[f"moe_probs{i}"][0], atol=1e-5)
    with torch.no_grad():
        out = model.train()(x, mask, emb)
    assert RoupktSettings().balance == "top1"
    assert balance_loss(out["probs"], RoupktSettings().balance).item() == pytest.approx(float(ref["moe_balance_step"]), abs=1e-5)
    assert z_loss(out["router_logits"]).item() == pytest.approx(float(ref["moe_z_step"]), abs=1e-5)
    assert balance_loss(out["probs"], "switch").item() != pytest.approx(float(ref["moe_balance_step"]), abs=1e-3)


def _run_fit(n: int, settings: TrainSettings, monkeypatch) -> tuple[list[int], list[float]]:
    """Our one fit loop on n patients: patients per optimiser step and the lr each step ran with."""
    sizes, lrs = [], []
    real = fit_module.optimizer_for

    def recording(model, lr, weight_decay, kind="adamw"):
        opt = real(model, lr, weight_decay, kind)
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(fit_module, "optimizer_for", recording)
    head = nn.Linear(1, 4)

    def forward(idx):
        sizes.append(len(idx))
        return head(torch.ones(len(idx), 1)), None

    fit(head, forward, Targets(np.zeros(n, int), np.ones(n, int)), settings, torch.device("cpu"))
    return sizes, lrs


@pytest.mark.parametrize("n", [16, 37, 100])
def test_steps_per_epoch_and_lr_schedule_equal_cropkt_runner(ref, n, monkeypatch):
    """Schema defaults (drop_last, hf_cosine, 20 epochs, lr 1e-4, 16 per step): CROPKT's floor(N/16) steps and HF's lr."""
    theirs = ref["meta"]["schedule"][str(n)]
    sizes, lrs = _run_fit(n, TrainSettings(), monkeypatch)
    epochs = ref["meta"]["epochs"]
    assert len(sizes) == theirs["steps_per_epoch"] * epochs == (n // 16) * epochs
    assert sizes[: theirs["steps_per_epoch"]] == theirs["patients_per_step"]
    np.testing.assert_allclose(lrs, theirs["lr_per_step"], rtol=1e-12, atol=0)
    assert lrs[0] == 0.0


def test_smaller_than_one_step_trains_one_step_where_cropkt_has_none(ref, monkeypatch):
    """15 patients: CROPKT's loop makes no step (and then fails); ours makes one step of all 15 per epoch."""
    assert ref["meta"]["schedule"]["15"]["steps_per_epoch"] == 0
    sizes, lrs = _run_fit(15, TrainSettings(epochs=3), monkeypatch)
    assert sizes == [15, 15, 15] and lrs[0] == 0.0


def test_wsikt_options_keep_the_last_step_and_warm_up_one_step_ahead(monkeypatch):
    """drop_last false: ceil(N/p) steps, every patient each epoch; lr_schedule cosine: the first step at lr/warmup."""
    sizes, lrs = _run_fit(37, TrainSettings(drop_last=False, lr_schedule="cosine", epochs=2), monkeypatch)
    assert sizes == [16, 16, 5] * 2
    assert lrs[:3] == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4]) and lrs[3] == pytest.approx(1e-4)


PRESET = Path(__file__).resolve().parents[2] / "config" / "papers" / "cropkt.yaml"
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
CROPKT_CANCERS = {"BLCA", "BRCA", "CESC", "COADREAD", "GBMLGG", "HNSC", "KIPAN", "LIHC", "LUNG", "SARC", "SKCM", "STES", "UCEC"}
CROPKT_GROUPS = {"COADREAD": {"COAD", "READ"}, "GBMLGG": {"GBM", "LGG"}, "KIPAN": {"KICH", "KIRC", "KIRP"},
                 "LUNG": {"LUAD", "LUSC"}, "STES": {"STAD", "ESCA"}}


def test_preset_is_cropkts_setup_and_validates():
    """config/papers/cropkt.yaml: DSS, uni_v2 at 20x, the 13 cancers with the five pooled groups, CROPKT's expert and ROUPKT settings."""
    import yaml

    from wsikt.config.validate import validate_config
    from wsikt.features.settings import FeatureSettings, feature_params
    from wsikt.preprocess.settings import PatchSettings
    from wsikt.training.settings import NullGate

    cfg = yaml.safe_load(PRESET.read_text())
    groups = {g: {p.removeprefix("TCGA-") for p in members} for g, members in cfg["cancer_groups"].items()}
    assert groups == CROPKT_GROUPS
    projects = {p.removeprefix("TCGA-") for p in cfg["gdc"]["projects"]}
    pooled = set().union(*groups.values())
    assert pooled <= projects and (projects - pooled) | set(groups) == CROPKT_CANCERS
    assert cfg["splits"]["strategy"] in ("stratified", "files")

    cfg = validate_config(cfg, SCHEMA)
    assert (cfg["endpoint"], cfg["features"]["encoder"], cfg["preprocess"]["target_mpp"]) == ("DSS", "uni_v2", 0.5)
    assert cfg["preprocess"]["context_mpp"] == [] and cfg["demo"]["enabled"] is False
    train, roupkt = TrainSettings.from_config(cfg["experts"]), RoupktSettings.from_config(cfg["roupkt"])
    assert train == TrainSettings(), "the preset's expert settings are the schema's CROPKT defaults"
    assert NullGate.from_config(cfg["experts"]).inner_folds == 0
    assert (roupkt.balance, roupkt.source_folds, roupkt.expert_set, roupkt.topk) == ("top1", 0, "all", 5)
    assert (roupkt.balance_weight, roupkt.z_weight) == (0.01, 0.01)
    assert cfg["baselines"]["methods"] == []
    PatchSettings.from_config(cfg["preprocess"])
    FeatureSettings.from_config(feature_params(cfg["features"]))


def test_schema_defaults_are_cropkts_and_the_settings_classes_agree():
    """Keys a config leaves out take CROPKT's values, and the library's dataclass defaults are the same."""
    from dataclasses import fields

    import yaml

    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    experts, roupkt = props["experts"]["properties"], props["roupkt"]["properties"]
    cropkt = {"drop_last": True, "lr_schedule": "hf_cosine", "projection_dropout": 0.0, "dropout": 0.25,
              "patients_per_step": 16, "warmup_epochs": 1, "epochs": 20, "lr": 1e-4, "weight_decay": 1e-5, "seed": 42,
              "alpha": 0.5, "feature_norm": "none"}
    assert {k: experts[k]["default"] for k in cropkt} == cropkt
    train = TrainSettings()
    assert {f.name: getattr(train, f.name) for f in fields(train) if f.name in cropkt} == cropkt
    settings = RoupktSettings()
    assert {k: roupkt[k]["default"] for k in ("balance", "source_folds", "topk", "expert_set", "balance_weight", "z_weight")} \
        == {k: getattr(settings, k) for k in ("balance", "source_folds", "topk", "expert_set", "balance_weight", "z_weight")} \
        == {"balance": "top1", "source_folds": 0, "topk": 5, "expert_set": "all", "balance_weight": 0.01, "z_weight": 0.01}
