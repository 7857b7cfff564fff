"""Chowder (Courtiol et al. 2018) as HistoSSLscaling builds it: per-tile scores, top-R and bottom-R → MLP.

HistoSSLscaling's ``conf/.../model/chowder.yaml`` (the defaults here): a tile-score MLP on the raw
features (D→128, Sigmoid, →T: one score channel per output); per channel the 10 highest and 10
lowest tile scores (0 where the bag has fewer tiles); one MLP shared by the channels
(20→128→64→1, Sigmoid, no dropout); Xavier-uniform weights and zero biases in both MLPs.

The 512-d embedding (for transfer and routing; it never feeds the logits): the mean feature vector
of the tiles selected by the channel-averaged score (its n_top highest and n_bottom lowest), through
a fixed projection to 512 (identity and zero padding when D ≤ 512; see ``FixedProjection``).

wsikt's earlier variant stays reachable through experts.model_params: ``projection: 512`` (a
Linear(D→512)+ReLU+Dropout tile projection first), ``tile_activation: relu``, ``n_top/n_bottom: 5``,
``mlp_dropout: 0.25``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, FixedProjection, mlp, packed, project, tile_projection


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
    parts, rows = [], []
    for k, largest, fill in ((n_top, True, float("-inf")), (n_bottom, False, float("inf"))):
        if k:
            v, i = scores.masked_fill(~m, fill).topk(k, dim=1, largest=largest)
            parts.append(v.masked_fill(v.isinf(), 0.0))
            rows.append(i.masked_fill(v.isinf(), -1))
    return torch.cat(parts, dim=1), torch.cat(rows, dim=1)


class Chowder(Aggregator):
    """Tile scores (T channels) → each channel's extreme scores → shared MLP → logits (B, T)."""

    def __init__(self, in_dim: int, n_bins: int, dropout: float = 0.25, n_top: int = 10, n_bottom: int = 10,
                 tile_hidden: Sequence[int] = (128,), mlp_hidden: Sequence[int] = (128, 64), tile_activation: str = "sigmoid",
                 mlp_activation: str = "sigmoid", mlp_dropout: float = 0.0, projection: int = 0) -> None:
        super().__init__()
        if n_top < 0 or n_bottom < 0 or n_top + n_bottom == 0:
            raise ValueError(f"Chowder needs n_top + n_bottom > 0 (got {n_top}, {n_bottom}; experts.model_params)")
        self.n_top, self.n_bottom = n_top, n_bottom
        self.fc, width = tile_projection(in_dim, projection, dropout)  # wsikt's earlier variant when projection > 0
        self.score = mlp(width, tile_hidden, n_bins, tile_activation)
        self.mlp = mlp(n_top + n_bottom, mlp_hidden, 1, mlp_activation, mlp_dropout)
        self.score.apply(_xavier)
        self.mlp.apply(_xavier)
        self.to_embedding = FixedProjection(width)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = project(self.fc, batch)  # (B, N, D or projection)
        s = packed(self.score, h, mask)  # (B, N, T)
        ext, _ = extremes(s, mask, self.n_top, self.n_bottom)  # (B, R, T)
        logits = self.mlp(ext.transpose(1, 2)).squeeze(-1)
        _, rows = extremes(s.mean(-1), mask, self.n_top, self.n_bottom)  # (B, R)
        picked = torch.gather(h, 1, rows.clamp(min=0).unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        w = (rows >= 0).unsqueeze(-1).to(h.dtype)
        emb = (picked * w).sum(1) / w.sum(1).clamp(min=1)
        return {"logits": logits, "embedding": self.to_embedding(emb)}
