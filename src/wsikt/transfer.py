"""Zero-shot cross-cancer transfer: every source expert, unchanged, ranks every target's test patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wsikt.experts import load_expert, predict
from wsikt.survival import harrell_c, risk_from_survival


def transfer_long(
    experts: dict[tuple[str, int], str],
    targets: dict[str, tuple[pd.DataFrame, list[np.ndarray]]],
    device: torch.device,
) -> pd.DataFrame:
    """C-index for every (source, source fold, target, target fold).

    ``experts`` maps (cancer, fold) → checkpoint; ``targets`` maps cancer → (split table, bags).
    For source == target only the fold-matched expert is scored on its own test fold (the expert
    never saw those patients); other sources are scored on every target test fold.
    """
    rows = []
    for (source, sfold), ckpt in sorted(experts.items()):
        model = load_expert(ckpt, device)
        for target, (split, bags) in sorted(targets.items()):
            surv, _ = predict(model, bags, device)
            risk = risk_from_survival(surv)
            for tfold in sorted(split["fold"].unique()):
                if source == target and tfold != sfold:
                    continue
                test = (split["fold"] == tfold).to_numpy()
                rows.append(
                    {"source": source, "source_fold": sfold, "target": target, "target_fold": int(tfold),
                     "c_index": harrell_c(split["time"].to_numpy()[test], split["event"].to_numpy()[test], risk[test])}
                )
    return pd.DataFrame(rows)


def transfer_matrix(long: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd C-index per (source, target); diagonal = cancer-specific experts."""
    g = long.groupby(["source", "target"])["c_index"]
    out = g.agg(c_index_mean="mean", c_index_sd="std", n=lambda s: int(s.notna().sum())).reset_index()
    return out
