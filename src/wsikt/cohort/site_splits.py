"""Site-preserved folds: every tissue-source site's patients in one test fold, folds balanced on events.

TCGA's tissue-source sites differ in stain and scanner; a site in both the training and the test
fold lets a model score by recognising the site (Howard et al., Nat Commun 2021, whose
"preserved-site" folds slideflow offers). Their folds come from a convex program; ours from a
greedy assignment (largest site first, to the fold that keeps event and censored counts closest to
an even share) refined by single-site moves and pairwise swaps, with no solver to install.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

_TCGA = re.compile(r"^TCGA-([A-Za-z0-9]{2})-")


def tcga_site(patient_id: str) -> str | None:
    """The tissue-source site code of a TCGA barcode (its second field: TCGA-XX-…), else None."""
    m = _TCGA.match(str(patient_id))
    return m.group(1) if m else None


def patient_sites(slides: pd.DataFrame, source: str = "sample sheet") -> dict[str, str]:
    """Patient → site: the sheet's ``site`` column where present, else the TCGA barcode's site code.

    A patient whose slides name two sites, or who has neither a site value nor a TCGA barcode,
    raises ValueError naming the patient and the fix.
    """
    has_col = "site" in slides.columns
    out: dict[str, str] = {}
    for row in slides.itertuples(index=False):
        pid = str(row.patient_id)
        value = getattr(row, "site") if has_col else None
        site = str(value) if value is not None and value == value and str(value) != "" else tcga_site(pid)
        if site is None:
            raise ValueError(f"{source}: patient {pid} has no site: splits.strategy site reads the TCGA barcode "
                             "(TCGA-XX-…) or a 'site' column; add the column to the sample sheet")
        if out.setdefault(pid, site) != site:
            raise ValueError(f"{source}: patient {pid} has slides from sites {out[pid]} and {site}; "
                             "a patient belongs to one site: correct the 'site' column")
    return out


def check_site_count(n_sites: int, n_folds: int, what: str, key: str = "experts.folds") -> None:
    """Fewer sites than folds cannot keep every site in one fold: ValueError naming the fix."""
    if n_sites < n_folds:
        raise ValueError(f"{what}: {n_sites} tissue-source site(s) cannot fill {n_folds} site-preserved folds; "
                         f"lower {key} or use splits.strategy stratified")


def _cost(counts: np.ndarray, target: np.ndarray) -> float:
    """Squared distance of each fold's (censored, event) counts from an even share."""
    return float(((counts - target) ** 2).sum())


def site_folds(sites: Iterable[str], events: Iterable[int], n_folds: int, seed: int = 42,
               what: str = "cohort", key: str = "experts.folds") -> np.ndarray:
    """Fold in [0, n_folds) of each patient (rows aligned with ``sites`` and ``events``); one fold per site.

    Deterministic for a given seed and input. Sites are placed largest first (ties in a seeded
    order) on the fold whose (censored, event) counts then stay closest to 1/n_folds of the
    totals; single-site moves and swaps that lower that distance follow. No fold is left empty.
    """
    site_arr = np.asarray([str(s) for s in sites])
    ev = np.asarray(list(events), dtype=int)
    names, inverse = np.unique(site_arr, return_inverse=True)
    check_site_count(len(names), n_folds, what, key)
    per_site = np.zeros((len(names), 2))
    np.add.at(per_site, (inverse, ev), 1)
    target = per_site.sum(axis=0) / n_folds
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-per_site[order].sum(axis=1), kind="stable")]
    fold_of = np.full(len(names), -1)
    counts = np.zeros((n_folds, 2))
    for i, s in enumerate(order):
        if i < n_folds:  # the n_folds largest sites open the folds, so none stays empty
            k = i
        else:
            costs = [_cost(counts + np.eye(n_folds)[k][:, None] * per_site[s], target) for k in range(n_folds)]
            k = int(np.argmin(costs))
        fold_of[s] = k
        counts[k] += per_site[s]
    _refine(fold_of, per_site, counts, target)
    return fold_of[inverse]


def _refine(fold_of: np.ndarray, per_site: np.ndarray, counts: np.ndarray, target: np.ndarray,
            max_rounds: int = 200) -> None:
    """Improve the assignment in place: the best single-site move or two-site swap, while one lowers the cost.

    Cost changes in closed form (d = fold counts − target, p = a site's counts): moving p from
    fold a to b changes the cost by 2p·(d_b − d_a) + 2|p|²; swapping p (in a) with q (in b) by
    2δ·(d_a − d_b) + 2|δ|², δ = q − p.
    """
    n_folds, n_sites = len(counts), len(fold_of)
    sq = (per_site ** 2).sum(axis=1)
    for _ in range(max_rounds):
        d = counts - target
        sizes = np.bincount(fold_of, minlength=n_folds)
        move = 2 * per_site @ d.T - 2 * (per_site * d[fold_of]).sum(axis=1)[:, None] + 2 * sq[:, None]
        move[np.arange(n_sites), fold_of] = np.inf
        move[sizes[fold_of] == 1, :] = np.inf  # never empty a fold
        delta = per_site[None, :, :] - per_site[:, None, :]  # [s, t] = p_t − p_s
        dd = d[fold_of][:, None, :] - d[fold_of][None, :, :]
        swap = 2 * (delta * dd).sum(axis=2) + 2 * (delta ** 2).sum(axis=2)
        swap[fold_of[:, None] == fold_of[None, :]] = np.inf
        s_move, b_move = np.unravel_index(np.argmin(move), move.shape)
        s_swap, t_swap = np.unravel_index(np.argmin(swap), swap.shape)
        best_move, best_swap = move[s_move, b_move], swap[s_swap, t_swap]
        if min(best_move, best_swap) > -1e-9:
            return
        if best_move <= best_swap:
            counts[fold_of[s_move]] -= per_site[s_move]
            counts[b_move] += per_site[s_move]
            fold_of[s_move] = b_move
        else:
            a, b = fold_of[s_swap], fold_of[t_swap]
            counts[a] += per_site[t_swap] - per_site[s_swap]
            counts[b] -= per_site[t_swap] - per_site[s_swap]
            fold_of[s_swap], fold_of[t_swap] = b, a


def make_site_splits(patients: pd.DataFrame, sites: Mapping[str, str], n_folds: int, seed: int = 42) -> pd.DataFrame:
    """Patients (rows: patient_id, time, event) with their ``site`` and a site-preserved test ``fold``."""
    df = patients.sort_values("patient_id").reset_index(drop=True).copy()
    cancer = str(df["cancer"].iloc[0]) if "cancer" in df and len(df) else "?"
    missing = [p for p in df["patient_id"] if str(p) not in sites]
    if missing:
        raise ValueError(f"cancer {cancer}: patient {missing[0]} has no site ({len(missing)} in all); "
                         "add it to the sample sheet's 'site' column")
    df["site"] = [sites[str(p)] for p in df["patient_id"]]
    df["fold"] = site_folds(df["site"], df["event"], n_folds, seed, what=f"cancer {cancer}")
    return df
