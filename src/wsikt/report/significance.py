"""The statistics stage's tables arranged for the page: chance references beside each C, intervals beside each Δ.

Reads ``results/stats/`` only (``wsikt.formats.stats_tables``); every column added here is empty
(NaN, flag False) when the stats files are absent, so a page without them still renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from wsikt.formats.stats_tables import read_stats_table
from wsikt.stats.tables import retrained_summary

CHANCE_COLUMNS = {"null_mean": "perm_null_mean", "null_sd": "perm_null_sd", "p_above": "perm_p", "p_below": "perm_p_below",
                  "n_perm": "perm_n", "below_chance": "below_chance"}
RETRAINED_COLUMNS = ["retrained_n", "retrained_mean", "retrained_sd", "retrained_p_above", "retrained_p_below"]


def read_stats(chance: Path | None, compare: Path | None, matrix_ci: Path | None,
               retrained: Sequence[Path] = ()) -> dict[str, pd.DataFrame]:
    """The stats tables (empty frames for absent files), with the retrained null summarised per (method, cancer)."""
    tables = {kind: read_stats_table(p, kind) if p else pd.DataFrame()
              for kind, p in (("chance", chance), ("compare", compare), ("matrix_ci", matrix_ci))}
    frames = [read_stats_table(p, "retrained_null") for p in retrained]
    tables["retrained"] = (retrained_summary(pd.concat(frames, ignore_index=True), tables["chance"])
                           if frames and len(tables["chance"]) else pd.DataFrame(columns=["method", "cancer", *RETRAINED_COLUMNS]))
    return tables


def _method_rows(stats: dict[str, pd.DataFrame], method: str) -> pd.DataFrame:
    """Per cancer: ``method``'s chance reference (and retrained null) columns."""
    chance = stats["chance"]
    out = (chance[chance["method"] == method].rename(columns=CHANCE_COLUMNS)[["cancer", *CHANCE_COLUMNS.values()]]
           if len(chance) else pd.DataFrame(columns=["cancer", *CHANCE_COLUMNS.values()]))
    r = stats["retrained"]
    if len(r):
        out = out.merge(r[r["method"] == method][["cancer", *RETRAINED_COLUMNS]], on="cancer", how="left")
    return out


def _fill(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    for c in columns:
        if c not in df:
            df[c] = False if c.endswith("below_chance") else np.nan
    for c in (c for c in df.columns if c.endswith("below_chance")):
        df[c] = df[c].astype("boolean").fillna(False).astype(bool)
    return df


def with_expert_chance(experts: pd.DataFrame, stats: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The experts table plus each cancer's permutation reference (and retrained null)."""
    out = experts.merge(_method_rows(stats, "expert"), on="cancer", how="left")
    return _fill(out, [*CHANCE_COLUMNS.values(), *RETRAINED_COLUMNS])


def with_comparisons(roupkt: pd.DataFrame, stats: dict[str, pd.DataFrame], methods: Sequence[str]) -> pd.DataFrame:
    """The ROUPKT table plus, for ROUPKT and each baseline ``m``: its chance reference and the paired
    bootstrap CI and p of its difference to the own expert (``roupkt_*`` / ``{m}_*`` columns)."""
    out = roupkt.copy()
    cmp = stats["compare"]
    cols = []
    for m in ["roupkt", *methods]:
        rows = _method_rows(stats, m).rename(columns=lambda c: c if c == "cancer" else f"{m}_{c}")
        if len(cmp):
            d = cmp[cmp["method"] == m][["cancer", "delta", "ci_low", "ci_high", "p_value"]]
            rows = rows.merge(d.rename(columns=lambda c: c if c == "cancer" else f"{m}_{c}"), on="cancer", how="outer")
        out = out.merge(rows, on="cancer", how="left") if len(rows) else out
        cols += [f"{m}_{c}" for c in (*CHANCE_COLUMNS.values(), *RETRAINED_COLUMNS, "delta", "ci_low", "ci_high", "p_value")]
    return _fill(out, cols)


def matrix_intervals(stats: dict[str, pd.DataFrame]) -> dict[str, dict[str, tuple[float, float, bool]]]:
    """source → target → (CI low, CI high, below chance) of each transfer-matrix cell; empty without the file."""
    m = stats["matrix_ci"]
    out: dict[str, dict[str, tuple[float, float, bool]]] = {}
    for r in m.itertuples():
        out.setdefault(r.source, {})[r.target] = (float(r.ci_low), float(r.ci_high), bool(r.below_chance))
    return out
