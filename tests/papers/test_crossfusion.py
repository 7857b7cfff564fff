"""CrossFusion conformance: our model, NLL loss and quantile bins against RustinS/CrossFusion's recorded outputs.

The numbers come from tests/reference/papers/crossfusion/reference.npz, written by make_reference.py
beside it from the paper's code (RustinS/CrossFusion @ df5473de130e4a25de944f12407dc51d0d1d2985,
models/CrossFusion.py, utils/train_utils.py, datasets/dataset_survival.py), with our weights copied
into the paper's model and its evaluation-time attention dropout set to 0. The paper's code is not
needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsikt.cohort.bags import PatientBag
from wsikt.mil import build_model
from wsikt.survival.bins import assign_bins, fit_time_bins
from wsikt.survival.losses import nll_loss

REF = Path(__file__).parents[1] / "reference" / "papers" / "crossfusion" / "reference.npz"
SCALES = ("20x", "10x", "5x")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REF) as f:
        return dict(f)


def _model_and_bags(ref: dict, key: str):
    in_dim, hidden, heads, layers, n_bins, n_patients = (int(v) for v in ref[f"{key}/spec"])
    model = build_model("crossfusion", in_dim, n_bins, dropout=0.3, hidden=hidden, heads=heads, layers=layers)
    prefix = f"{key}/w/"
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.items() if k.startswith(prefix)}
    model.aggregator.load_state_dict(state, strict=True)
    bags = [PatientBag(features={s: ref[f"{key}/x/{p}/{s}"] for s in SCALES}, primary="20x") for p in range(n_patients)]
    return model.eval(), bags


@pytest.mark.parametrize("key", ["a", "b"])  # a: Linear+LayerNorm inputs, 1 layer; b: identity inputs, 2 layers, 2 heads
def test_forward_matches_the_paper(ref, key):
    model, bags = _model_and_bags(ref, key)
    with torch.no_grad():
        out = model(model.collate(bags, torch.device("cpu")))  # all patients in one batch
    np.testing.assert_allclose(out["logits"].numpy(), ref[f"{key}/logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["embedding"].numpy(), ref[f"{key}/embedding"], atol=1e-5, rtol=0)


def test_attention_dropout_acts_in_training_only(ref):
    model, bags = _model_and_bags(ref, "a")
    batch = model.collate(bags, torch.device("cpu"))
    with torch.no_grad():
        first, second = model(batch)["logits"], model(batch)["logits"]
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # evaluation is deterministic
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model(batch)["logits"], first)  # dropout (0.3) and attention dropout (0.2) act



def test_checkpointing_changes_no_gradient(ref):
    """Per-patient checkpointing in training (memory) recomputes the same activations, dropout masks included."""
    grads = []
    for flag in (False, True):
        model, bags = _model_and_bags(ref, "a")
        model.aggregator.checkpointing = flag
        model.train()
        torch.manual_seed(3)
        model(model.collate(bags, torch.device("cpu")))["logits"].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.aggregator.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)
    assert grads[0].abs().sum() > 0

def test_nll_loss_matches_the_paper(ref):
    hazards = torch.from_numpy(ref["loss/hazards"]).requires_grad_(True)
    events = torch.from_numpy(1 - ref["loss/censorship"])
    loss = nll_loss(hazards, torch.from_numpy(ref["loss/bins"]), events, alpha=float(ref["loss/alpha"]))
    loss.backward()
    np.testing.assert_allclose(loss.item(), ref["loss/value"], atol=1e-7, rtol=0)
    np.testing.assert_allclose(hazards.grad.numpy(), ref["loss/grad"], atol=1e-7, rtol=0)


def test_quantile_bins_match_the_paper(ref):
    """Same data → same 4 bins. The paper fits them on the whole cohort; wsikt fits them on the training fold."""
    months, events = ref["bins/months"], 1 - ref["bins/censorship"]
    inner = fit_time_bins(months, events, kind="quantile", n_bins=4)
    np.testing.assert_allclose(inner, ref["bins/edges"][1:-1], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(assign_bins(months, inner), ref["bins/labels"])


# ---------------------------------------------------------------------------------------------
# The preset: config/papers/crossfusion.yaml
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PENDING_KEYS: set[str] = set()  # every preset key is in the schema


def test_preset_is_valid_and_sets_the_papers_setup():
    import yaml

    from wsikt.config.validate import validate_config
    from wsikt.training.settings import TrainSettings

    schema_path = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    known = set(yaml.safe_load(schema_path.read_text())["properties"])
    preset = yaml.safe_load((ROOT / "config" / "papers" / "crossfusion.yaml").read_text())
    missing = set(preset) - known
    assert missing <= PENDING_KEYS, f"preset keys the schema does not know: {sorted(missing - PENDING_KEYS)}"
    cfg = validate_config({k: v for k, v in preset.items() if k in known}, schema_path)
    ex = cfg["experts"]
    assert (ex["model"], ex["loss"], ex["alpha"], ex["dropout"], ex["epochs"], ex["lr"]) == ("crossfusion", "nll", 0.2, 0.3, 100, 1e-4)
    assert ex["bins"]["kind"] == "quantile" and ex["bins"]["n_bins"] == 4
    assert cfg["preprocess"]["context_mpp"] == [1.0, 2.0] and cfg["preprocess"]["target_mpp"] == 0.5
    assert cfg["roupkt"]["targets"] == [] and ex["null_gate"]["inner_folds"] == 0 and ex["feature_norm"] == "none"
    assert cfg["transfer"]["matrix"] is False  # one model per cancer: no zero-shot transfer matrix
    if "cancer_groups" in preset:
        assert preset["cancer_groups"] == {"GBMLGG": ["TCGA-GBM", "TCGA-LGG"]}
    settings = TrainSettings.from_config(ex)
    model = build_model(settings.model, 1024, settings.n_bins, dropout=settings.dropout, **settings.model_params)
    agg = model.aggregator
    assert agg.scales == ("20x", "10x", "5x") and agg.readout.pre[0].attn.heads == 4
    assert agg.readout.pre[0].attn.attn_dropout == 0.2 and agg.fusion.drop.p == 0.3
