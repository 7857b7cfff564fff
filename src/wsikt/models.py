"""MIL aggregators over padded, masked bags: (B, N, D) features + (B, N) mask → hazards and embedding.

Registry: a config name (experts.model) → class. Every model returns ``logits`` (B, T) and
``embedding`` (B, 512), the bag representation reused by transfer and routing.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttention(nn.Module):
    """Gated attention (Ilse et al.): a = w·(tanh(V h) ⊙ σ(U h)), softmax over the bag's valid instances."""

    def __init__(self, dim: int = 512, hidden: int = 384, dropout: float = 0.25) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.w(self.v(h) * self.u(h)).squeeze(-1)  # (B, N)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)


class ABMIL(nn.Module):
    """CROPKT's expert: Linear(D→512)+ReLU → gated attention (384, dropout 0.25) → Linear(512→T)."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, attn_hidden: int = 384, dropout: float = 0.25) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, dropout)
        self.classifier = nn.Linear(hidden, n_bins)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        a = self.attention(h, mask)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1), a

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, a = self.embed(x, mask)
        return {"logits": self.classifier(emb), "embedding": emb, "attention": a}


class PoolMIL(nn.Module):
    """Linear(D→512)+ReLU, then mean or max pooling over valid instances, then Linear(512→T)."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, pool: str = "mean") -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_bins)
        self.pool = pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(x)
        m = mask.unsqueeze(-1)
        if self.pool == "mean":
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            emb = h.masked_fill(~m, float("-inf")).max(1).values
        return {"logits": self.classifier(emb), "embedding": emb}


class Expert(nn.Module):
    """An aggregator behind a fixed per-feature affine normalisation (identity unless fit).

    The normalisation is part of the expert, so whoever reuses it (transfer, routing) feeds raw
    encoder features and gets exactly what the expert saw in training.
    """

    def __init__(self, aggregator: nn.Module, in_dim: int) -> None:
        super().__init__()
        self.aggregator = aggregator
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=1e-6))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.feature_mean) / self.feature_std
        return self.aggregator(x.masked_fill(~mask.unsqueeze(-1), 0.0), mask)


def build_model(name: str, in_dim: int, n_bins: int, dropout: float = 0.25) -> Expert:
    """Instantiate the aggregator registered under ``name`` (config key experts.model) as an Expert."""
    if name == "abmil":
        agg: nn.Module = ABMIL(in_dim, n_bins, dropout=dropout)
    elif name in ("mean", "max"):
        agg = PoolMIL(in_dim, n_bins, dropout=dropout, pool=name)
    else:
        raise KeyError(f"unknown aggregator '{name}' (config key experts.model); known: {', '.join(MODELS)}")
    return Expert(agg, in_dim)


MODELS = ("abmil", "mean", "max")


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length bags into (B, N_max, D) zeros-padded plus a (B, N_max) validity mask."""
    n_max = max(int(b.shape[0]) for b in bags)
    dim = int(bags[0].shape[1])
    x = bags[0].new_zeros((len(bags), n_max, dim))
    mask = torch.zeros((len(bags), n_max), dtype=torch.bool, device=bags[0].device)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    return x, mask
