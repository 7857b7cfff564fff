"""wsikt.survival.metrics against scikit-survival and lifelines on their bundled real data sets, ties included."""

from __future__ import annotations

import math
import time as clock

import numpy as np
import pytest
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer, load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import CensoringDistributionEstimator, kaplan_meier_estimator
from sksurv.preprocessing import OneHotEncoder
from sksurv.util import Surv

from wsikt.survival import metrics as M

TOL = 1e-9


class Cohort:
    """A real data set split 2:1 into train/test (every third patient tests), with a risk score."""

    def __init__(self, name, t, e, risk):
        self.name, self.t, self.e, self.risk = name, np.asarray(t, float), np.asarray(e, bool), np.asarray(risk, float)
        n = len(self.t)
        test = np.arange(n) % 3 == 1
        test[np.argmax(self.t)] = False  # the longest follow-up trains: G(t) is defined on every test time
        self.tr, self.te = ~test, test

    def train(self):
        return self.t[self.tr], self.e[self.tr]

    def test(self):
        return self.t[self.te], self.e[self.te]

    def y(self):
        return Surv.from_arrays(self.e[self.tr], self.t[self.tr]), Surv.from_arrays(self.e[self.te], self.t[self.te])

    def times(self, q=(10, 25, 40, 55, 70, 85)):
        """Evaluation times at test-event percentiles (inside the test follow-up range)."""
        t, e = self.test()
        return np.unique(np.percentile(t[e], q))


def _whas500() -> Cohort:
    # risk = a Cox model fitted on the training patients (age, sex, BMI, heart rate, ...)
    x, y = load_whas500()
    xt = OneHotEncoder().fit_transform(x)
    c = Cohort("whas500", y["lenfol"], y["fstat"], np.zeros(len(y)))
    cox = CoxPHSurvivalAnalysis(alpha=1e-3).fit(xt[c.tr], y[c.tr])
    c.risk = cox.predict(xt)
    c.model, c.x = cox, xt
    return c


def _gbsg2() -> Cohort:
    x, y = load_gbsg2()
    return Cohort("gbsg2", y["time"], y["cens"], x["pnodes"])  # positive nodes: heavily tied risks


def _veterans() -> Cohort:
    x, y = load_veterans_lung_cancer()
    return Cohort("veterans", y["Survival_in_days"], y["Status"], -x["Karnofsky_score"])  # low Karnofsky = high risk


@pytest.fixture(scope="module", params=["whas500", "gbsg2", "veterans"])
def cohort(request) -> Cohort:
    return {"whas500": _whas500, "gbsg2": _gbsg2, "veterans": _veterans}[request.param]()


@pytest.fixture(scope="module")
def whas():
    return _whas500()


# ---------------------------------------------------------------------------------------------
# Concordance
# ---------------------------------------------------------------------------------------------


def test_cohorts_have_ties_in_time_and_risk(cohort):
    # the comparisons below only test tie handling if the data have ties
    assert len(np.unique(cohort.t)) < len(cohort.t)
    assert len(np.unique(cohort.risk)) < len(cohort.risk) or cohort.name == "whas500"
    assert 0.2 < cohort.e.mean() < 0.95


def test_harrell_c_equals_sksurv_and_lifelines(cohort):
    from lifelines.utils import concordance_index

    for mask in (np.ones_like(cohort.tr), cohort.te):
        t, e, r = cohort.t[mask], cohort.e[mask], cohort.risk[mask]
        c = M.harrell_c(t, e, r)
        assert c == pytest.approx(concordance_index_censored(e, t, r)[0], abs=TOL)
        assert c == pytest.approx(concordance_index(t, -r, e), abs=TOL)  # lifelines ranks predicted times
        assert 0.55 < c < 0.9, f"{cohort.name}: the risk score is informative but imperfect"


def test_harrell_c_random_ties_equal_sksurv():
    rng = np.random.default_rng(11)
    for _ in range(25):
        n = int(rng.integers(5, 60))
        t = rng.integers(1, 8, n).astype(float)  # many tied times, events and censorings at the same time
        e = rng.random(n) < 0.5
        r = rng.integers(0, 4, n) + rng.choice([0.0, 5e-9], n)  # exact ties and ties within tied_tol
        if not e.any():
            continue
        try:
            ref = concordance_index_censored(e, t, r)[0]
        except Exception:  # no comparable pair: ours is NaN
            assert math.isnan(M.harrell_c(t, e, r))
            continue
        assert M.harrell_c(t, e, r) == pytest.approx(ref, abs=TOL)


def test_harrell_c_hand_computed():
    # t = 1(event), 2(censored), 2(event), 3(censored); risks 4, 1, 3, 3
    # comparable pairs (i event, j later or censored at the same time):
    #   i=0 (t1): j=1 (r1<4 ✓), j=2 (3<4 ✓), j=3 (3<4 ✓)        → 3 concordant
    #   i=2 (t2): j=1 (censored at t2: comparable, 1<3 ✓), j=3 (tie 3=3 → ½)
    # C = (3 + 1 + 0.5) / 5 = 0.9
    assert M.harrell_c([1, 2, 2, 3], [1, 0, 1, 0], [4, 1, 3, 3]) == pytest.approx(0.9, abs=1e-12)


@pytest.mark.parametrize("t,e,r", [
    ([1.0, 2.0, 3.0], [0, 0, 0], [0.3, 0.2, 0.1]),  # no events
    ([5.0], [1], [0.5]),  # one patient
    ([4.0, 4.0, 4.0], [1, 1, 1], [1.0, 2.0, 3.0]),  # events tied in time only: nothing comparable
    ([1.0, 2.0], [1, 0], [np.nan, 1.0]),  # non-finite risk
])
def test_harrell_c_nan_when_not_computable(t, e, r):
    assert math.isnan(M.harrell_c(t, e, r))


def test_uno_c_equals_sksurv(cohort):
    y_tr, y_te = cohort.y()
    (t_tr, e_tr), (t_te, e_te) = cohort.train(), cohort.test()
    r = cohort.risk[cohort.te]
    for tau in (None, float(np.percentile(t_tr, 60)), float(t_tr.max())):
        got = M.uno_c(t_tr, e_tr, t_te, e_te, r, tau=tau)
        assert got == pytest.approx(concordance_index_ipcw(y_tr, y_te, r, tau=tau)[0], abs=TOL)
    assert M.uno_c(t_tr, e_tr, t_te, e_te, r) != pytest.approx(M.harrell_c(t_te, e_te, r), abs=1e-6)


@pytest.mark.parametrize("last_train_event", [1, 0])
def test_uno_c_raises_like_sksurv_beyond_training_follow_up(last_train_event):
    # a test event at 5 after the last training time 4: G(5) is unknown (last training time an
    # event) or 0 (last training time censored); both libraries refuse, truncation at τ = 4 works
    t_tr, e_tr = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, last_train_event])
    t_te, e_te, r = np.array([1.5, 5.0]), np.array([1, 1]), np.array([2.0, 1.0])
    y_tr, y_te = Surv.from_arrays(e_tr.astype(bool), t_tr), Surv.from_arrays(e_te.astype(bool), t_te)
    with pytest.raises(ValueError) as ref:
        concordance_index_ipcw(y_tr, y_te, r)
    with pytest.raises(ValueError, match=str(ref.value)[:30]):
        M.uno_c(t_tr, e_tr, t_te, e_te, r)
    assert M.uno_c(t_tr, e_tr, t_te, e_te, r, tau=4.0) == 1.0  # only the event at 1.5 counts
    assert concordance_index_ipcw(y_tr, y_te, r, tau=4.0)[0] == 1.0


def test_kaplan_meier_equals_sksurv(cohort):
    t, e = cohort.t, cohort.e
    km_t, km_s = kaplan_meier_estimator(e, t)
    f = M.km_survival(t, e)
    np.testing.assert_allclose(f(km_t), km_s, rtol=0, atol=TOL)
    grid = np.linspace(0, t.max(), 97)
    g_ref = CensoringDistributionEstimator().fit(Surv.from_arrays(e, t)).predict_proba(grid)
    np.testing.assert_allclose(M.km_censoring(t, e)(grid), g_ref, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# td-AUC, Brier, IBS
# ---------------------------------------------------------------------------------------------


def test_td_auc_equals_sksurv_1d_and_2d(cohort):
    y_tr, y_te = cohort.y()
    (t_tr, e_tr), (t_te, e_te) = cohort.train(), cohort.test()
    times = cohort.times()
    r = cohort.risk[cohort.te]
    auc, mean = M.td_auc(t_tr, e_tr, t_te, e_te, r, times)
    ref_auc, ref_mean = cumulative_dynamic_auc(y_tr, y_te, r, times)
    np.testing.assert_allclose(auc, ref_auc, rtol=0, atol=TOL)
    assert mean == pytest.approx(ref_mean, abs=TOL)
    # time-dependent risk: a different (tied) score per time
    r2 = np.round(r[:, None] * np.linspace(1, -0.5, len(times))[None, :] + 0.1 * np.arange(len(r))[:, None] % 3, 1)
    auc2, mean2 = M.td_auc(t_tr, e_tr, t_te, e_te, r2, times)
    ref_auc2, ref_mean2 = cumulative_dynamic_auc(y_tr, y_te, r2, times)
    np.testing.assert_allclose(auc2, ref_auc2, rtol=0, atol=TOL)
    assert mean2 == pytest.approx(ref_mean2, abs=TOL)
    # a single time: the mean is that time's AUC
    one, one_mean = M.td_auc(t_tr, e_tr, t_te, e_te, r, times[:1])
    assert one_mean == pytest.approx(cumulative_dynamic_auc(y_tr, y_te, r, times[:1])[1], abs=TOL) == one[0]


def _surv_at(c: Cohort, times: np.ndarray) -> np.ndarray:
    """Survival probabilities at ``times`` for the test patients: exponential in the risk score."""
    z = (c.risk - c.risk.mean()) / c.risk.std()
    lam = np.exp(0.7 * z[c.te]) / np.median(c.t)
    return np.exp(-lam[:, None] * times[None, :])


def test_brier_and_ibs_equal_sksurv(cohort):
    y_tr, y_te = cohort.y()
    (t_tr, e_tr), (t_te, e_te) = cohort.train(), cohort.test()
    times = cohort.times()
    s = _surv_at(cohort, times)
    np.testing.assert_allclose(M.brier(t_tr, e_tr, t_te, e_te, s, times), brier_score(y_tr, y_te, s, times)[1], rtol=0, atol=TOL)
    ibs = M.integrated_brier(t_tr, e_tr, t_te, e_te, s, times)
    assert ibs == pytest.approx(integrated_brier_score(y_tr, y_te, s, times), abs=TOL)
    assert 0 < ibs < 1


def test_brier_single_time_and_input_errors(whas):
    y_tr, y_te = whas.y()
    (t_tr, e_tr), (t_te, e_te) = whas.train(), whas.test()
    t0 = whas.times()[2]
    s = _surv_at(whas, np.array([t0]))[:, 0]
    assert M.brier(t_tr, e_tr, t_te, e_te, s, t0)[0] == pytest.approx(brier_score(y_tr, y_te, s, t0)[1][0], abs=TOL)
    with pytest.raises(ValueError, match="two time points"):
        M.integrated_brier(t_tr, e_tr, t_te, e_te, s[:, None], [t0])
    with pytest.raises(ValueError, match="follow-up"):
        M.td_auc(t_tr, e_tr, t_te, e_te, whas.risk[whas.te], [t_te.max()])
    with pytest.raises(ValueError, match="increasing"):
        M.td_auc(t_tr, e_tr, t_te, e_te, whas.risk[whas.te], [t0, t0 - 10])


# ---------------------------------------------------------------------------------------------
# One fold
# ---------------------------------------------------------------------------------------------


def _fold_inputs(c: Cohort, width: float = 180.0, n_bins: int = 12):
    """Discrete-time curves S_k at the bin ends k·width (the Cox model's own survival function)."""
    edges = np.arange(1, n_bins, dtype=float) * width  # inner edges; last bin open
    ends = np.r_[edges, n_bins * width]
    fns = c.model.predict_survival_function(c.x[c.te])
    surv = np.array([fn(np.minimum(ends, fn.x[-1])) for fn in fns])
    return edges, surv


def test_evaluate_fold_equals_sksurv_on_whas500(whas):
    (t_tr, e_tr), (t_te, e_te) = whas.train(), whas.test()
    r = whas.risk[whas.te]
    edges, surv = _fold_inputs(whas)
    m = M.evaluate_fold(t_tr, e_tr, t_te, e_te, r, surv, edges)
    assert m["reason"] == "" and m["n_test"] == len(t_te) and m["n_test_events"] == int(e_te.sum())
    y_tr, y_te = whas.y()
    assert m["c_index"] == pytest.approx(concordance_index_censored(e_te, t_te, r)[0], abs=TOL)
    assert m["uno_c"] == pytest.approx(concordance_index_ipcw(y_tr, y_te, r, tau=t_tr.max())[0], abs=TOL)
    times = np.array(m["eval_times"])
    assert len(times) == M.N_EVAL_TIMES
    assert times.min() == t_te[e_te].min() and times.max() < min(t_te.max(), t_tr.max())
    # td-AUC / IBS at those times, the test fold censored at the last training time
    cut = t_te >= t_tr.max()
    y_cut = Surv.from_arrays(e_te & ~cut, np.minimum(t_te, t_tr.max()))
    ref_auc, ref_mean = cumulative_dynamic_auc(y_tr, y_cut, r, times)
    assert m["td_auc"] == pytest.approx(ref_mean, abs=TOL)
    np.testing.assert_allclose(m["td_auc_per_time"], ref_auc, rtol=0, atol=TOL)
    s_t = M.survival_at(surv, edges, times)
    assert m["ibs"] == pytest.approx(integrated_brier_score(y_tr, y_cut, s_t, times), abs=TOL)
    # the Cox model beats the no-skill Kaplan–Meier curve on real data
    assert m["ibs"] < m["ibs_km"] and m["td_auc"] > 0.7 and m["uno_c"] > 0.6


def test_evaluate_fold_survives_test_events_beyond_training_follow_up(whas):
    # move the longest test patient's event beyond every training time: sksurv would raise, we censor
    (t_tr, e_tr), (t_te, e_te) = whas.train(), whas.test()
    t_te, e_te = t_te.copy(), e_te.copy()
    i = int(np.argmax(t_te))
    t_te[i], e_te[i] = t_tr.max() + 500, True
    edges, surv = _fold_inputs(whas)
    y_te = Surv.from_arrays(e_te, t_te)
    with pytest.raises(ValueError, match="largest observed time"):  # as scikit-survival ...
        cumulative_dynamic_auc(whas.y()[0], y_te, whas.risk[whas.te], [100.0, 200.0])
    with pytest.raises(ValueError, match="largest observed time"):  # ... the plain function raises
        M.td_auc(t_tr, e_tr, t_te, e_te, whas.risk[whas.te], [100.0, 200.0])
    m = M.evaluate_fold(t_tr, e_tr, t_te, e_te, whas.risk[whas.te], surv, edges)
    assert m["reason"] == ""
    assert all(np.isfinite([m["c_index"], m["uno_c"], m["td_auc"], m["ibs"]]))


@pytest.mark.parametrize("case,reason", [
    ("one_test_event", "test events"),
    ("no_test_events", "c_index"),
    ("short_follow_up", "follow-up range"),
    ("nan_risk", "non-finite"),
    ("no_training_patients", "no training events"),
])
def test_evaluate_fold_nan_with_reason_never_raises(case, reason):
    t_tr = np.array([100.0, 200, 300, 400, 500, 600])
    e_tr = np.array([1, 0, 1, 1, 0, 1])
    t_te = np.array([150.0, 250, 350, 450])
    e_te = {"one_test_event": [1, 0, 0, 0], "no_test_events": [0, 0, 0, 0], "short_follow_up": [0, 0, 1, 1]}.get(case, [1, 0, 1, 0])
    if case == "short_follow_up":  # both test events at the last test time: no range to evaluate over
        t_te = np.array([100.0, 200, 450, 450])
    if case == "no_training_patients":
        t_tr, e_tr = np.zeros(0), np.zeros(0)
    risk = np.array([4.0, 3, np.nan if case == "nan_risk" else 2, 1])
    surv = np.tile([0.9, 0.5], (4, 1))
    m = M.evaluate_fold(t_tr, e_tr, t_te, e_te, risk, surv, np.array([365.0]))
    assert math.isnan(m["td_auc"]) and math.isnan(m["ibs"])
    assert reason in m["reason"]
    if case in ("no_test_events", "nan_risk"):
        assert math.isnan(m["c_index"]) and math.isnan(m["uno_c"])
    if case == "no_training_patients":
        assert m["c_index"] == 1.0 and math.isnan(m["uno_c"]) and "uno_c" in m["reason"]


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def test_resampled_concordance_equals_materialised_resamples(whas):
    t, e, r = whas.t[whas.te], whas.e[whas.te], np.round(whas.risk[whas.te], 1)
    counts = M.resample_counts(np.random.default_rng(0), len(t), 20)
    assert (counts.sum(axis=1) == len(t)).all()
    fast = M.concordance_resampled(t, e, r, counts)
    slow = M.expand_counts(M.harrell_c, t, e, r)(counts)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    for m, c in zip(counts[:5], fast[:5]):  # and sksurv on the resampled rows themselves
        idx = np.repeat(np.arange(len(t)), m.astype(int))
        assert c == pytest.approx(concordance_index_censored(e[idx], t[idx], r[idx])[0], abs=TOL)
    # Uno's weights: resampled test patients, training censoring fixed
    (t_tr, e_tr) = whas.train()
    w = M.uno_weights(t_tr, e_tr, t, e, tau=t_tr.max())
    y_tr = Surv.from_arrays(e_tr, t_tr)
    for m, c in zip(counts[:3], M.concordance_resampled(t, e, r, counts[:3], weights=w)):
        idx = np.repeat(np.arange(len(t)), m.astype(int))
        assert c == pytest.approx(concordance_index_ipcw(y_tr, Surv.from_arrays(e[idx], t[idx]), r[idx], tau=t_tr.max())[0], abs=TOL)


def test_bootstrap_ci_fast_and_slow_paths_agree_and_cover_the_mean(whas):
    folds = []
    for k in range(3):
        m = np.arange(len(whas.t)) % 3 == k
        folds.append((whas.t[m], whas.e[m], whas.risk[m]))
    fast = M.bootstrap_c_index(folds, n_boot=200, seed=5)
    slow = M.bootstrap_ci(lambda g, counts: M.expand_counts(M.harrell_c, *folds[g])(counts), [len(f[0]) for f in folds], 200, 5)
    assert (fast.low, fast.high, fast.n_valid) == pytest.approx((slow.low, slow.high, slow.n_valid), abs=1e-12)
    assert fast.mean == pytest.approx(np.mean([M.harrell_c(*f) for f in folds]), abs=1e-12)
    assert fast.low < fast.mean < fast.high and 0.01 < fast.high - fast.low < 0.15
    assert M.bootstrap_c_index(folds, n_boot=200, seed=6).low != fast.low  # the seed matters
    assert M.bootstrap_c_index(folds, n_boot=200, seed=5) == fast  # and fixes the result


def test_bootstrap_ci_skips_nan_groups():
    good = (np.array([1.0, 2, 3, 4, 5, 6]), np.array([1, 1, 0, 1, 0, 1]), np.array([6.0, 5, 4, 3, 2, 1]))
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    censored = (np.array([1.0, 2]), np.array([0, 0]), np.array([1.0, 2]))
    ci = M.bootstrap_c_index([good, empty, censored], n_boot=100, seed=1)
    assert ci.mean == 1.0 and ci.n_valid > 90  # a few resamples of `good` have no comparable pair
    assert M.bootstrap_c_index([], n_boot=10).n_valid == 0


def test_speed_against_sksurv(whas, capsys):
    """Prints timings (no assertion on them): 1000 bootstrap resamples of one test fold."""
    t, e, r = whas.t[whas.te], whas.e[whas.te], whas.risk[whas.te]
    counts = M.resample_counts(np.random.default_rng(0), len(t), 1000)
    t0 = clock.perf_counter()
    M.concordance_resampled(t, e, r, counts)
    ours = clock.perf_counter() - t0
    t0 = clock.perf_counter()
    for m in counts[:50].astype(int):
        idx = np.repeat(np.arange(len(t)), m)
        concordance_index_censored(e[idx], t[idx], r[idx])
    theirs = (clock.perf_counter() - t0) * 20
    with capsys.disabled():
        print(f"\n1000-resample Harrell C, n={len(t)}: wsikt {ours:.3f} s, sksurv loop ≈{theirs:.2f} s")
