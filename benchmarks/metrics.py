#!/usr/bin/env python
"""Survival-metric benchmark: wsikt.survival.metrics against scikit-survival on one test fold, side by side.

    python benchmarks/metrics.py                 # whas500 (n=500) and a synthetic TCGA-size cohort
    python benchmarks/metrics.py --n 2000        # synthetic cohort size

For each metric it prints the seconds per call (best of --repeat), the ratio sksurv / wsikt and the
largest absolute difference of the values. The bootstrap row is the 1000-resample CI of Harrell's C
over a 3-fold split: wsikt's matrix form against scikit-survival called once per resample
(timed on 50 resamples, scaled to 1000).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from sksurv import metrics as sk
from sksurv.util import Surv

from wsikt.survival import metrics as M


def best(fn, repeat: int) -> tuple[float, object]:
    """Fastest wall time of ``repeat`` calls and the last result."""
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def cohort(name: str, n: int):
    """(time, event, risk) of whas500 (age as risk) or a synthetic exponential cohort with tied days."""
    if name == "whas500":
        from sksurv.datasets import load_whas500

        x, y = load_whas500()
        return y["lenfol"].astype(float), y["fstat"].astype(bool), x["age"].to_numpy(float)
    rng = np.random.default_rng(0)
    z = rng.normal(size=n)
    t_event = rng.exponential(1500 * np.exp(-0.7 * z))
    t_cens = rng.uniform(200, 5000, n)
    return np.round(np.minimum(t_event, t_cens)), t_event <= t_cens, z + 0.5 * rng.normal(size=n)


def run(name: str, t, e, r, repeat: int) -> None:
    te = np.arange(len(t)) % 3 == 1
    te[np.argmax(t)] = False
    tr = ~te
    y_tr, y_te = Surv.from_arrays(e[tr], t[tr]), Surv.from_arrays(e[te], t[te])
    times = np.percentile(t[te][e[te]], np.linspace(10, 80, 10))
    surv = np.exp(-np.outer(np.exp(r[te] - r.mean()), times) / np.median(t))
    tau = t[tr].max()
    rows = [
        ("Harrell C (all)", lambda: M.harrell_c(t, e, r), lambda: sk.concordance_index_censored(e, t, r)[0]),
        ("Uno C (test)", lambda: M.uno_c(t[tr], e[tr], t[te], e[te], r[te], tau),
         lambda: sk.concordance_index_ipcw(y_tr, y_te, r[te], tau)[0]),
        ("td-AUC mean", lambda: M.td_auc(t[tr], e[tr], t[te], e[te], r[te], times)[1],
         lambda: sk.cumulative_dynamic_auc(y_tr, y_te, r[te], times)[1]),
        ("IBS", lambda: M.integrated_brier(t[tr], e[tr], t[te], e[te], surv, times),
         lambda: sk.integrated_brier_score(y_tr, y_te, surv, times)),
    ]
    print(f"\n{name}: n={len(t)}, test n={te.sum()}, events {e.mean():.0%}")
    print(f"{'metric':<22}{'wsikt s':>10}{'sksurv s':>10}{'ratio':>8}{'|diff|':>10}")
    for label, ours, theirs in rows:
        a, va = best(ours, repeat)
        b, vb = best(theirs, repeat)
        print(f"{label:<22}{a:>10.4f}{b:>10.4f}{b / a:>8.1f}{abs(va - vb):>10.1e}")
    folds = [(t[np.arange(len(t)) % 3 == k], e[np.arange(len(t)) % 3 == k], r[np.arange(len(t)) % 3 == k]) for k in range(3)]
    a, ci = best(lambda: M.bootstrap_c_index(folds, 1000, 1), 1)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for f in folds:
        for _ in range(50):
            i = rng.integers(0, len(f[0]), len(f[0]))
            sk.concordance_index_censored(f[1][i], f[0][i], f[2][i])
    b = (time.perf_counter() - t0) * 20
    print(f"{'bootstrap CI ×1000':<22}{a:>10.4f}{b:>10.4f}{b / a:>8.1f}   C {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="synthetic cohort size")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    run("whas500", *cohort("whas500", 0), args.repeat)
    run("synthetic", *cohort("synthetic", args.n), args.repeat)


if __name__ == "__main__":
    main()
