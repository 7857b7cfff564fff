"""Expert training: batched step == mean of batch-1 steps, Cox with a Breslow baseline, fold outputs, planted signal, null gate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.cohort.bags import PRIMARY
from wsikt.core.model_facts import model_scales
from wsikt.mil import MODELS
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival
from wsikt.survival.metrics import harrell_c
from wsikt.training.experts import (
    breslow_log_cumhaz,
    forward_all,
    gate_c,
    life_table_logits,
    load_expert,
    new_expert,
    predict,
    run_expert_fold,
    save_expert,
    survival_times,
    train_expert,
)
from wsikt.training.fit import survival_loss
from wsikt.training.settings import HyperGrid, NullGate, TrainSettings

CPU = torch.device("cpu")
SINGLE_SCALE = [m for m in MODELS if model_scales(m) == (PRIMARY,)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(seed: int = 0, n: int = 48, dim: int = 8, sizes=(3, 40)):
    """Bags of varying size whose mean feature encodes u ~ U(0, 1); log T = log 1500 − 1.5(2u − 1) + 0.3 ε."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    w = rng.normal(size=dim)
    bags = [(3.0 * (ui + 0.1 * rng.normal(size=(k, 1))) * w + rng.normal(size=(k, dim))).astype(np.float32)
            for ui, k in zip(u, rng.integers(*sizes, size=n))]
    t_event = np.exp(np.log(1500.0) - 1.5 * (2 * u - 1) + 0.3 * rng.normal(size=n))
    t_cens = rng.uniform(500.0, 8000.0, n)
    return bags, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)


# ---------------------------------------------------------------------------------------------
# One padded forward per step == the batch-1 computation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_SCALE)
def test_batched_step_equals_mean_of_batch1_losses_and_gradients(name):
    bags, time, event = planted(n=16)
    edges = fit_time_bins(time, event, "uniform", 8, 365.0)
    bins = assign_bins(time, edges)
    settings = TrainSettings(model=name, dropout=0.0, feature_norm="standardize")
    model = new_expert(bags, len(edges) + 1, settings, CPU)
    model.train()
    y, e = torch.as_tensor(bins), torch.as_tensor(event)

    batched = survival_loss(model(model.collate(bags, CPU))["logits"], y, e, None, settings)
    model.zero_grad()
    batched.backward()
    g_batched = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    singles = []
    for i, b in enumerate(bags):
        loss_i = survival_loss(model(model.collate([b], CPU))["logits"], y[i:i + 1], e[i:i + 1], None, settings)
        (loss_i / len(bags)).backward()  # gradient accumulation over the 16 patients
        singles.append(float(loss_i.detach()))
    assert float(batched.detach()) == pytest.approx(np.mean(singles), abs=1e-6)
    assert g_batched.keys() == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_batched[k], p.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {k}")


def test_train_expert_first_step_loss_is_the_batched_loss():
    bags, time, event = planted(n=16)
    edges = fit_time_bins(time, event, "uniform", 8, 365.0)
    bins = assign_bins(time, edges)
    settings = TrainSettings(dropout=0.0, epochs=1)
    model = new_expert(bags, len(edges) + 1, settings, CPU)  # same seed → the weights train_expert starts from
    expected = survival_loss(model(model.collate(bags, CPU))["logits"], torch.as_tensor(bins), torch.as_tensor(event), None, settings)
    _, history = train_expert(bags, bins, event, len(edges) + 1, settings, CPU)
    assert history[0] == pytest.approx(float(expected.detach()), abs=1e-6)  # one step of 16 patients per epoch


# ---------------------------------------------------------------------------------------------
# Planted signal
# ---------------------------------------------------------------------------------------------


def test_abmil_learns_planted_signal():
    bags, time, event = planted(n=40)
    edges = fit_time_bins(time, event, "uniform", 32, 365.0)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=15, feature_norm="standardize")
    model, history = train_expert(bags, assign_bins(time, edges), event, len(edges) + 1, settings, CPU)
    surv, _ = predict(model, bags, CPU)
    c = harrell_c(time, event, risk_from_survival(surv))
    assert c > 0.7, f"training C {c:.3f} on a planted signal"
    assert history[-1] < history[0]


# ---------------------------------------------------------------------------------------------
# Cox
# ---------------------------------------------------------------------------------------------


def test_cox_refuses_small_steps():
    bags, time, event = planted(n=20)
    with pytest.raises(ValueError, match=r"experts\.patients_per_step"):
        train_expert(bags, np.zeros(20, int), event, 4, TrainSettings(loss="cox", patients_per_step=8), CPU, times=time)


def test_breslow_baseline_matches_the_textbook_sum():
    rng = np.random.default_rng(5)
    t = rng.integers(1, 30, 25).astype(float)  # ties on purpose
    e = rng.integers(0, 2, 25)
    eta = rng.normal(size=25) * 3 + 40  # exp(η) alone would be ~1e17: log space keeps it exact
    at = np.array([0.5, 3.0, 10.0, 17.5, 100.0])
    expected = []
    for a in at:
        h = sum(np.sum(e[t == s]) / np.sum(np.exp(eta[t >= s] - 40)) for s in np.unique(t[e == 1]) if s <= a)
        expected.append(np.log(h) - 40 if h > 0 else -np.inf)
    np.testing.assert_allclose(breslow_log_cumhaz(t, e, eta, at), expected, rtol=1e-10)


def _split(n: int, folds: int = 3, seed: int = 0) -> tuple[pd.DataFrame, list[np.ndarray]]:
    bags, time, event = planted(seed=seed, n=n)
    split = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "cancer": "TOY", "time": time, "event": event,
                          "fold": np.arange(n) % folds})
    return split, bags


@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_run_expert_fold_writes_weights_predictions_and_metrics(loss, tmp_path):
    split, bags = _split(48)
    settings = TrainSettings(model="abmil", loss=loss, lr=1e-3, epochs=6, feature_norm="standardize", n_bins=8)
    paths = [tmp_path / f for f in ("m.pt", "p.tsv", "m.json")]
    metrics = run_expert_fold(split, bags, 0, settings, *paths, CPU)
    preds = pd.read_csv(paths[1], sep="\t", dtype={"patient_id": str})
    assert list(preds.columns[:6]) == ["patient_id", "fold", "split", "time", "event", "risk"]
    assert [c for c in preds.columns if c.startswith("S_")] == [f"S_{k}" for k in range(8)]
    surv = preds[[f"S_{k}" for k in range(8)]].to_numpy()
    assert np.all(np.diff(surv, axis=1) <= 1e-7) and np.all((surv >= 0) & (surv <= 1))
    on_disk = json.loads(paths[2].read_text())
    for key in ("c_index_test", "c_index_train", "uno_c_test", "td_auc_test", "ibs_test"):
        assert key in on_disk
    test = preds["split"] == "test"
    assert metrics["c_index_test"] == pytest.approx(harrell_c(preds.time[test], preds.event[test], preds.risk[test]))
    assert metrics["c_index_train"] > 0.7  # planted signal
    model = load_expert(paths[0], CPU)
    surv2, _ = predict(model, bags, CPU)
    np.testing.assert_allclose(surv2, surv, rtol=1e-5, atol=1e-6)  # the checkpoint reproduces the TSV
    if loss == "cox":
        assert metrics["loss"] == "cox"
        # risk = the log-risk; the survival columns rank patients the same way (Breslow: S = exp(−H0 e^η))
        assert np.all(surv[:, 0] > 0.0) and np.any(surv[:, -1] < 0.99)
        order = np.argsort(preds["risk"].to_numpy())
        assert np.all(np.diff(surv[order, -1]) <= 1e-7)
        assert model.loss == "cox" and np.isfinite(model.baseline_log_cumhaz[-1].item())


# ---------------------------------------------------------------------------------------------
# Null gate: an expert whose inner CV shows no signal predicts one curve for everyone
# ---------------------------------------------------------------------------------------------


def _noise_split(n: int = 48, folds: int = 3) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The planted bags with outcomes shuffled among patients: nothing in the image predicts survival."""
    split, bags = _split(n, folds)
    perm = np.random.default_rng(11).permutation(n)
    split[["time", "event"]] = split[["time", "event"]].to_numpy()[perm]
    return split, bags


def test_null_gate_turns_a_noise_expert_into_the_training_life_table(tmp_path):
    from lifelines import KaplanMeierFitter

    split, bags = _noise_split()
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=6, feature_norm="standardize", n_bins=8)
    paths = [tmp_path / f for f in ("m.pt", "p.tsv", "m.json")]
    metrics = run_expert_fold(split, bags, 0, settings, *paths, CPU, NullGate(inner_folds=3, min_c=0.55))
    gate = metrics["null_gate"]
    assert metrics["null"] and gate["null"] and gate["inner_c"] <= 0.55 and gate["inner_folds"] == 3
    preds = pd.read_csv(paths[1], sep="\t")
    surv = preds[[f"S_{k}" for k in range(8)]].to_numpy()
    assert np.ptp(preds["risk"]) == 0 and metrics["c_index_test"] == 0.5  # one risk: every pair tied
    # every row is the Kaplan-Meier curve of the training patients' time bins (censored survive their bin)
    train = (split["fold"] != 0).to_numpy()
    edges = fit_time_bins(split.time[train], split.event[train], "uniform", 8, 365.0)
    km = KaplanMeierFitter().fit(assign_bins(split.time[train], edges), split.event[train])
    np.testing.assert_allclose(surv[0], km.survival_function_at_times(np.arange(8)).to_numpy(), atol=1e-5)
    # the checkpoint is a null expert too, and keeps the trained aggregator's embedding
    model = load_expert(paths[0], CPU)
    assert bool(model.is_null)
    np.testing.assert_allclose(predict(model, bags, CPU)[0], surv, rtol=1e-5, atol=1e-6)
    logits, emb = forward_all(model, bags, CPU)
    model.make_null(None)
    trained_logits, trained_emb = forward_all(model, bags, CPU)
    np.testing.assert_array_equal(emb, trained_emb)
    assert np.ptp(logits, axis=0).max() == 0 and np.ptp(trained_logits, axis=0).max() > 0


def test_null_gate_keeps_an_expert_that_learnt_the_planted_signal(tmp_path):
    split, bags = _split(48)
    # ~25 patients per inner fold: every patient every epoch, no lr-0 first step (CROPKT's floor gives 1 step an epoch)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=6, feature_norm="standardize", n_bins=8,
                             drop_last=False, lr_schedule="cosine")
    metrics = run_expert_fold(split, bags, 0, settings, *(tmp_path / f for f in ("m.pt", "p.tsv", "m.json")), CPU,
                              NullGate(inner_folds=3, min_c=0.55))
    assert not metrics["null"] and metrics["null_gate"]["inner_c"] > 0.65
    assert not bool(load_expert(tmp_path / "m.pt", CPU).is_null)


def test_null_cox_expert_is_the_nelson_aalen_curve(tmp_path):
    from lifelines import NelsonAalenFitter

    split, bags = _noise_split(60)
    settings = TrainSettings(model="abmil", loss="cox", lr=1e-3, epochs=4, feature_norm="standardize", n_bins=8)
    paths = [tmp_path / f for f in ("m.pt", "p.tsv", "m.json")]
    metrics = run_expert_fold(split, bags, 0, settings, *paths, CPU, NullGate(inner_folds=2, min_c=0.99))
    assert metrics["null"]
    preds = pd.read_csv(paths[1], sep="\t")
    assert np.all(preds["risk"] == 0.0)  # log-risk 0 for everyone
    train = (split["fold"] != 0).to_numpy()
    model = load_expert(paths[0], CPU)
    edges = fit_time_bins(split.time[train], split.event[train], "uniform", 8, 365.0)
    at = survival_times(edges, split.time[train].to_numpy())
    na = NelsonAalenFitter(nelson_aalen_smoothing=False).fit(split.time[train], split.event[train])
    expected = np.exp(-na.cumulative_hazard_at_times(at).to_numpy())
    np.testing.assert_allclose(preds[[f"S_{k}" for k in range(8)]].to_numpy()[0], expected, rtol=1e-5)
    assert bool(model.is_null)


def test_life_table_logits_by_hand():
    bins = np.array([0, 0, 1, 1, 1, 3])
    events = np.array([1, 0, 1, 1, 0, 1])
    h = torch.sigmoid(life_table_logits(bins, events, 5)).numpy()
    # at risk 6, 4, 1, 1, 0; events 1, 2, 0, 1, 0
    np.testing.assert_allclose(h, [1 / 6, 2 / 4, 1e-7, 1 - 1e-7, 1e-7], rtol=1e-4)


def test_parameter_averaging_uses_the_heads_even_of_null_experts(tmp_path):
    from wsikt.transfer.baselines import merge_experts

    bags, time, event = planted(n=16)
    edges = fit_time_bins(time, event, "uniform", 4, 365.0)
    paths = []
    for seed in (0, 1):
        model, _ = train_expert(bags, assign_bins(time, edges), event, 4, TrainSettings(model="abmil", epochs=1, n_bins=4, seed=seed), CPU)
        if seed == 0:
            model.make_null(life_table_logits(assign_bins(time, edges), event, 4))
        paths.append(tmp_path / f"e{seed}.pt")
        save_expert(paths[-1], model, 8, 4, edges, TrainSettings(model="abmil", n_bins=4))
    merged = merge_experts(paths, CPU)
    assert not bool(merged.is_null)
    assert np.ptp(forward_all(merged, bags, CPU)[0], axis=0).max() > 0


def test_null_gate_never_reads_the_test_fold():
    from support.transfer_cohort import poison_test_labels

    split, bags = _split(36)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=3, feature_norm="standardize", n_bins=8)
    clean = gate_c(split, bags, 0, settings, 3, CPU)
    assert gate_c(poison_test_labels(split, 0), bags, 0, settings, 3, CPU) == clean
    # poisoning a training fold does move it, so the equality above is not vacuous
    assert gate_c(poison_test_labels(split, 1), bags, 0, settings, 3, CPU) != clean


def test_expert_key_is_read_from_the_checkpoint_not_its_path(tmp_path):
    from wsikt.training.experts import expert_key

    bags, time, event = planted(n=16)
    settings = TrainSettings(model="abmil", epochs=1, n_bins=4)
    edges = fit_time_bins(time, event, "uniform", 4, 365.0)
    model, _ = train_expert(bags, assign_bins(time, edges), event, 4, settings, CPU)
    moved = tmp_path / "renamed" / "elsewhere.pt"  # a layout the library does not parse
    save_expert(moved, model, 8, 4, edges, settings, cancer="BRCA", fold=3)
    assert expert_key(moved) == ("BRCA", 3)
    save_expert(tmp_path / "anon.pt", model, 8, 4, edges, settings)
    with pytest.raises(ValueError, match="names no cancer and fold"):
        expert_key(tmp_path / "anon.pt")


# ---------------------------------------------------------------------------------------------
# Nested CV over a hyper-parameter grid (HistoSSLscaling): chosen on the training fold only
# ---------------------------------------------------------------------------------------------


def test_grid_chooses_by_inner_cv_and_records_the_choice(tmp_path):
    split, bags = _split(36)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=3, feature_norm="standardize", n_bins=8, lr_schedule="constant", warmup_epochs=0, optimizer="adam")
    grid = HyperGrid(params={"lr": [1e-5, 3e-3], "weight_decay": [0.0]}, inner_folds=2, epochs=True)
    paths = [tmp_path / f for f in ("m.pt", "p.tsv", "m.json")]
    metrics = run_expert_fold(split, bags, 0, settings, *paths, CPU, grid=grid)
    record = json.loads(paths[2].read_text())["grid"]
    assert [t["params"] for t in record["trials"]] == [{"lr": 1e-5, "weight_decay": 0.0}, {"lr": 3e-3, "weight_decay": 0.0}]
    for t in record["trials"]:  # the chosen epoch count is the best epoch of the inner curve
        curve = np.array(t["inner_c_per_epoch"], float)
        assert len(curve) == 3 and t["epochs"] == int(np.nanargmax(curve)) + 1 and t["inner_c"] == pytest.approx(np.nanmax(curve))
    best = max(record["trials"], key=lambda t: t["inner_c"])
    assert record["chosen"] == {**best["params"], "epochs": best["epochs"]}
    assert metrics["train_settings"]["lr"] == best["params"]["lr"] and len(metrics["loss_per_epoch"]) == best["epochs"]
    assert load_expert(paths[0], CPU) is not None


def test_grid_never_reads_the_test_fold():
    from support.transfer_cohort import poison_test_labels

    from wsikt.training.experts import select_hyperparameters

    split, bags = _split(36)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=2, feature_norm="standardize", n_bins=8)
    grid = HyperGrid(params={"lr": [1e-3, 3e-3]}, inner_folds=2)
    _, clean = select_hyperparameters(split, bags, 0, settings, grid, CPU)
    _, poisoned = select_hyperparameters(poison_test_labels(split, 0), bags, 0, settings, grid, CPU)
    assert poisoned == clean and clean["trials"][0]["inner_c_per_epoch"] is None
    assert select_hyperparameters(poison_test_labels(split, 1), bags, 0, settings, grid, CPU)[1] != clean  # not vacuous


def test_grid_settings_reject_what_cannot_be_searched():
    assert not HyperGrid().enabled and HyperGrid().candidates() == [{}]
    assert HyperGrid.from_config({"grid": {"params": {"lr": [1, 2], "weight_decay": [0, 3]}}}).candidates()[1] == {"lr": 1, "weight_decay": 3}
    for bad, key in (({"params": {"model": ["abmil"]}}, "experts.grid.params"), ({"params": {"lr": []}}, "non-empty"),
                     ({"params": {"epochs": [2]}, "epochs": True}, "experts.grid.epochs"), ({"inner_folds": 1}, "inner_folds")):
        with pytest.raises(ValueError, match=key):
            HyperGrid.from_config({"grid": bad})


def test_external_split_trains_on_the_training_cohort_only(tmp_path):
    """splits.strategy external: fold 0 is the external cohort, the rest (fold −1) train; the expert,
    its null gate's inner CV and its training metrics never read the external cohort's labels."""
    from support.transfer_cohort import poison_test_labels

    from wsikt.cohort.splits import make_external_splits

    split, bags = _split(36)
    cohorts = {p: ("EXT" if i % 4 == 0 else "TCGA") for i, p in enumerate(split["patient_id"])}
    external = make_external_splits(split.drop(columns="fold"), cohorts, ["EXT"]).set_index("patient_id").loc[split["patient_id"]]
    external = external.reset_index()  # bag order kept
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=3, feature_norm="standardize", n_bins=8)
    gate = NullGate(inner_folds=3, min_c=0.55)
    runs = []
    for name, table in (("clean", external), ("poisoned", poison_test_labels(external, 0))):
        paths = [tmp_path / name / f for f in ("m.pt", "p.tsv", "m.json")]
        metrics = run_expert_fold(table, bags, 0, settings, *paths, CPU, gate=gate)
        runs.append((metrics, pd.read_csv(paths[1], sep="\t", dtype={"patient_id": str})))
    (clean, preds), (poisoned, preds_poisoned) = runs
    is_ext = preds["patient_id"].map(cohorts) == "EXT"
    assert set(preds.loc[is_ext, "split"]) == {"test"} and set(preds.loc[~is_ext, "split"]) == {"train"}
    np.testing.assert_array_equal(preds["risk"].to_numpy(), preds_poisoned["risk"].to_numpy())
    assert clean["c_index_train"] == poisoned["c_index_train"] and clean["c_index_test"] != poisoned["c_index_test"]
