"""Chance references and paired comparisons for the mean-over-folds Harrell's C.

* ``permutation_null_c``: the C of random rankings of the same test patients. Each fold's risks
  are shuffled among its test patients (ties kept), the per-fold C recomputed for every shuffle
  in one vectorised pass, and the folds pooled exactly like the reported C (mean over folds).
  One-sided p-values in both directions: above chance (signal) and below chance.
* ``mean_c_bootstrap_ci``: the CI of a transfer-matrix cell, a mean of C over (source fold,
  target fold) pairs, each target fold's patients resampled once for all source folds.
* ``paired_bootstrap_delta``: C(b) − C(a) of two methods on the same test patients, each fold's
  patients resampled with the SAME multiplicities for both (``metrics.bootstrap_means``), with a
  percentile CI and a two-sided bootstrap p-value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsikt.survival.metrics import (
    BOOT_SEED,
    N_BOOT,
    TIED_TOL,
    BootstrapCI,
    bootstrap_ci,
    bootstrap_means,
    concordance_resampled,
)

N_PERM = 1000
_PERM_BLOCK = 4_000_000  # elements of one (permutations × events × patients) block

Fold = tuple[np.ndarray, np.ndarray, np.ndarray]  # (time, event, risk) of one fold's test patients


@dataclass(frozen=True)
class PermutationNull:
    """Observed mean-over-folds C against the C of random rankings of the same test patients."""

    observed: float
    null_mean: float
    null_sd: float
    p_above: float  # P(null ≥ observed), (1 + hits) / (1 + n): evidence of signal
    p_below: float  # P(null ≤ observed): evidence of ranking below chance
    n_perm: int


def permuted_c(time, event, risk, n_perm: int, rng: np.random.Generator, tied_tol: float = TIED_TOL) -> np.ndarray:
    """Harrell's C (n_perm,) of ``risk`` shuffled among the patients n_perm times; NaN without comparable pairs.

    The comparable pairs depend on (time, event) only, so each shuffle costs one masked comparison
    of its permuted risks over those pairs (blocks bound memory).
    """
    time, event, risk = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(risk, float)
    rows = np.flatnonzero(event)
    if len(time) < 2 or len(rows) == 0 or not np.all(np.isfinite(risk)):
        return np.full(n_perm, np.nan)
    ti, tj = time[rows, None], time[None, :]
    comparable = (tj > ti) | ((tj == ti) & ~event[None, :])  # (events, n)
    den = comparable.sum()
    if den == 0:
        return np.full(n_perm, np.nan)
    perms = np.argsort(rng.random((n_perm, len(time))), axis=1)
    out = np.empty(n_perm)
    step = max(1, _PERM_BLOCK // comparable.size)
    for s in range(0, n_perm, step):
        r = risk[perms[s:s + step]]  # (B, n): risk of patient j under shuffle b
        diff = r[:, rows, None] - r[:, None, :]  # (B, events, n)
        score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))
        out[s:s + step] = (score * comparable).sum(axis=(1, 2)) / den
    return out


def pooled_null(observed: float, null: np.ndarray) -> PermutationNull:
    """Mean, sd and one-sided p-values (add-one, so never 0) of ``observed`` against the replicates ``null``."""
    null = null[np.isfinite(null)]
    if len(null) == 0 or not np.isfinite(observed):
        return PermutationNull(observed, np.nan, np.nan, np.nan, np.nan, int(len(null)))
    eps = 1e-12  # replicates equal to the observed value (a one-risk null model: all 0.5) count in both tails
    return PermutationNull(
        float(observed), float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else np.nan,
        float((1 + np.sum(null >= observed - eps)) / (1 + len(null))),
        float((1 + np.sum(null <= observed + eps)) / (1 + len(null))), int(len(null)),
    )


def permutation_null_c(folds: Sequence[Fold], n_perm: int = N_PERM, seed: int | Sequence[int] = BOOT_SEED) -> PermutationNull:
    """Test-fold permutation reference of the mean-over-folds C (folds with NaN C left out, as in the summaries)."""
    rng = np.random.default_rng(seed)
    observed, nulls = [], []
    for t, e, r in folds:
        observed.append(float(concordance_resampled(t, e, r)[0]))
        nulls.append(permuted_c(t, e, r, n_perm, rng))
    if not folds:
        return PermutationNull(np.nan, np.nan, np.nan, np.nan, np.nan, 0)
    obs = np.asarray(observed)
    stacked = np.vstack(nulls)[np.isfinite(obs)]
    if not len(stacked):
        return PermutationNull(np.nan, np.nan, np.nan, np.nan, np.nan, 0)
    return pooled_null(float(obs[np.isfinite(obs)].mean()), stacked.mean(axis=0))


@dataclass(frozen=True)
class PairedDelta:
    """Mean-over-folds C(b) − C(a), its percentile CI and two-sided bootstrap p-value (same resamples for both)."""

    delta: float
    low: float
    high: float
    p_value: float
    n_valid: int


def paired_bootstrap_delta(
    folds_a: Sequence[Fold], folds_b: Sequence[Fold], n_boot: int = N_BOOT, seed: int | Sequence[int] = BOOT_SEED,
    level: float = 0.95,
) -> PairedDelta:
    """C(b) − C(a) over the same test patients fold by fold (fold g of both: same patients, same order).

    Each fold's patients are resampled once per replicate and both methods scored on that
    resample, so the patients' shared difficulty cancels. p = 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)), capped at 1.
    """
    if len(folds_a) != len(folds_b):
        raise ValueError(f"{len(folds_a)} folds against {len(folds_b)}: pair the same folds of both methods")
    for g, (a, b) in enumerate(zip(folds_a, folds_b)):
        if len(a[0]) != len(b[0]) or not (np.array_equal(a[0], b[0]) and np.array_equal(np.asarray(a[1], bool), np.asarray(b[1], bool))):
            raise ValueError(f"fold {g}: the two methods' test patients differ; align them by patient_id first")
    if not folds_a:
        return PairedDelta(np.nan, np.nan, np.nan, np.nan, 0)

    def delta(g: int, counts: np.ndarray) -> np.ndarray:
        return concordance_resampled(*folds_b[g], counts) - concordance_resampled(*folds_a[g], counts)

    point, boot = bootstrap_means(delta, [len(f[0]) for f in folds_a], n_boot, seed)
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return PairedDelta(point, np.nan, np.nan, np.nan, 0)
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return PairedDelta(float(point), float(low), float(high), float(p), int(len(boot)))


def mean_c_bootstrap_ci(
    folds: Sequence[tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]], n_boot: int = N_BOOT,
    seed: int | Sequence[int] = BOOT_SEED, level: float = 0.95,
) -> BootstrapCI:
    """Bootstrap CI of a mean of C over folds where each fold is ranked by several risks (a transfer-matrix cell:
    every source fold's expert on each target test fold); ``folds`` = (time, event, [risk, ...]) per fold.

    One resample of a fold's patients scores all of its risks; NaN C values are left out of the means.
    """
    def values(g: int, counts: np.ndarray) -> np.ndarray:
        t, e, risks = folds[g]
        per_risk = np.vstack([concordance_resampled(t, e, r, counts) for r in risks])
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(per_risk)
            return np.where(finite.any(0), np.where(finite, per_risk, 0).sum(0) / np.maximum(finite.sum(0), 1), np.nan)

    return bootstrap_ci(values, [len(f[0]) for f in folds], n_boot, seed, level)
