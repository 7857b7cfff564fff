"""Chance references and paired comparisons of C: random scorers centre on 0.5, paired intervals behave."""

from __future__ import annotations

import numpy as np
import pytest

from wsikt.survival.chance import mean_c_bootstrap_ci, paired_bootstrap_delta, permutation_null_c, permuted_c
from wsikt.survival.metrics import harrell_c


def _folds(n_folds: int = 5, n: int = 30, seed: int = 0, signal: float = 0.0):
    """(time, event, risk) folds; risk = signal · (−log time) + noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_folds):
        t = rng.exponential(1000, n).round() + 1
        e = (rng.random(n) < 0.7).astype(int)
        out.append((t, e, -signal * np.log(t) + rng.normal(size=n)))
    return out


def test_permuted_c_equals_harrell_c_of_each_shuffle():
    t, e, r = _folds(1, 25, seed=3)[0]
    r = np.round(r, 1)  # ties among risks are kept by the shuffles and scored ½
    fast = permuted_c(t, e, r, 40, np.random.default_rng(9))
    perms = np.argsort(np.random.default_rng(9).random((40, len(t))), axis=1)
    np.testing.assert_allclose(fast, [harrell_c(t, e, r[p]) for p in perms], rtol=1e-12)


def test_permutation_null_of_a_random_scorer_centres_on_half():
    res = permutation_null_c(_folds(seed=1), n_perm=2000, seed=5)
    assert res.n_perm == 2000 and res.null_mean == pytest.approx(0.5, abs=0.005)
    assert 0.01 < res.null_sd < 0.1 and 0.05 < res.p_above < 0.95 and 0.05 < res.p_below < 0.95
    strong = permutation_null_c(_folds(seed=1, signal=3.0), n_perm=2000, seed=5)
    assert strong.observed > 0.8 and strong.p_above < 0.001 and strong.p_below > 0.99
    reversed_ = permutation_null_c([(t, e, -r) for t, e, r in _folds(seed=1, signal=3.0)], n_perm=2000, seed=5)
    assert reversed_.p_below < 0.001  # below chance
    # a null model (one risk for every patient) scores 0.5 under every shuffle: no evidence either way
    flat = permutation_null_c([(t, e, np.zeros(len(t))) for t, e, _ in _folds()], n_perm=200)
    assert flat.observed == 0.5 and flat.null_sd == 0 and flat.p_above == 1 and flat.p_below == 1


def test_paired_bootstrap_of_identical_models_contains_zero():
    folds = _folds(seed=2, signal=1.0)
    res = paired_bootstrap_delta(folds, folds, n_boot=300, seed=1)
    assert res.delta == 0 and res.low <= 0 <= res.high and res.p_value == 1


def test_paired_bootstrap_separates_a_perfect_from_a_random_model():
    random = _folds(seed=4)
    perfect = [(t, e, -t) for t, e, _ in random]  # earlier event, higher risk: C = 1
    res = paired_bootstrap_delta(random, perfect, n_boot=500, seed=1)
    assert res.delta > 0.3 and res.low > 0 and res.p_value < 0.01
    flipped = paired_bootstrap_delta(perfect, random, n_boot=500, seed=1)
    assert flipped.delta == pytest.approx(-res.delta) and flipped.high < 0
    with pytest.raises(ValueError, match="align them by patient_id"):
        paired_bootstrap_delta(random, [(t[::-1], e[::-1], r) for t, e, r in random])


def test_matrix_cell_ci_covers_its_mean_of_pairs():
    folds = _folds(3, 30, seed=6, signal=1.0)
    rng = np.random.default_rng(0)
    cells = [(t, e, [r, r + rng.normal(size=len(r)), -r]) for t, e, r in folds]
    ci = mean_c_bootstrap_ci(cells, n_boot=300, seed=2)
    expected = np.mean([harrell_c(t, e, r) for t, e, rs in cells for r in rs])
    assert ci.mean == pytest.approx(expected) and ci.low < ci.mean < ci.high and ci.n_valid == 300
