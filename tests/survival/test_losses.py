"""Survival losses: NLL and Cox by hand, Cox against lifelines, the risk sign, the loss registry and its config check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsikt.survival.bins import risk_from_survival, survival_curve
from wsikt.survival.losses import (
    LOSSES,
    MIN_COX_BATCH,
    check_loss_config,
    cox_ph_loss,
    get_loss,
    log_risk_from_hazards,
    nll_loss,
)
from wsikt.survival.metrics import harrell_c

D = torch.float64


def _t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# NLL
# ---------------------------------------------------------------------------------------------


def test_nll_two_patients_tied_in_one_bin_by_hand():
    # Two patients in bin 1 with the same hazards h = (0.2, 0.5): S = (0.8, 0.4).
    #   event:    −log S(0) − log h(1) = −log 0.8 − log 0.5 = 0.2231436 + 0.6931472 = 0.9162907
    #   censored: −log S(1)            = −log 0.4            = 0.9162907
    # α = 0.4: event (1−α)·0.9162907 + α·0.9162907 = 0.9162907; censored (1−α)·0.9162907 = 0.5497744
    # mean = (0.9162907 + 0.5497744) / 2 = 0.7330326
    h = _t([[0.2, 0.5], [0.2, 0.5]])
    got = nll_loss(h, torch.tensor([1, 1]), torch.tensor([1, 0]), alpha=0.4)
    expected = (-math.log(0.8) - math.log(0.5) + 0.6 * -math.log(0.4)) / 2
    assert expected == pytest.approx(0.7330326, abs=1e-6)
    assert float(got) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Cox partial likelihood (Breslow)
# ---------------------------------------------------------------------------------------------


def test_cox_without_tied_events_by_hand():
    # t = (1, 3, 3, 4), events (1, 0, 1, 1): an event tied only with a censoring; exp(η) = (1, 2, 3, 4)
    #   event at t=1 (i=0): risk set {0,1,2,3}, Σ exp η = 10 → log(1/10)
    #   event at t=3 (i=2): risk set {1,2,3} (t ≥ 3, the censored tie included) = 9 → log(3/9)
    #   event at t=4 (i=3): risk set {3} = 4 → log(4/4) = 0
    # loss = −(log 0.1 + log(1/3) + 0) / 3 = log(30) / 3 = 1.1337324
    eta = torch.log(_t([1.0, 2.0, 3.0, 4.0]))
    got = cox_ph_loss(eta, _t([1.0, 3.0, 3.0, 4.0]), torch.tensor([1, 0, 1, 1]))
    assert math.log(30) / 3 == pytest.approx(1.1337324, abs=1e-6)
    assert float(got) == pytest.approx(math.log(30) / 3, abs=1e-12)


def test_cox_tied_event_times_use_breslow_not_efron():
    # t = (2, 2, 2, 5), events (1, 1, 0, 1), exp(η) = (1, 2, 3, 4)
    # Breslow: both events at t=2 share the full risk set Σ = 10 → log(1/10) + log(2/10);
    #          the event at t=5 has risk set {3} → log(4/4) = 0
    # loss = −(log 0.1 + log 0.2) / 3 = log(50) / 3 = 1.3040076
    # (Efron would use 10 and 10 − ½·(1+2) = 8.5 for the tied pair: log(8.5·10/2)/3 = 1.2499)
    eta = torch.log(_t([1.0, 2.0, 3.0, 4.0]))
    got = float(cox_ph_loss(eta, _t([2.0, 2.0, 2.0, 5.0]), torch.tensor([1, 1, 0, 1])))
    assert got == pytest.approx(math.log(50) / 3, abs=1e-12)
    assert got != pytest.approx(math.log(8.5 * 10 / 2) / 3, abs=1e-3)


def test_cox_is_shift_invariant_and_float32_works():
    eta = _t([0.3, -1.2, 0.8, 2.0, -0.1])
    t, e = _t([5.0, 1.0, 3.0, 3.0, 9.0]), torch.tensor([1, 1, 0, 1, 0])
    assert float(cox_ph_loss(eta + 7.5, t, e)) == pytest.approx(float(cox_ph_loss(eta, t, e)), abs=1e-12)
    assert float(cox_ph_loss(eta.float(), t.float(), e)) == pytest.approx(float(cox_ph_loss(eta, t, e)), abs=1e-5)


def test_cox_no_events_is_zero_with_a_graph():
    eta = _t([0.3, -1.2, 0.8]).requires_grad_()
    loss = cox_ph_loss(eta, _t([1.0, 2.0, 3.0]), torch.tensor([0, 0, 0]))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(eta.grad, torch.zeros(3, dtype=D))


def test_cox_gradient_raises_the_risk_of_the_earliest_death():
    eta = torch.zeros(4, dtype=D, requires_grad=True)
    cox_ph_loss(eta, _t([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 1, 1, 0])).backward()
    # descending the loss moves η along −grad: the first death up, the censored survivor down
    assert -eta.grad[0] > 0 and -eta.grad[3] < 0
    assert torch.all(-eta.grad[:-1].diff() <= 1e-12)  # earlier death → larger push up


def test_cox_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        cox_ph_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))


def _whas500():
    from sksurv.datasets import load_whas500

    x, y = load_whas500()
    cov = np.column_stack([x["age"].to_numpy(float), x["bmi"].to_numpy(float), x["hr"].to_numpy(float)])
    return cov, y["lenfol"].astype(float), y["fstat"].astype(bool)


def test_cox_equals_lifelines_partial_likelihood_without_ties():
    # lifelines uses Efron's ties correction, identical to Breslow when no event times are tied:
    # make whas500's times unique (+1e-3 day per rank within a tie), fit, compare at its β
    import pandas as pd
    from lifelines import CoxPHFitter

    cov, t, e = _whas500()
    order = np.lexsort((np.arange(len(t)), t))
    _, first = np.unique(t[order], return_index=True)
    rank = np.arange(len(t)) - np.repeat(first, np.diff(np.r_[first, len(t)]))
    t_u = t.copy()
    t_u[order] = t[order] + rank * 1e-3
    assert len(np.unique(t_u)) == len(t_u) and len(np.unique(t)) < len(t)
    df = pd.DataFrame(cov, columns=["age", "bmi", "hr"]).assign(T=t_u, E=e.astype(int))
    cph = CoxPHFitter().fit(df, "T", "E")
    beta = cph.params_[["age", "bmi", "hr"]].to_numpy()
    loss = cox_ph_loss(_t(cov @ beta), _t(t_u), torch.from_numpy(e))
    # lifelines' log-likelihood is the sum over events; ours the mean
    assert float(loss) * e.sum() == pytest.approx(-cph.log_likelihood_, abs=1e-6)


def _breslow_by_hand(eta: np.ndarray, t: np.ndarray, e: np.ndarray) -> float:
    """Negative Breslow partial log-likelihood, one event at a time, mean over events."""
    total = 0.0
    for i in np.flatnonzero(e):
        total += eta[i] - math.log(sum(math.exp(eta[j]) for j in range(len(t)) if t[j] >= t[i]))
    return -total / e.sum()


def test_cox_equals_loop_breslow_on_real_ties():
    cov, t, e = _whas500()
    eta = (cov - cov.mean(0)) @ np.array([0.045, -0.05, 0.012])
    got = float(cox_ph_loss(_t(eta), _t(t), torch.from_numpy(e)))
    assert got == pytest.approx(_breslow_by_hand(eta, t, e), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Risk sign: earlier death → higher risk
# ---------------------------------------------------------------------------------------------


def test_risk_sign_earlier_death_higher_risk_c_is_one():
    # Six patients with true risk u; constant per-bin hazards increasing in u; death times
    # decreasing in u (the highest risk dies first). Risk from the curves must rank them exactly.
    u = np.array([0.1, 0.9, 0.4, 0.7, 0.2, 0.55])
    time = 1000.0 * (1.0 - u)  # 900, 100, 600, 300, 800, 450
    event = np.ones(6, int)
    hazards = torch.sigmoid(_t(-3.0 + 4.0 * u)[:, None].expand(6, 8))
    surv = survival_curve(hazards).numpy()
    risk = risk_from_survival(surv)
    assert risk[1] == risk.max() and risk[0] == risk.min()
    assert harrell_c(time, event, risk) == 1.0
    assert harrell_c(time, event, -risk) == 0.0
    # the Cox log-risk derived from the same hazards ranks identically
    assert harrell_c(time, event, log_risk_from_hazards(hazards).numpy()) == 1.0


# ---------------------------------------------------------------------------------------------
# Registry and config check
# ---------------------------------------------------------------------------------------------


def test_registry_losses_share_one_signature():
    h = torch.sigmoid(_t([[-1.0, 0.2, 0.5], [0.3, -0.4, 1.0], [0.0, 0.0, 0.0]]))
    bins, times, events = torch.tensor([1, 2, 0]), _t([400.0, 900.0, 100.0]), torch.tensor([1, 0, 1])
    assert set(LOSSES) == {"nll", "cox"}
    assert float(get_loss("nll")(h, bins, times, events, 0.3)) == pytest.approx(float(nll_loss(h, bins, events, 0.3)), abs=1e-12)
    assert float(get_loss("cox")(h, bins, times, events, 0.3)) == pytest.approx(
        float(cox_ph_loss(log_risk_from_hazards(h), times, events)), abs=1e-12)
    with pytest.raises(ValueError, match=r"experts\.loss"):
        get_loss("deephit")


def test_check_loss_config():
    check_loss_config("nll", 1)
    check_loss_config("cox", MIN_COX_BATCH)
    with pytest.raises(ValueError, match=r"experts\.loss 'cox' needs experts\.patients_per_step ≥16") as err:
        check_loss_config("cox", 8)
    assert "(got 8)" in str(err.value) and "use 'nll'" in str(err.value)
    with pytest.raises(ValueError, match=r"experts\.loss"):
        check_loss_config("coxph", 32)
