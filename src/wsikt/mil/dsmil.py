"""DSMIL (Li et al. 2021) as HistoSSLscaling builds it, with one output channel per survival column.

HistoSSLscaling's ``conf/.../model/dsmil.yaml`` (the defaults here), all MLPs with Sigmoid:
- max-pooling stream: tile scores MLP (D→200→100→T); per channel the critical tile = the
  highest-scoring one, its score the stream's logit;
- attention stream: queries q_i = MLP(D→200→100→32); values v_i = the raw features;
  attention of every tile relative to the critical one softmax_i(⟨q_i, q_crit⟩) (no 1/√d);
  pooled vector Σ a_i v_i; bag score MLP(D→200→100→1) shared by the channels;
- logits = mean of the two streams' scores (``out_logits: mean``).

The 512-d embedding (for transfer and routing; it never feeds the logits): the pooled vectors
averaged over channels (D wide with raw values), through a fixed projection to 512 (identity and
zero padding when D ≤ 512; see ``FixedProjection``).

Options (experts.model_params): ``values: mlp`` (values from an MLP to ``d_values``, HistoSSLscaling's
passing_values), ``scale_attention: true`` (1/√d_query), ``projection: 512`` (wsikt's earlier variant:
a Linear(D→512)+ReLU+Dropout tile projection first), ``mlp_dropout``, ``out_logits: bag | max``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from wsikt.mil.base import (
    Aggregator,
    Batch,
    FixedProjection,
    bag_share,
    masked_softmax,
    mlp,
    packed,
    project,
    tile_projection,
)

OUT_LOGITS = ("mean", "bag", "max")


class DSMIL(Aggregator):
    """Dual-stream MIL: critical-instance stream + attention-relative-to-critical bag stream."""

    def __init__(self, in_dim: int, n_bins: int, dropout: float = 0.25, d_query: int = 32, d_values: int = 32, values: str = "raw",
                 scores_hidden: Sequence[int] = (200, 100), queries_hidden: Sequence[int] = (200, 100),
                 values_hidden: Sequence[int] = (), mlp_hidden: Sequence[int] = (200, 100), activation: str = "sigmoid",
                 mlp_dropout: float = 0.0, scale_attention: bool = False, out_logits: str = "mean", projection: int = 0) -> None:
        super().__init__()
        if values not in ("raw", "mlp"):
            raise ValueError(f"DSMIL values '{values}' must be 'raw' (the features) or 'mlp' (experts.model_params)")
        if out_logits not in OUT_LOGITS:
            raise ValueError(f"DSMIL out_logits '{out_logits}' must be one of {', '.join(OUT_LOGITS)} (experts.model_params)")
        self.fc, width = tile_projection(in_dim, projection, dropout)  # wsikt's earlier variant when projection > 0
        self.scores = mlp(width, scores_hidden, n_bins, activation)
        self.queries = mlp(width, queries_hidden, d_query, activation)
        self.values = mlp(width, values_hidden, d_values, activation) if values == "mlp" else None
        value_dim = d_values if values == "mlp" else width
        self.bag = mlp(value_dim, mlp_hidden, 1, activation, mlp_dropout)
        self.scale = d_query ** -0.5 if scale_attention else 1.0
        self.out_logits = out_logits
        self.to_embedding = FixedProjection(value_dim)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = project(self.fc, batch)  # (B, N, D or projection)
        c = packed(self.scores, h, mask)  # instance scores (B, N, T)
        crit_score, crit = c.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1)  # (B, T)
        q = packed(self.queries, h, mask)  # (B, N, dq)
        v = h if self.values is None else packed(self.values, h, mask)  # (B, N, Dv)
        q_crit = torch.gather(q, 1, crit.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # (B, T, dq)
        a = masked_softmax(torch.einsum("btd,bnd->btn", q_crit, q) * self.scale, mask.unsqueeze(1), dim=-1)  # (B, T, N)
        pooled = torch.bmm(a, v)  # (B, T, Dv)
        bag_score = self.bag(pooled).squeeze(-1)  # (B, T)
        logits = {"mean": 0.5 * (crit_score + bag_score), "bag": bag_score, "max": crit_score}[self.out_logits]
        return {"logits": logits, "embedding": self.to_embedding(pooled.mean(1)), "attention": a}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The bag stream's attention relative to each output's critical tile, averaged over the outputs."""
        return {self.scales[0]: bag_share(out["attention"].mean(1), batch["mask0"])}
