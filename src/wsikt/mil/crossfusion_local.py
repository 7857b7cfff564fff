"""crossfusion_local: a parent-linked CrossFusion variant over three magnifications, e.g. 20x, 10x and 5x.

Every 10x patch is a query token that cross-attends to its 5x parent and its 2×2 20x children
(missing ones masked; a learned per-scale embedding marks which is which); the attended context
is fused into the query (residual + LayerNorm + feed-forward), then gated-attention pooling over
the 10x tokens → 512 → head. One encoder (Linear+ReLU) per magnification.

Unlike the paper's model (wsikt.mil.crossfusion) each token sees only its own parent and
children, not the whole slide: local, independent of patch order, and about 5× smaller.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wsikt.cohort.bags import Bag, as_patient_bag
from wsikt.core.model_facts import DEFAULT_SCALES
from wsikt.mil.base import (
    Aggregator,
    Batch,
    CrossAttention,
    GatedAttention,
    children_index,
    gather_rows,
    parent_index,
    project,
)


class CrossFusionLocal(Aggregator):
    """Middle-magnification tokens cross-attend to parent (coarse) and children (fine), fused, pooled."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, heads: int = 8,
                 attn_hidden: int = 384, scales: Sequence[str] = DEFAULT_SCALES["crossfusion_local"]) -> None:
        super().__init__()
        self.use_scales(scales, ("fine", "middle", "coarse"))
        self.encoders = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout)) for _ in scales)
        self.scale_embedding = nn.Parameter(torch.zeros(2, hidden))  # 0: coarse parent, 1: fine child
        self.cross = CrossAttention(hidden, heads, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.attention = GatedAttention(hidden, attn_hidden, dropout)
        self.classifier = nn.Linear(hidden, n_bins)

    def collate(self, bags: Sequence[Bag], device: torch.device) -> Batch:
        batch = super().collate(bags, device)
        pbs = [as_patient_bag(b) for b in bags]
        fine, mid, coarse = self.scales
        batch["children"], _ = children_index(pbs, fine, mid, batch["mask1"].shape[1], device)
        batch["parent"] = parent_index(pbs, mid, coarse, batch["mask1"].shape[1], device)
        return batch

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        e = [project(enc, batch, s) for s, enc in enumerate(self.encoders)]
        mask = batch["mask1"]
        kids, kid_ok = gather_rows(e[0], batch["children"])
        par, par_ok = gather_rows(e[2], batch["parent"].unsqueeze(-1))
        kv = torch.cat([par + self.scale_embedding[0], kids + self.scale_embedding[1]], dim=2)[mask]
        valid = torch.cat([par_ok, kid_ok], dim=2)[mask]
        q = e[1][mask]
        ctx = self.cross(q.unsqueeze(0), kv.unsqueeze(0), valid.unsqueeze(0)).squeeze(0)
        t = self.norm1(q + ctx)
        t = self.norm2(t + self.ffn(t))
        fused = e[1].new_zeros(e[1].shape)
        fused[mask] = t
        a = self.attention(fused, mask)
        emb = torch.bmm(a.unsqueeze(1), fused).squeeze(1)
        return {"logits": self.classifier(emb), "embedding": emb, "attention": a}
