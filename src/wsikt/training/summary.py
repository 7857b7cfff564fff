"""Per-cancer summaries of fold metrics (experts, ROUPKT, baselines): mean ± sd of test C over folds."""

from __future__ import annotations

import numpy as np
import pandas as pd


def summarise_experts(metrics: list[dict]) -> pd.DataFrame:
    """One row per cancer: mean ± sd of test C over folds, per-fold values (experts: how many folds are null models)."""
    df = pd.DataFrame(metrics)
    rows = []
    for cancer, g in df.groupby("cancer", sort=True):
        g = g.sort_values("fold")
        c = g["c_index_test"].astype(float)
        rows.append(
            {"cancer": cancer, "model": g["model"].iloc[0], "n_patients": int(g["n_train"].iloc[0] + g["n_test"].iloc[0]),
             "n_events": int(g["events_test"].sum()), "folds": len(g),
             "c_index_mean": float(np.nanmean(c)), "c_index_sd": float(np.nanstd(c, ddof=1)) if c.notna().sum() > 1 else float("nan"),
             "c_index_folds": ",".join(f"{v:.4f}" for v in c)}
        )
        if "null" in g:  # gated models (experts, ROUPKT): folds the null gate made the null model
            rows[-1]["null_folds"] = int(g["null"].fillna(False).astype(bool).sum())
    return pd.DataFrame(rows)
