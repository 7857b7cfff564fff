"""Chowder (Courtiol et al. 2018) as in HistoSSLscaling: per-tile scores, top-R and bottom-R → MLP.

A tile projection Linear(D→512)+ReLU comes first; the tile-score MLP (512→128→T, one score
channel per output as HistoSSLscaling's ``out_features``) reads it. Each channel's n_top highest and
n_bottom lowest tile scores (missing ones when the bag is smaller are 0) go through one MLP
(R→128→64→1, sigmoid activations) shared by the channels. Embedding (512): the mean projection of
the tiles selected by the channel-averaged score (its n_top highest and n_bottom lowest).
"""

from __future__ import annotations

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, packed, project


def _xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def extremes(scores: torch.Tensor, mask: torch.Tensor, n_top: int, n_bottom: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n_top then bottom-n_bottom values along dim 1 of (B, N, C) over valid rows (missing → 0), and their rows."""
    short = max(n_top, n_bottom) - scores.shape[1]
    if short > 0:  # fewer slots than extremes: pad with masked rows (they come out as 0, like missing tiles)
        scores = torch.cat([scores, scores.new_zeros((scores.shape[0], short, *scores.shape[2:]))], dim=1)
        mask = torch.cat([mask, mask.new_zeros((mask.shape[0], short))], dim=1)
    m = mask.unsqueeze(-1) if scores.dim() == 3 else mask
    top, top_i = scores.masked_fill(~m, float("-inf")).topk(n_top, dim=1)
    bottom, bottom_i = scores.masked_fill(~m, float("inf")).topk(n_bottom, dim=1, largest=False)
    values = torch.cat([top.masked_fill(top.isinf(), 0.0), bottom.masked_fill(bottom.isinf(), 0.0)], dim=1)
    valid = torch.cat([~top.isinf(), ~bottom.isinf()], dim=1)
    return values, torch.cat([top_i, bottom_i], dim=1).masked_fill(~valid, -1)


class Chowder(Aggregator):
    """Tile projection → tile scores (T channels) → extreme scores → shared MLP → logits (B, T)."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, n_top: int = 5, n_bottom: int = 5,
                 tile_hidden: int = 128, mlp_hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        self.n_top, self.n_bottom = n_top, n_bottom
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.score = nn.Sequential(nn.Linear(hidden, tile_hidden), nn.ReLU(), nn.Linear(tile_hidden, n_bins))
        layers: list[nn.Module] = []
        width = n_top + n_bottom
        for w in mlp_hidden:
            layers += [nn.Linear(width, w), nn.Sigmoid(), nn.Dropout(dropout)]
            width = w
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.score.apply(_xavier)
        self.mlp.apply(_xavier)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = project(self.fc, batch)
        s = packed(self.score, h, mask)  # (B, N, T)
        ext, _ = extremes(s, mask, self.n_top, self.n_bottom)  # (B, R, T)
        logits = self.mlp(ext.transpose(1, 2)).squeeze(-1)
        _, rows = extremes(s.mean(-1), mask, self.n_top, self.n_bottom)  # (B, R)
        picked = torch.gather(h, 1, rows.clamp(min=0).unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        w = (rows >= 0).unsqueeze(-1).to(h.dtype)
        emb = (picked * w).sum(1) / w.sum(1).clamp(min=1)
        return {"logits": logits, "embedding": emb}
