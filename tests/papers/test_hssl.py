"""HistoSSLscaling (owkin/HistoSSLscaling, Phikon): our Chowder, DSMIL, ABMIL and Cox loss against its code; its preset.

The reference values in tests/reference/papers/hssl/reference.npz were produced by HistoSSLscaling's own
classes (commit 73f1d191b1d04d4b88307a9601c4fcdbf23b72fa) with our weights copied in, by
tests/reference/papers/hssl/make_reference.py (see the README there). The paper's code is not needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsikt.mil.abmil_hssl import ABMILHSSL
from wsikt.mil.chowder import Chowder
from wsikt.mil.dsmil import DSMIL
from wsikt.survival.losses import cox_ph_loss
from wsikt.survival.metrics import harrell_c

ROOT = Path(__file__).resolve().parents[2]
REF = np.load(ROOT / "tests" / "reference" / "papers" / "hssl" / "reference.npz")
PRESET = ROOT / "config" / "papers" / "hssl.yaml"


def _ours(cls, name: str, t: int) -> torch.nn.Module:
    """Our model with its defaults (HistoSSLscaling's settings) and the recorded weights."""
    model = cls(REF["x"].shape[-1], t).eval()
    prefix = f"{name}{t}__state__"
    missing, unexpected = model.load_state_dict({k[len(prefix):]: torch.from_numpy(REF[k]) for k in REF.files if k.startswith(prefix)},
                                                strict=False)
    assert missing == ["to_embedding.weight"] and not unexpected  # the fixed embedding projection is not recorded
    return model


@pytest.mark.parametrize("cls,name,t", [(Chowder, "chowder", 1), (Chowder, "chowder", 3), (DSMIL, "dsmil", 1), (DSMIL, "dsmil", 3),
                                        (ABMILHSSL, "abmil_hssl", 1)])
def test_forward_equals_histosslscaling(cls, name, t):
    """Same weights, same padded bags (one shorter than Chowder's 10 extremes): logits equal HistoSSLscaling's to 1e-5."""
    model = _ours(cls, name, t)
    x, valid = torch.from_numpy(REF["x"]), torch.from_numpy(REF["valid"])
    with torch.no_grad():
        out = model(x, valid)
        alone = [model(x[i:i + 1, : int(valid[i].sum())], valid[i:i + 1, : int(valid[i].sum())])["logits"] for i in range(len(x))]
    np.testing.assert_allclose(out["logits"].numpy(), REF[f"{name}{t}__logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.cat(alone).numpy(), REF[f"{name}{t}__logits"], atol=1e-5, rtol=0)  # unpadded too
    assert out["embedding"].shape == (len(x), 512)


def test_cox_loss_and_gradient_equal_histosslscaling():
    """HistoSSLscaling's CoxLoss (sum over events / batch size) on 16 patients with distinct times: loss and gradient."""
    eta = torch.tensor(REF["cox_eta"], requires_grad=True)
    loss = cox_ph_loss(eta, torch.from_numpy(REF["cox_times"]), torch.from_numpy(REF["cox_events"]), reduction="patients")
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(REF["cox_loss"]), abs=1e-5)
    np.testing.assert_allclose(eta.grad.numpy(), REF["cox_grad"], atol=1e-6)
    events = torch.from_numpy(REF["cox_events"])  # 'events' (our earlier mean) is the same sum over E, not B
    ours_events = cox_ph_loss(eta.detach(), torch.from_numpy(REF["cox_times"]), events, reduction="events")
    assert float(ours_events) == pytest.approx(float(REF["cox_loss"]) * len(events) / int(events.sum()), abs=1e-5)


def test_harrell_c_equals_their_cindex():
    """Their compute_cindex (lifelines on time, −risk, event) equals our Harrell's C."""
    c = harrell_c(REF["cox_times"], REF["cox_events"], REF["cox_eta"].astype(float))
    assert c == pytest.approx(float(REF["cindex"]), abs=1e-12)


def test_wsikt_variants_stay_reachable_as_options():
    """The earlier wsikt Chowder/DSMIL (a learnt 512 projection, ReLU scores, 5/5, dropout, scaled queries) are options."""
    chowder = Chowder(12, 4, projection=512, tile_activation="relu", n_top=5, n_bottom=5, mlp_dropout=0.25)
    assert isinstance(chowder.score[0][1], torch.nn.ReLU) and chowder.mlp[0][0].in_features == 10
    assert any(isinstance(m, torch.nn.Dropout) for m in chowder.mlp.modules())
    dsmil = DSMIL(12, 4, projection=512, values="mlp", scale_attention=True, d_query=128)
    assert dsmil.scale == pytest.approx(128 ** -0.5) and dsmil.bag[0][0].in_features == 32
    g = np.random.default_rng(0)
    bags = [g.normal(size=(n, 12)).astype(np.float32) for n in (7, 30)]
    for model in (chowder.eval(), dsmil.eval()):
        with torch.no_grad():
            out = model(model.collate(bags, torch.device("cpu")))
        assert out["logits"].shape == (2, 4) and out["embedding"].shape == (2, 512)
    with pytest.raises(ValueError, match="experts.model_params"):
        DSMIL(12, 4, values="learned")


# ---------------------------------------------------------------------------------------------
# The preset: config/papers/hssl.yaml
# ---------------------------------------------------------------------------------------------


def _preset() -> dict:
    from wsikt.config.validate import validate_config

    return validate_config(yaml.safe_load(PRESET.read_text()), ROOT / "workflow" / "schemas" / "config.schema.yaml", source=str(PRESET))


def test_preset_validates_and_sets_histosslscaling_protocol():
    from wsikt.training.settings import HyperGrid, NullGate, TrainSettings

    cfg = _preset()
    assert cfg["endpoint"] == "OS" and sorted(cfg["gdc"]["projects"]) == [f"TCGA-{c}" for c in ("BRCA", "COAD", "LUAD", "LUSC", "PAAD")]
    assert cfg["features"]["encoder"] == "phikon" and cfg["preprocess"]["target_mpp"] == 0.5 and cfg["preprocess"]["patch_size"] == 224
    train, gate, grid = TrainSettings.from_config(cfg["experts"]), NullGate.from_config(cfg["experts"]), HyperGrid.from_config(cfg["experts"])
    assert (train.model, train.loss, train.cox_reduction, train.optimizer, train.lr_schedule) == ("chowder", "cox", "patients", "adam", "constant")
    assert (train.epochs, train.patients_per_step, train.warmup_epochs, train.feature_norm) == (50, 16, 0, "none")
    assert train.max_tiles_per_slide == 1000
    assert gate.inner_folds == 0 and cfg["experts"]["folds"] == 5 and cfg["baselines"]["methods"] == []
    assert cfg["transfer"]["matrix"] is False and cfg["roupkt"]["targets"] == []  # no transfer, no routing
    assert grid.params == {"lr": [1e-3, 1e-4], "weight_decay": [0.0, 1e-4]} and grid.inner_folds == 5 and grid.epochs and grid.score == "mean"
    from wsikt.mil import build_model

    model = build_model(train.model, 768, 32, train.dropout, train.loss, **train.model_params).aggregator
    assert (model.n_top, model.n_bottom) == (10, 10) and isinstance(model.fc, torch.nn.Identity)
    assert [type(m).__name__ for m in model.score.modules() if not isinstance(m, torch.nn.Sequential)] == ["Linear", "Sigmoid", "Linear"]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_preset_trains_an_expert_end_to_end(tmp_path):
    """The preset's expert settings (epochs and inner folds shrunk) through run_expert_fold on a planted cohort."""
    import json
    from dataclasses import replace

    import pandas as pd

    from wsikt.training.experts import run_expert_fold
    from wsikt.training.settings import HyperGrid, TrainSettings

    cfg = _preset()["experts"]
    settings = replace(TrainSettings.from_config(cfg), epochs=2)
    grid = replace(HyperGrid.from_config(cfg), inner_folds=2)
    g = np.random.default_rng(0)
    n = 32
    u = g.uniform(0, 1, n)
    bags = [(u[i] * 2 + g.normal(size=(int(k), 8))).astype(np.float32) for i, k in enumerate(g.integers(5, 20, n))]
    time = np.exp(7.3 - 1.5 * u + 0.2 * g.normal(size=n))
    split = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "cancer": "TOY", "time": time,
                          "event": (g.random(n) < 0.7).astype(int), "fold": np.arange(n) % 5})
    paths = [tmp_path / f for f in ("m.pt", "p.tsv", "m.json")]
    metrics = run_expert_fold(split, bags, 0, settings, *paths, torch.device("cpu"), grid=grid)
    record = json.loads(paths[2].read_text())["grid"]
    assert len(record["trials"]) == 4 and set(record["chosen"]) == {"lr", "weight_decay", "epochs"}
    assert metrics["loss"] == "cox" and metrics["train_settings"]["optimizer"] == "adam" and np.isfinite(metrics["c_index_test"])


@pytest.mark.workflow
def test_preset_dry_run_plans_chowder_experts_on_a_sample_sheet(tmp_path):
    """snakemake -n with the preset and a sample sheet: one Chowder expert job per cancer and fold, Phikon features."""
    import pandas as pd
    from support.workflow_helpers import copy_repo, jobs_in_dry_run, snakemake

    workdir = copy_repo(tmp_path / "repo")
    own = workdir / "own"
    (own / "slides").mkdir(parents=True)
    sheet, clinical = [], []
    for cancer in ("BRCA", "LUAD"):
        for i in range(6):
            pid = f"TCGA-{cancer[:2]}-{i:04d}"
            (own / "slides" / f"{pid}-DX1.svs").write_bytes(b"")
            sheet.append(dict(slide_id=f"{pid}-DX1", patient_id=pid, cancer=cancer, path=f"own/slides/{pid}-DX1.svs"))
            clinical.append(dict(bcr_patient_barcode=pid, type=cancer, OS=i % 2, **{"OS.time": 100 + 30 * i}))
    pd.DataFrame(sheet).to_csv(own / "samples.tsv", sep="\t", index=False)
    pd.DataFrame(clinical).to_csv(own / "clinical.tsv", sep="\t", index=False)
    (own / "site.yaml").write_text(yaml.safe_dump({"samples": "own/samples.tsv", "clinical": "own/clinical.tsv", "gdc": {"projects": []}}))
    result = snakemake(workdir, "-n", "--configfile", "config/papers/hssl.yaml", "own/site.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = jobs_in_dry_run(result)
    assert jobs["train_expert"] == 10 and jobs["preprocess_slide"] == 12, jobs
    assert jobs["report"] == 1 and not {"embed_cohort", "transfer_matrix", "stats_matrix", "train_roupkt"} & set(jobs), jobs
    assert "results/experts/phikon/chowder/OS/BRCA/fold4/model.pt" in result.stdout
