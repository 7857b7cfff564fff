"""Discrete-time survival maths, MIL aggregators under padding, and expert training/checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.mil import MODELS, PRIMARY, build_model, model_scales, pad_bags
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival, survival_curve
from wsikt.survival.losses import nll_loss
from wsikt.survival.metrics import harrell_c
from wsikt.training.checkpoint import read_checkpoint
from wsikt.training.experts import load_expert, predict, run_expert_fold, save_expert, train_expert
from wsikt.training.settings import TrainSettings

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# NLL loss
# ---------------------------------------------------------------------------------------------

# Three patients, three bins.
#   P1: h = (0.1, 0.2, 0.5), bin y = 1, event      S = (0.9, 0.72, 0.36)
#   P2: h = (0.3, 0.4, 0.5), bin y = 2, censored   S = (0.7, 0.42, 0.21)
#   P3: h = (0.5, 0.5, 0.5), bin y = 0, event      S = (0.5, 0.25, 0.125); S(−1) = 1
HAZARDS = torch.tensor([[0.1, 0.2, 0.5], [0.3, 0.4, 0.5], [0.5, 0.5, 0.5]], dtype=torch.float64)
BINS = torch.tensor([1, 2, 0])
EVENTS = torch.tensor([1, 0, 1])

# Uncensored term −log S(y−1) − log h(y):
UNC_P1 = -math.log(0.9) - math.log(0.2)  # S(0) = 0.9, h(1) = 0.2          → 1.7147984
UNC_P3 = -math.log(1.0) - math.log(0.5)  # S(−1) = 1, h(0) = 0.5           → 0.6931472
# Censored term −log S(y):
CENS_P2 = -math.log(0.7 * 0.6 * 0.5)  # S(2) = (1−0.3)(1−0.4)(1−0.5) = 0.21 → 1.5606477


def test_nll_loss_alpha_zero_matches_hand_computation():
    # α = 0: plain NLL = mean(unc_P1, cens_P2, unc_P3) = (1.7147984 + 1.5606477 + 0.6931472) / 3
    expected = (UNC_P1 + CENS_P2 + UNC_P3) / 3
    got = nll_loss(HAZARDS, BINS, EVENTS, alpha=0.0)
    assert float(got) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(1.3228644, abs=1e-6)


def test_nll_loss_alpha_half_matches_hand_computation():
    # α = 0.5: per patient (1−α)(cens + unc) + α·unc
    #   P1 (event):    0.5·(0 + 1.7147984) + 0.5·1.7147984 = 1.7147984
    #   P2 (censored): 0.5·(1.5606477 + 0) + 0.5·0         = 0.7803239
    #   P3 (event):    0.5·(0 + 0.6931472) + 0.5·0.6931472 = 0.6931472
    per_patient = [
        0.5 * UNC_P1 + 0.5 * UNC_P1,
        0.5 * CENS_P2,
        0.5 * UNC_P3 + 0.5 * UNC_P3,
    ]
    expected = sum(per_patient) / 3
    got = nll_loss(HAZARDS, BINS, EVENTS, alpha=0.5)
    assert float(got) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(1.0627565, abs=1e-6)


def test_nll_loss_prefers_hazards_that_match_the_outcome():
    # An event in bin 0: a high hazard in bin 0 must cost less than a low one.
    good = torch.tensor([[0.9, 0.5, 0.5]])
    bad = torch.tensor([[0.1, 0.5, 0.5]])
    y, e = torch.tensor([0]), torch.tensor([1])
    assert nll_loss(good, y, e) < nll_loss(bad, y, e)
    # Censored in the last bin: low hazards everywhere (long survival) cost less.
    low = torch.tensor([[0.05, 0.05, 0.05]])
    high = torch.tensor([[0.6, 0.6, 0.6]])
    y, e = torch.tensor([2]), torch.tensor([0])
    assert nll_loss(low, y, e) < nll_loss(high, y, e)


def test_survival_curve_is_cumulative_product():
    # S for P1 = (0.9, 0.9·0.8, 0.9·0.8·0.5) = (0.9, 0.72, 0.36)
    s = survival_curve(HAZARDS)
    assert torch.allclose(s[0], torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Risk and concordance
# ---------------------------------------------------------------------------------------------


def test_risk_from_survival_sign_gives_perfect_concordance():
    # Four patients dying at t = 100 < 200 < 300 < 400; the one dying first has the lowest
    # survival curve everywhere, so its risk (−Σ S) must be highest and C must be exactly 1.
    time = np.array([300.0, 100.0, 400.0, 200.0])
    event = np.array([1, 1, 1, 1])
    base = np.array([0.9, 0.7, 0.5, 0.3])
    level = {100.0: 0.2, 200.0: 0.4, 300.0: 0.6, 400.0: 0.8}  # survival scale by death time
    surv = np.stack([base * level[t] for t in time])
    risk = risk_from_survival(surv)
    assert risk[1] == risk.max()  # the earliest death
    assert harrell_c(time, event, risk) == 1.0
    # Reversed risk is perfectly discordant.
    assert harrell_c(time, event, -risk) == 0.0


def test_harrell_c_matches_lifelines_and_sksurv_on_whas500():
    from lifelines.utils import concordance_index
    from sksurv.datasets import load_whas500
    from sksurv.metrics import concordance_index_censored

    x, y = load_whas500()
    time = y["lenfol"].astype(float)
    event = y["fstat"].astype(bool)
    risk = x["age"].to_numpy(float)  # older → higher risk
    c = harrell_c(time, event, risk)
    assert c == pytest.approx(concordance_index(time, -risk, event), abs=1e-9)
    assert c == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=1e-9)
    assert 0.6 < c < 0.8  # age is a real but imperfect risk factor on whas500


def test_harrell_c_nan_without_events():
    c = harrell_c(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 0]), np.array([0.3, 0.2, 0.1]))
    assert math.isnan(c)


def test_harrell_c_nan_for_single_patient():
    assert math.isnan(harrell_c(np.array([1.0]), np.array([1]), np.array([0.5])))


# ---------------------------------------------------------------------------------------------
# Time bins
# ---------------------------------------------------------------------------------------------


def test_uniform_bins_are_yearly():
    edges = fit_time_bins(np.array([10.0, 20.0]), np.array([1, 0]), "uniform", n_bins=32, width_days=365.0)
    # 31 inner edges 365, 730, ..., 31·365 = 11315
    assert len(edges) == 31
    np.testing.assert_allclose(edges, 365.0 * np.arange(1, 32))
    assert edges[-1] == 11315.0


def test_quantile_bins_use_event_times_only():
    # Event times 100..800 (8 of them); censored patients at 5000 must be ignored.
    times = np.array([100, 200, 300, 400, 500, 600, 700, 800, 5000, 5000], float)
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    edges = fit_time_bins(times, events, "quantile", n_bins=4)
    # Linear-interpolated quantiles of 8 sorted values at q = 0.25, 0.5, 0.75:
    #   position q·7 = 1.75 → 200 + 0.75·100 = 275; 3.5 → 450; 5.25 → 625
    np.testing.assert_allclose(edges, [275.0, 450.0, 625.0])


def test_quantile_bins_depend_only_on_training_patients():
    rng = np.random.default_rng(3)
    times = rng.exponential(900.0, 30)
    events = (rng.random(30) < 0.7).astype(int)
    events[:10] = 1  # enough events in training
    train = np.arange(30) < 24
    edges = fit_time_bins(times[train], events[train], "quantile", n_bins=4)
    times2 = times.copy()
    times2[~train] = [1.0, 1e5, 3.0, 2e4, 7.0, 9e3]  # change every test patient
    edges2 = fit_time_bins(times2[train], events[train], "quantile", n_bins=4)
    np.testing.assert_array_equal(edges, edges2)
    # whereas fitting on everyone would have moved them
    assert not np.array_equal(
        fit_time_bins(times, events, "quantile", 4), fit_time_bins(times2, events, "quantile", 4)
    )


def test_run_expert_fold_fits_quantile_bins_on_training_fold_only(tmp_path):
    # The pipeline, not just the function: the checkpoint's edges must not move when a test
    # patient's time changes.
    rng = np.random.default_rng(5)
    n = 20
    bags = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(n)]
    split = pd.DataFrame(
        {"patient_id": [f"P{i:02d}" for i in range(n)], "cancer": "TOY",
         "time": rng.uniform(50, 3000, n), "event": 1, "fold": np.arange(n) % 4}
    )
    settings = TrainSettings(model="mean", epochs=1, bins_kind="quantile", n_bins=4, patients_per_step=8)

    def edges_for(df, tag):
        run_expert_fold(df, bags, 0, settings, tmp_path / f"{tag}.pt", tmp_path / f"{tag}.tsv", tmp_path / f"{tag}.json", CPU)
        return np.array(torch.load(tmp_path / f"{tag}.pt", weights_only=True)["inner_edges"])

    base = edges_for(split, "a")
    changed = split.copy()
    test = changed["fold"] == 0
    changed.loc[test, "time"] = 99999.0 + np.arange(test.sum())  # only test patients of fold 0
    np.testing.assert_array_equal(base, edges_for(changed, "b"))
    expected = fit_time_bins(split["time"][split["fold"] != 0].to_numpy(), np.ones(15), "quantile", 4)
    np.testing.assert_allclose(base, expected)


def test_quantile_bins_with_too_few_events_raise():
    times = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    events = np.array([1, 1, 1, 0, 0])  # 3 events < 4 bins
    with pytest.raises(ValueError, match=r"experts\.bins"):
        fit_time_bins(times, events, "quantile", n_bins=4)


def test_unknown_bin_kind_raises():
    with pytest.raises(ValueError, match=r"experts\.bins\.kind"):
        fit_time_bins(np.array([1.0]), np.array([1]), "log", n_bins=4)


def test_assign_bins_boundaries():
    edges = fit_time_bins(np.array([1.0]), np.array([1]), "uniform", 32, 365.0)
    got = assign_bins(np.array([0.0, 364.9, 365.0, 729.99, 730.0, 1e6]), edges)
    # [0, 365) → 0; [365, 730) → 1; ≥ 31·365 → last bin 31
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 31])
    assert got.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# Models: padded batch == one bag at a time
# ---------------------------------------------------------------------------------------------


def _random_bags(seed: int, lengths=(3, 7, 1, 12, 5), dim: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) * 2.0 + 1.0 for n in lengths]


@pytest.mark.parametrize("name", [m for m in MODELS if model_scales(m) == (PRIMARY,)])  # multi-scale: test_models.py
@pytest.mark.parametrize("normalised", [False, True])
def test_padded_batch_equals_single_bag_forwards(name, normalised):
    torch.manual_seed(0)
    model = build_model(name, in_dim=8, n_bins=4, dropout=0.0).eval()
    if normalised:
        # padding rows normalise to −mean/std ≠ 0; the model must still ignore them
        model.set_normalisation(torch.linspace(-1, 2, 8), torch.linspace(0.5, 3, 8))
    bags = _random_bags(1)
    bins = torch.tensor([0, 3, 1, 2, 0])
    events = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        x, mask = pad_bags(bags)
        assert x.shape == (5, 12, 8) and mask.sum(1).tolist() == [3, 7, 1, 12, 5]
        batched = model(x, mask)
        loss_batched = nll_loss(torch.sigmoid(batched["logits"]), bins, events)
        singles, losses = [], []
        for i, b in enumerate(bags):
            out = model(*pad_bags([b]))
            singles.append(out)
            losses.append(nll_loss(torch.sigmoid(out["logits"]), bins[i:i + 1], events[i:i + 1]))
    assert float(loss_batched) == pytest.approx(float(torch.stack(losses).mean()), abs=1e-5)
    for i, out in enumerate(singles):
        torch.testing.assert_close(batched["embedding"][i], out["embedding"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched["logits"][i], out["logits"][0], atol=1e-5, rtol=1e-5)
    assert batched["embedding"].shape == (5, 512)


def test_abmil_attention_is_zero_on_padding():
    torch.manual_seed(0)
    model = build_model("abmil", in_dim=8, n_bins=4, dropout=0.0).eval()
    x, mask = pad_bags(_random_bags(2))
    with torch.no_grad():
        a = model(x, mask)["attention"]
    assert torch.all(a[~mask] == 0)
    torch.testing.assert_close(a.sum(1), torch.ones(5))


def test_build_model_unknown_name_names_config_key():
    with pytest.raises(KeyError, match=r"experts\.model"):
        build_model("no_such_aggregator", in_dim=8, n_bins=4)


# ---------------------------------------------------------------------------------------------
# Training on a planted toy, and checkpoints
# ---------------------------------------------------------------------------------------------


def planted_toy(seed: int = 0, n: int = 40, dim: int = 8):
    """Bags of 5 instances whose features encode u ~ U(0, 1) on a large offset; log T = log 1500 − 1.5(2u − 1) + 0.3 ε."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    w = rng.normal(size=dim)
    bags = [
        (200.0 + 30.0 * (ui + 0.1 * rng.normal(size=(5, 1))) * w + rng.normal(size=(5, dim))).astype(np.float32)
        for ui in u
    ]
    t_event = np.exp(np.log(1500.0) - 1.5 * (2 * u - 1) + 0.3 * rng.normal(size=n))
    t_cens = rng.uniform(500.0, 8000.0, n)
    time = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(int)
    return bags, time, event


@pytest.fixture(scope="module")
def trained_toy():
    bags, time, event = planted_toy()
    edges = fit_time_bins(time, event, "uniform", 32, 365.0)
    bins = assign_bins(time, edges)
    settings = TrainSettings(model="abmil", lr=1e-3, epochs=20, feature_norm="standardize")
    model, history = train_expert(bags, bins, event, len(edges) + 1, settings, CPU)
    return bags, time, event, edges, settings, model, history


def test_train_expert_learns_planted_signal(trained_toy):
    bags, time, event, _, _, model, history = trained_toy
    assert 15 <= event.sum() <= 38  # the toy has both events and censoring
    surv, emb = predict(model, bags, CPU)
    assert surv.shape == (40, 32) and emb.shape == (40, 512)
    assert np.all(np.diff(surv, axis=1) <= 1e-7)  # survival curves never increase
    c = harrell_c(time, event, risk_from_survival(surv))
    assert c >= 0.75, f"training C {c:.3f} on a planted signal"
    assert len(history) == 20 and history[-1] < history[0]


def test_save_load_round_trip_identical_predictions(trained_toy, tmp_path):
    bags, _, _, edges, settings, model, _ = trained_toy
    surv, emb = predict(model, bags, CPU)
    path = tmp_path / "expert.pt"
    save_expert(path, model, in_dim=8, n_bins=len(edges) + 1, inner_edges=edges, settings=settings)
    loaded = load_expert(path, CPU)
    assert not loaded.training
    surv2, emb2 = predict(loaded, bags, CPU)
    np.testing.assert_array_equal(surv, surv2)
    np.testing.assert_array_equal(emb, emb2)

    ckpt = read_checkpoint(path, kind="expert")
    patches = np.concatenate(bags).astype(np.float64)
    # the training-set feature statistics travel inside the checkpoint
    np.testing.assert_allclose(ckpt.state_dict["feature_mean"].numpy(), patches.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ckpt.state_dict["feature_std"].numpy(), patches.std(0, ddof=1), rtol=1e-4)
    assert ckpt.inner_edges.tolist() == pytest.approx(list(edges))
    assert ckpt.train_settings.feature_norm == "standardize"
    with pytest.raises(ValueError, match="a expert checkpoint where a roupkt was expected"):
        read_checkpoint(path, kind="roupkt")
    torch.testing.assert_close(loaded.feature_mean, model.feature_mean)
    # and they are not the identity: a model built fresh would predict differently
    assert not torch.allclose(loaded.feature_mean, torch.zeros(8))


def test_train_expert_rejects_unknown_feature_norm():
    bags, time, event = planted_toy(n=4)
    with pytest.raises(ValueError, match="feature_norm"):
        train_expert(bags, np.zeros(4, int), event, 4, TrainSettings(feature_norm="zscore", epochs=1), CPU)
