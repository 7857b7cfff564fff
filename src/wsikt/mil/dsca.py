"""DSCA-style dual-stream model (Liu et al. 2023) over two magnifications, e.g. 20x (fine) and 5x (coarse).

Each coarse patch is a token; its r×r aligned fine children (r = 4 at 20x/5x, placed in their grid
cells from the coords, empty cells masked) are "square pooled": a depthwise 3×3 conv over the
child grid, then cross-attention with the coarse token as the query. One encoder
(Linear+ReLU) per stream, sum fusion, gated-attention pooling over coarse tokens → 512 → head.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wsikt.cohort.bags import Bag, as_patient_bag
from wsikt.core.model_facts import DEFAULT_SCALES
from wsikt.mil.base import Aggregator, Batch, CrossAttention, GatedAttention, children_index, gather_rows, project


class DSCA(Aggregator):
    """Fine stream square-pooled into coarse tokens (conv + cross-attention), summed, gated-attention pooled."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, heads: int = 8,
                 attn_hidden: int = 384, scales: Sequence[str] = DEFAULT_SCALES["dsca"]) -> None:
        super().__init__()
        self.use_scales(scales, ("fine", "coarse"))
        self.enc_fine = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.enc_coarse = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.cross = CrossAttention(hidden, heads, dropout)
        self.attention = GatedAttention(hidden, attn_hidden, dropout)
        self.classifier = nn.Linear(hidden, n_bins)

    def collate(self, bags: Sequence[Bag], device: torch.device) -> Batch:
        batch = super().collate(bags, device)
        pbs = [as_patient_bag(b) for b in bags]
        batch["children"], _ = children_index(pbs, self.scales[0], self.scales[1], batch["mask1"].shape[1], device)
        return batch

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask1"]
        fine = project(self.enc_fine, batch, 0)
        coarse = project(self.enc_coarse, batch, 1)
        kids, valid = gather_rows(fine, batch["children"])  # (B, Nc, r², H)
        q, kids, valid = coarse[mask], kids[mask], valid[mask]  # only real coarse tokens
        m, k, h = kids.shape
        r = int(round(k ** 0.5))
        grid = kids.transpose(1, 2).reshape(m, h, r, r)
        kids = kids + self.conv(grid).reshape(m, h, k).transpose(1, 2) * valid.unsqueeze(-1)
        pooled = self.cross(q.unsqueeze(0), kids.unsqueeze(0), valid.unsqueeze(0)).squeeze(0)
        fused = torch.zeros_like(coarse)
        fused[mask] = q + pooled
        a = self.attention(fused, mask)
        emb = torch.bmm(a.unsqueeze(1), fused).squeeze(1)
        return {"logits": self.classifier(emb), "embedding": emb, "attention": a}
