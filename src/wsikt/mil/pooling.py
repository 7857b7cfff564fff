"""ABMIL (CROPKT's expert) and mean/max pooling."""

from __future__ import annotations

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, GatedAttention, bag_share, masked_softmax, project, unpack


class ABMIL(Aggregator):
    """CROPKT's expert: Linear(D→512)+ReLU → gated attention (384, dropout 0.25) → Linear(512→T).

    ``projection_dropout`` follows the feature projection; CROPKT has none there (0.0).
    """

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, attn_hidden: int = 384, dropout: float = 0.25,
                 projection_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(projection_dropout))
        self.attention = GatedAttention(hidden, attn_hidden, dropout)
        self.classifier = nn.Linear(hidden, n_bins)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag embedding (B, 512) and attention (B, N), zero on padding, from padded (B, N, D) features."""
        return self.embed_rows(x[mask], mask)

    def embed_rows(self, rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same from packed rows (M, D): every per-instance op runs on the M valid rows only."""
        h = self.fc(rows)
        a = masked_softmax(unpack(self.attention.scores(h), mask).squeeze(-1), mask, dim=1)
        bag = mask.nonzero()[:, 0]
        emb = h.new_zeros((mask.shape[0], h.shape[-1])).index_add(0, bag, a[mask].unsqueeze(-1) * h)
        return emb, a

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb, a = self.embed_rows(batch["rows0"], batch["mask0"])
        return {"logits": self.classifier(emb), "embedding": emb, "attention": a}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The gated-attention weights of the pooling (softmax over the bag's patches)."""
        return {self.scales[0]: out["attention"]}


class PoolMIL(Aggregator):
    """Linear(D→512)+ReLU, then mean or max pooling over valid instances, then Linear(512→T) (CROPKT's DeepMIL).

    ``dropout`` is unused (there is no attention); ``projection_dropout`` follows the projection (CROPKT: none).
    """

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, pool: str = "mean",
                 projection_dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"pool '{pool}' must be 'mean' or 'max'")
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(projection_dropout))
        self.classifier = nn.Linear(hidden, n_bins)
        self.pool = pool

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]
        h = project(self.fc, batch)
        m = mask.unsqueeze(-1)
        if self.pool == "mean":
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            emb = h.masked_fill(~m, float("-inf")).max(1).values
        return {"logits": self.classifier(emb), "embedding": emb}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean: every valid patch 1/N (the pooling weighs all alike). Max: the share of the 512
        embedding features whose maximum the patch holds (the patches the max actually reads)."""
        mask = batch["mask0"]
        if self.pool == "mean":
            return {self.scales[0]: bag_share(mask.to(out["embedding"].dtype), mask)}
        h = project(self.fc, batch).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        winners = torch.nn.functional.one_hot(h.argmax(1), mask.shape[1]).sum(1)  # (B, N): features each patch wins
        return {self.scales[0]: bag_share(winners.to(out["embedding"].dtype), mask)}
