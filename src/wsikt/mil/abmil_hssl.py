"""ABMIL as HistoSSLscaling builds it (``conf/.../model/abmil.yaml``), beside CROPKT's ``abmil``.

A linear tile embedding (D→128, no activation), gated attention on it (tanh and sigmoid branches
128→128, a score 128→1, softmax over the bag's tiles, temperature 1, no dropout), the attention-
weighted mean embedding, then an MLP 128→128→64→T with ReLU. The 512-d embedding for transfer
and routing is the 128-d bag vector zero-padded (``FixedProjection``); it never feeds the logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, FixedProjection, masked_softmax, mlp, unpack


class ABMILHSSL(Aggregator):
    """Linear tile embedding → gated attention → attention-weighted mean → MLP → logits (B, T)."""

    def __init__(self, in_dim: int, n_bins: int, dropout: float = 0.0, d_model: int = 128, temperature: float = 1.0,
                 mlp_hidden: Sequence[int] = (128, 64), mlp_activation: str = "relu", mlp_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, d_model)
        self.att = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, d_model)
        self.w = nn.Linear(d_model, 1)
        self.temperature = temperature
        self.mlp = mlp(d_model, mlp_hidden, n_bins, mlp_activation, mlp_dropout)
        self.to_embedding = FixedProjection(d_model)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = self.embed(batch["rows0"])  # (M, d) valid tiles only
        score = self.w(torch.tanh(self.att(h)) * torch.sigmoid(self.gate(h))) / self.temperature
        a = masked_softmax(unpack(score, mask).squeeze(-1), mask, dim=1)  # (B, N)
        bag = torch.bmm(a.unsqueeze(1), unpack(h, mask)).squeeze(1)  # (B, d)
        return {"logits": self.mlp(bag), "embedding": self.to_embedding(bag), "attention": a}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gated-attention weights of the pooling (softmax over the bag's tiles)."""
        return {self.scales[0]: out["attention"]}
