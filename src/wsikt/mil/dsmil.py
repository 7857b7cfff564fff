"""DSMIL (Li et al. 2021) as in HistoSSLscaling, with a survival head of T channels.

Tile projection Linear(D→512)+ReLU (the values v_i); instance classifier Linear(512→T) (max-pooling
stream); per channel the critical instance = highest-scoring tile; queries q_i = MLP(512→128→128,
tanh); attention of every tile relative to the critical one softmax(⟨q_i, q_crit⟩/√128); bag
classifier: Linear(512→1) shared by the channels on each channel's pooled vector. Logits = mean of
the critical-instance score and the bag score (HistoSSLscaling's out_logits="mean"). Embedding
(512): the pooled vectors averaged over channels.
"""

from __future__ import annotations

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, masked_softmax, packed, project


class DSMIL(Aggregator):
    """Dual-stream MIL: critical-instance stream + attention-relative-to-critical bag stream."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, d_query: int = 128) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.instance = nn.Linear(hidden, n_bins)
        self.query = nn.Sequential(nn.Linear(hidden, d_query), nn.ReLU(), nn.Linear(d_query, d_query), nn.Tanh())
        self.bag = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.d_query = d_query

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = project(self.fc, batch)  # values (B, N, 512)
        c = packed(self.instance, h, mask)  # instance scores (B, N, T)
        crit_score, crit = c.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1)  # (B, T)
        q = packed(self.query, h, mask)  # (B, N, dq)
        q_crit = torch.gather(q, 1, crit.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # (B, T, dq)
        logits_att = torch.einsum("btd,bnd->btn", q_crit, q) / self.d_query ** 0.5
        a = masked_softmax(logits_att, mask.unsqueeze(1), dim=-1)  # (B, T, N)
        pooled = torch.bmm(a, h)  # (B, T, 512)
        bag_score = self.bag(pooled).squeeze(-1)
        return {"logits": 0.5 * (crit_score + bag_score), "embedding": pooled.mean(1), "attention": a}
