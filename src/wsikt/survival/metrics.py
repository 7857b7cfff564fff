"""Survival metrics in vectorised numpy: Harrell's C, Uno's C, td-AUC, Brier / IBS, bootstrap CIs.

Each function follows scikit-survival's definitions (``concordance_index_censored``,
``concordance_index_ipcw``, ``cumulative_dynamic_auc``, ``brier_score``,
``integrated_brier_score``) and agrees with it to rounding, but without its per-sample Python
loops, so that 1000-resample bootstraps over every fold stay cheap. ``evaluate_fold`` bundles them
for one cross-validation fold and returns NaN with a reason, never an exception, when a metric
cannot be computed from the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

TIED_TOL = 1e-8  # risks closer than this count as tied (scikit-survival's default)
N_BOOT = 1000
BOOT_SEED = 20240611
N_EVAL_TIMES = 10  # evaluation times of td-AUC / IBS per fold
MIN_TEST_EVENTS = 2  # fewer test events in a fold: td-AUC / IBS not computed
_PAIR_BLOCK = 1_000_000  # elements per (rows × patients) block of the pairwise comparisons


# --------------------------------------------------------------------------- input handling

def _survival_arrays(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Float times and boolean events of equal length."""
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event).astype(bool).ravel()
    if time.shape != event.shape:
        raise ValueError(f"time ({time.shape[0]}) and event ({event.shape[0]}) differ in length")
    return time, event


def _check_times(test_time: np.ndarray, times) -> np.ndarray:
    """Evaluation times: strictly increasing and inside [min test time, max test time)."""
    times = np.atleast_1d(np.asarray(times, dtype=float))
    if times.ndim != 1 or len(times) == 0:
        raise ValueError("times must be a non-empty 1-D array")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times must be strictly increasing (columns of the estimate follow them)")
    if times.max() >= test_time.max() or times.min() < test_time.min():
        raise ValueError(f"all times must be within follow-up time of test data: [{test_time.min()}; {test_time.max()}[")
    return times


# --------------------------------------------------------------------------- Kaplan–Meier

@dataclass(frozen=True)
class StepFunction:
    """Right-continuous step function through (x, y) as scikit-survival predicts it; S = y[-1] beyond x[-1] only if 0."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, t) -> np.ndarray:
        """Value at each t; ValueError beyond the last time unless the function has reached 0 there."""
        t = np.asarray(t, dtype=float)
        extends = t > self.x[-1]
        if self.y[-1] > 0 and extends.any():
            raise ValueError(f"time must be smaller than largest observed time point: {self.x[-1]}")
        out = np.zeros(t.shape, dtype=float)
        valid = ~extends
        tv = t[valid]
        idx = np.searchsorted(self.x, tv)
        exact = np.abs(self.x[np.minimum(idx, len(self.x) - 1)] - tv) < np.finfo(float).eps
        idx[~exact] -= 1
        out[valid] = self.y[idx]
        return out


def _km_counts(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique times with events, patients at risk and censored at each (sorted ascending)."""
    if len(time) == 0:
        raise ValueError("no patients to fit a Kaplan–Meier estimate on")
    uniq, inv = np.unique(time, return_inverse=True)
    total = np.bincount(inv, minlength=len(uniq))
    n_events = np.bincount(inv, weights=event.astype(float), minlength=len(uniq)).astype(np.int64)
    at_risk = len(time) - np.concatenate([[0], np.cumsum(total)[:-1]])
    return uniq, n_events, at_risk, total - n_events


def _km_product(n_events: np.ndarray, at_risk: np.ndarray) -> np.ndarray:
    """Π (1 − d / n) over the unique times (0 where d = 0)."""
    ratio = np.divide(n_events, at_risk, out=np.zeros(len(n_events), dtype=float), where=n_events != 0)
    return np.cumprod(1.0 - ratio)


def km_survival(time, event) -> StepFunction:
    """Kaplan–Meier estimate of the survival function S(t) = P(T > t)."""
    time, event = _survival_arrays(time, event)
    uniq, d, n, _ = _km_counts(time, event)
    return StepFunction(np.r_[-np.inf, uniq], np.r_[1.0, _km_product(d, n)])


def km_censoring(time, event) -> StepFunction:
    """Kaplan–Meier estimate of the censoring survival G(t) (events and censorings swapped), for IPCW."""
    time, event = _survival_arrays(time, event)
    if len(time) and event.all():
        uniq = np.unique(time)
        return StepFunction(uniq, np.ones(len(uniq)))
    uniq, d, n, c = _km_counts(time, event)
    return StepFunction(np.r_[-np.inf, uniq], np.r_[1.0, _km_product(c, n - d)])


def _ipcw(cens: StepFunction, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """1 / G(t_i) for events, 0 for censored patients."""
    g = cens(time[event])
    if (g == 0.0).any():
        raise ValueError("censoring survival function is zero at one or more time points")
    w = np.zeros(len(time))
    w[event] = 1.0 / g
    return w


# --------------------------------------------------------------------------- concordance

def _pair_sums(time, event, risk, counts: np.ndarray, tied_tol: float = TIED_TOL) -> tuple[np.ndarray, np.ndarray]:
    """(E, B) arrays over event patients i and resamples b: Σ_j m_bj·score(i, j) and Σ_j m_bj·comparable(i, j).

    Pair (i, j) is comparable when i has an event and t_j > t_i, or t_j = t_i and j is censored;
    it scores 1 when r_i > r_j, ½ when |r_i − r_j| ≤ ``tied_tol`` (scikit-survival's rules).
    Rows are computed in blocks so memory stays bounded for large cohorts.
    """
    rows = np.flatnonzero(event)
    n, b = len(time), counts.shape[0]
    conc = np.empty((len(rows), b))
    comp = np.empty((len(rows), b))
    step = max(1, _PAIR_BLOCK // max(1, n))
    ct = counts.T  # (n, B)
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        ti, tj = time[r, None], time[None, :]
        comparable = (tj > ti) | ((tj == ti) & ~event[None, :])
        diff = risk[r, None] - risk[None, :]
        score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float)) * comparable
        conc[s:s + step] = score @ ct
        comp[s:s + step] = comparable.astype(float) @ ct
    return conc, comp


def concordance_resampled(
    time, event, risk, counts: np.ndarray | None = None, weights: np.ndarray | None = None, tied_tol: float = TIED_TOL
) -> np.ndarray:
    """Weighted concordance of each resample, given as multiplicities ``counts`` (B, n); NaN without comparable pairs.

    A resample that holds patient i m_i times equals the original data with pair (i, j) counted
    m_i·m_j times (a patient is never comparable with its own copies), so a bootstrap costs one
    matrix product instead of B pairwise passes. ``weights`` (n,) weight patient i's pairs as in
    Uno's C (w_i = 1/G(t_i)²); None gives Harrell's C.
    """
    time, event = _survival_arrays(time, event)
    risk = np.asarray(risk, dtype=float).ravel()
    if risk.shape != time.shape:
        raise ValueError(f"risk ({risk.shape[0]}) and time ({time.shape[0]}) differ in length")
    counts = np.ones((1, len(time))) if counts is None else np.atleast_2d(np.asarray(counts, dtype=float))
    nan = np.full(counts.shape[0], np.nan)
    if len(time) < 2 or not event.any() or not np.all(np.isfinite(risk)):
        return nan
    conc, comp = _pair_sums(time, event, risk, counts, tied_tol)
    m = counts[:, event].T  # (events, B): multiplicity of each event row
    w = np.ones(int(event.sum())) if weights is None else np.asarray(weights, dtype=float)[event]
    num = ((w[:, None] * m) * conc).sum(axis=0)
    den = ((w[:, None] * m) * comp).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), nan)


def harrell_c(time, event, risk, tied_tol: float = TIED_TOL) -> float:
    """Harrell's C on continuous time (higher risk = earlier event); NaN when no pair is comparable."""
    return float(concordance_resampled(time, event, risk, tied_tol=tied_tol)[0])


def uno_weights(train_time, train_event, test_time, test_event, tau: float | None = None) -> np.ndarray:
    """Uno's pair weights 1/G(t_i)² (G: censoring KM of the training data); 0 for censored and t_i ≥ τ."""
    train_time, train_event = _survival_arrays(train_time, train_event)
    test_time, test_event = _survival_arrays(test_time, test_event)
    keep = np.ones(len(test_time), bool) if tau is None else test_time < tau
    w = np.zeros(len(test_time))
    w[keep] = _ipcw(km_censoring(train_time, train_event), test_time[keep], test_event[keep])
    return np.square(w)


def uno_c(train_time, train_event, test_time, test_event, risk, tau: float | None = None, tied_tol: float = TIED_TOL) -> float:
    """Uno's IPCW concordance truncated at ``tau``; NaN when no pair is comparable.

    ValueError (as scikit-survival) when a test event lies beyond the training follow-up: choose
    ``tau`` ≤ the last training time.
    """
    w = uno_weights(train_time, train_event, test_time, test_event, tau)
    return float(concordance_resampled(test_time, test_event, risk, weights=w, tied_tol=tied_tol)[0])


# --------------------------------------------------------------------------- td-AUC and Brier

def td_auc(train_time, train_event, test_time, test_event, risk, times, tied_tol: float = TIED_TOL) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at each time (IPCW from the training data) and its KM-weighted mean.

    ``risk`` (N,) or (N, len(times)); cases: t_i ≤ t with an event, controls: t_i > t.
    """
    train_time, train_event = _survival_arrays(train_time, train_event)
    test_time, test_event = _survival_arrays(test_time, test_event)
    times = _check_times(test_time, times)
    est = np.asarray(risk, dtype=float)
    n, k = len(test_time), len(times)
    if est.ndim == 1:
        est = np.broadcast_to(est[:, None], (n, k))
    if est.shape != (n, k):
        raise ValueError(f"risk must be ({n},) or ({n}, {k}), got {est.shape}")
    ipcw = _ipcw(km_censoring(train_time, train_event), test_time, test_event)
    o = np.argsort(-est, axis=0)
    t_s, e_s, w_s = test_time[o], test_event[o], ipcw[o]
    est_s = np.take_along_axis(est, o, axis=0)
    is_case = (t_s <= times[None, :]) & e_s
    is_control = t_s > times[None, :]
    tp = np.cumsum(is_case * w_s, axis=0)
    fp = np.cumsum(is_control, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tp, fp = tp / tp[-1], fp / is_control.sum(axis=0)
    # keep the last position of each run of tied risks; the curve starts at (0, 0)
    tied = np.abs(np.diff(np.vstack([np.full((1, k), np.inf), est_s]), axis=0)) <= tied_tol
    keep = np.vstack([~tied[1:], np.ones((1, k), bool)])
    scores = np.empty(k)
    for j in range(k):
        x, y = np.r_[0.0, fp[keep[:, j], j]], np.r_[0.0, tp[keep[:, j], j]]
        scores[j] = np.trapezoid(y, x)
    if k == 1:
        return scores, float(scores[0])
    s = km_survival(test_time, test_event)(times)
    d = -np.diff(np.r_[1.0, s])
    with np.errstate(invalid="ignore", divide="ignore"):
        return scores, float((scores * d).sum() / (1.0 - s[-1]))


def brier(train_time, train_event, test_time, test_event, surv_at_times, times) -> np.ndarray:
    """IPCW Brier score at each time; ``surv_at_times`` (N, len(times)) = predicted S(t)."""
    train_time, train_event = _survival_arrays(train_time, train_event)
    test_time, test_event = _survival_arrays(test_time, test_event)
    times = _check_times(test_time, times)
    est = np.asarray(surv_at_times, dtype=float)
    if est.ndim == 1 and len(times) == 1:
        est = est[:, None]
    if est.shape != (len(test_time), len(times)):
        raise ValueError(f"surv_at_times must be ({len(test_time)}, {len(times)}), got {est.shape}")
    cens = km_censoring(train_time, train_event)
    g_t, g_y = cens(times), cens(test_time)
    g_t[g_t == 0] = np.inf
    g_y[g_y == 0] = np.inf
    case = (test_time[:, None] <= times[None, :]) & test_event[:, None]
    control = test_time[:, None] > times[None, :]
    return np.mean(np.square(est) * case / g_y[:, None] + np.square(1.0 - est) * control / g_t[None, :], axis=0)


def integrated_brier(train_time, train_event, test_time, test_event, surv_at_times, times) -> float:
    """Brier score integrated over ``times`` (trapezoid) and divided by their span; needs ≥2 times."""
    times = np.atleast_1d(np.asarray(times, dtype=float))
    if len(times) < 2:
        raise ValueError("At least two time points must be given")
    scores = brier(train_time, train_event, test_time, test_event, surv_at_times, times)
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


# --------------------------------------------------------------------------- one fold

def survival_at(surv: np.ndarray, bin_edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S(t) from discrete-time curves (N, T): S_k is survival to the end of bin k, the edge ``bin_edges[k]``.

    A step function: S(t) = 1 before the first edge, S_k for ``bin_edges[k] ≤ t < bin_edges[k+1]``
    (``bin_edges`` = the T − 1 inner edges; the last bin is open).
    """
    surv = np.atleast_2d(np.asarray(surv, dtype=float))
    k = np.searchsorted(np.asarray(bin_edges, dtype=float), np.asarray(times, dtype=float), side="right") - 1
    padded = np.hstack([np.ones((surv.shape[0], 1)), surv])
    return padded[:, np.clip(k + 1, 0, surv.shape[1])]


def evaluation_times(test_time, test_event, train_time, n: int = N_EVAL_TIMES) -> np.ndarray:
    """``n`` equally spaced times from the first test event to just before the horizon.

    The horizon is the last test time, or the last training time when earlier (the censoring
    distribution is unknown beyond it). Empty when the range is empty.
    """
    test_time, test_event = _survival_arrays(test_time, test_event)
    train_time = np.asarray(train_time, dtype=float)
    events = test_time[test_event]
    if len(events) == 0 or len(train_time) == 0:
        return np.zeros(0)
    lo, hi = float(events.min()), float(min(test_time.max(), train_time.max()))
    if not hi > lo:
        return np.zeros(0)
    return np.linspace(lo, hi, n + 1)[:-1]


@dataclass
class TimeMetrics:
    """td-AUC and IBS of one fold at its evaluation times."""

    times: np.ndarray
    auc: np.ndarray  # td-AUC at each time
    mean_auc: float  # KM-weighted mean over the times (scikit-survival's summary)
    ibs: float  # integrated Brier score of the model's survival curves
    ibs_km: float  # the same for the training fold's Kaplan–Meier curve (no-skill reference)
    reason: str = ""  # why not computed


def _nan_time_metrics(reason: str) -> TimeMetrics:
    return TimeMetrics(np.zeros(0), np.zeros(0), np.nan, np.nan, np.nan, reason)


def time_metrics(
    train_time, train_event, test_time, test_event, risk, surv, bin_edges, times=None, n_times: int = N_EVAL_TIMES,
) -> TimeMetrics:
    """td-AUC (risk) and IBS (``surv`` stepped to the evaluation times) for one fold; NaN with a reason when impossible.

    Test follow-up at or beyond the last training time is administratively censored there:
    metrics at earlier evaluation times are unchanged, and the training-fold censoring
    distribution stays defined for every test patient.
    """
    train_time, train_event = _survival_arrays(train_time, train_event)
    test_time, test_event = _survival_arrays(test_time, test_event)
    if test_event.sum() < MIN_TEST_EVENTS:
        return _nan_time_metrics(f"{int(test_event.sum())} test events (< {MIN_TEST_EVENTS})")
    if len(train_time) == 0 or train_event.sum() < 1:
        return _nan_time_metrics("no training events")
    horizon = train_time.max()
    test_event = test_event & (test_time < horizon)
    test_time = np.minimum(test_time, horizon)
    if times is None:
        times = evaluation_times(test_time, test_event, train_time, n_times)
    times = np.asarray(times, dtype=float)
    if len(times) < 2:
        return _nan_time_metrics("follow-up range too short")
    risk = np.asarray(risk, dtype=float)
    if not np.all(np.isfinite(risk)) or not np.all(np.isfinite(surv)):
        return _nan_time_metrics("non-finite predictions")
    try:
        auc, mean_auc = td_auc(train_time, train_event, test_time, test_event, risk, times)
        ibs = integrated_brier(train_time, train_event, test_time, test_event, survival_at(surv, bin_edges, times), times)
        km = km_survival(train_time, train_event)(times)
        ibs_km = integrated_brier(train_time, train_event, test_time, test_event, np.tile(km, (len(test_time), 1)), times)
    except ValueError as err:
        return _nan_time_metrics(str(err))
    return TimeMetrics(times, np.asarray(auc, float), float(mean_auc), float(ibs), float(ibs_km))


def evaluate_fold(
    train_time, train_event, test_time, test_event, risk, surv, bin_edges_days, n_times: int = N_EVAL_TIMES,
) -> dict:
    """Test-fold metrics of one expert: Harrell's C, Uno's C, mean td-AUC, IBS (and the KM reference IBS).

    ``risk`` (N_test,) higher = earlier event; ``surv`` (N_test, T) with S_k survival at the end of
    bin k, ``bin_edges_days`` the T − 1 inner edges. The training fold supplies the censoring
    distribution; Uno's C is truncated at the last training time. A metric that the data cannot
    support is NaN and ``reason`` says why; this function never raises on data.
    """
    train_time, train_event = _survival_arrays(train_time, train_event)
    test_time, test_event = _survival_arrays(test_time, test_event)
    risk = np.asarray(risk, dtype=float).ravel()
    surv = np.atleast_2d(np.asarray(surv, dtype=float))
    if risk.shape != test_time.shape or surv.shape[0] != len(test_time):
        raise ValueError(f"risk {risk.shape} and surv {surv.shape} must have one row per test patient ({len(test_time)})")
    reasons = []
    c = harrell_c(test_time, test_event, risk)
    if np.isnan(c):
        reasons.append("c_index: no comparable test pair or non-finite risk")
    try:
        u = uno_c(train_time, train_event, test_time, test_event, risk, tau=float(train_time.max()) if len(train_time) else None)
        if np.isnan(u):
            reasons.append("uno_c: no comparable test pair before the last training time or non-finite risk")
    except ValueError as err:
        u = float("nan")
        reasons.append(f"uno_c: {err}")
    tm = time_metrics(train_time, train_event, test_time, test_event, risk, surv, bin_edges_days, n_times=n_times)
    if tm.reason:
        reasons.append(f"td_auc/ibs: {tm.reason}")
    return {
        "c_index": c, "uno_c": u, "td_auc": tm.mean_auc, "ibs": tm.ibs, "ibs_km": tm.ibs_km,
        "eval_times": [float(t) for t in tm.times], "td_auc_per_time": [float(a) for a in tm.auc],
        "n_test": int(len(test_time)), "n_test_events": int(test_event.sum()), "reason": "; ".join(reasons),
    }


# --------------------------------------------------------------------------- bootstrap

@dataclass
class BootstrapCI:
    """Mean over groups (folds) of a metric and the percentile CI of that mean."""

    mean: float  # mean over groups on the original data
    low: float
    high: float
    n_valid: int  # resamples with a finite mean over groups


def resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Multiplicities (n_boot, n) of n patients drawn with replacement, n_boot times."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def expand_counts(metric: Callable[..., float], *arrays: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a plain metric(*arrays) into counts (B, n) → (B,) by materialising each resample (slow path)."""

    def fn(counts: np.ndarray) -> np.ndarray:
        out = np.empty(len(counts))
        for b, m in enumerate(np.asarray(counts, dtype=np.int64)):
            idx = np.repeat(np.arange(len(m)), m)
            out[b] = metric(*(np.asarray(a)[idx] for a in arrays))
        return out

    return fn


def bootstrap_means(
    values_fn: Callable[[int, np.ndarray], np.ndarray],
    group_sizes: Sequence[int],
    n_boot: int = N_BOOT,
    seed: int | Sequence[int] = BOOT_SEED,
) -> tuple[float, np.ndarray]:
    """Mean over groups of a metric on the data, and its (n_boot,) bootstrap replicates (NaN where no group is finite).

    ``values_fn(g, counts)`` returns the metric of group g for each row of multiplicities
    ``counts`` (B, n_g); rows of ones give the point estimate. Groups are resampled independently
    (test patients within each fold); a NaN group value is left out of that resample's mean.
    """
    rng = np.random.default_rng(seed)
    point, boots = [], []
    for g, n in enumerate(group_sizes):
        if n == 0:
            point.append(np.nan)
            boots.append(np.full(n_boot, np.nan))
            continue
        point.append(float(np.asarray(values_fn(g, np.ones((1, n))))[0]))
        boots.append(np.asarray(values_fn(g, resample_counts(rng, n, n_boot)), dtype=float))
    stacked = np.vstack(boots) if boots else np.full((1, n_boot), np.nan)
    finite = np.isfinite(stacked)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_boot = np.where(finite, stacked, 0.0).sum(axis=0) / finite.sum(axis=0)
    p = np.asarray(point, dtype=float)
    mean = float(p[np.isfinite(p)].mean()) if np.isfinite(p).any() else float("nan")
    return mean, mean_boot


def bootstrap_ci(
    values_fn: Callable[[int, np.ndarray], np.ndarray],
    group_sizes: Sequence[int],
    n_boot: int = N_BOOT,
    seed: int | Sequence[int] = BOOT_SEED,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile CI of the mean over groups of a metric, each group's patients resampled with replacement
    (``bootstrap_means``)."""
    if not group_sizes:
        return BootstrapCI(np.nan, np.nan, np.nan, 0)
    mean, mean_boot = bootstrap_means(values_fn, group_sizes, n_boot, seed)
    valid = mean_boot[np.isfinite(mean_boot)]
    if len(valid) == 0:
        return BootstrapCI(mean, np.nan, np.nan, 0)
    low, high = np.percentile(valid, [50 * (1 - level), 50 * (1 + level)])
    return BootstrapCI(mean, float(low), float(high), int(len(valid)))


def bootstrap_c_index(folds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = N_BOOT,
                      seed: int | Sequence[int] = BOOT_SEED, level: float = 0.95) -> BootstrapCI:
    """Bootstrap CI of the mean over folds of the test Harrell's C; ``folds`` = (time, event, risk) per fold."""
    folds = [tuple(np.asarray(a) for a in f) for f in folds]
    return bootstrap_ci(lambda g, counts: concordance_resampled(*folds[g], counts), [len(f[0]) for f in folds],
                        n_boot, seed, level)
