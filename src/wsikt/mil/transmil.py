"""TransMIL (Shao et al. 2021): class token, two Nyström-attention layers with a PPEG conv position encoding.

Each bag's tokens are squared (the first tokens repeated up to ⌈√N⌉², as in the reference code)
and laid out row-major on its own ⌈√N⌉ grid; landmarks, the pseudo-inverse scaling and the grid
are all computed per bag, so a bag gives the same output alone or padded in a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from wsikt.mil.base import Aggregator, Batch, masked_softmax, project


def moore_penrose(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative pseudo-inverse (Razavi et al.) of each (…, m, m) matrix, scaled per matrix."""
    a = x.abs()
    scale = a.sum(-1).amax(-1) * a.sum(-2).amax(-1)
    z = x.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Nyström self-attention (Xiong et al. 2021) over valid tokens (a contiguous prefix of each row).

    Landmarks are means of ``landmarks`` consecutive segments of each bag's own tokens (each token
    its own landmark when the bag is shorter); a depthwise conv over values adds the residual path.
    """

    def __init__(self, dim: int = 512, heads: int = 8, landmarks: int = 256, pinv_iters: int = 6, conv_kernel: int = 33, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads, self.dh, self.m, self.iters = heads, dim // heads, landmarks, pinv_iters
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = (t.view(b, length, self.heads, self.dh).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        tok = mask[:, None, :, None]
        q, k, v = q * self.dh ** -0.5 * tok, k * tok, v * tok
        n = mask.sum(1, keepdim=True)  # (B, 1)
        # landmark slots: m, or fewer when every bag is shorter (unused slots change nothing, see below)
        m = min(self.m, int(n.max()))
        pos = torch.arange(length, device=x.device).unsqueeze(0)
        seg = torch.where(mask, pos * self.m // n.clamp(min=self.m), m)  # (B, L); slot m = padding
        idx = seg[:, None, :, None].expand(b, self.heads, length, self.dh)
        q_l = q.new_zeros(b, self.heads, m + 1, self.dh).scatter_add(2, idx, q)[:, :, :m]
        k_l = k.new_zeros(b, self.heads, m + 1, self.dh).scatter_add(2, idx, k)[:, :, :m]
        count = torch.zeros(b, m + 1, device=x.device, dtype=x.dtype).scatter_add(1, seg, mask.to(x.dtype))[:, :m]
        valid_l = count > 0  # (B, m)
        q_l = q_l / count.clamp(min=1)[:, None, :, None]
        k_l = k_l / count.clamp(min=1)[:, None, :, None]
        cols = valid_l[:, None, None, :]
        attn1 = masked_softmax(q @ k_l.transpose(-1, -2), cols)  # (B, h, L, m)
        attn2 = masked_softmax(q_l @ k_l.transpose(-1, -2), cols)  # (B, h, m, m)
        # unused landmarks: an identity block, so pinv acts on the used ones alone; its scaling (max row
        # and column sums) is that of the used block, whose row sums are 1 and largest column sum ≥ 1
        eye = torch.eye(m, device=x.device, dtype=x.dtype)
        attn2 = torch.where(valid_l[:, None, :, None], attn2, eye)
        attn3 = masked_softmax(q_l @ k.transpose(-1, -2), mask[:, None, None, :]) * valid_l[:, None, :, None]
        out = (attn1 @ moore_penrose(attn2, self.iters)) @ (attn3 @ v) + self.res_conv(v)
        return self.out(out.transpose(1, 2).reshape(b, length, -1))


class TransLayer(nn.Module):
    """Pre-norm residual Nyström attention block."""

    def __init__(self, dim: int, heads: int, landmarks: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads, landmarks, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x + self.attn(self.norm(x), mask)) * mask.unsqueeze(-1)


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise 7/5/3 convs on each bag's token grid, plus identity."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, tok_mask: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        b, length, dim = tokens.shape
        s = int(side.max())
        j = torch.arange(length, device=tokens.device).unsqueeze(0)
        cell = torch.where(tok_mask, (j // side.unsqueeze(1)) * s + j % side.unsqueeze(1), s * s)  # s*s = dump
        canvas = tokens.new_zeros(b, s * s + 1, dim).scatter(1, cell.unsqueeze(-1).expand(-1, -1, dim), tokens)
        grid = canvas[:, : s * s].transpose(1, 2).reshape(b, dim, s, s)
        grid = grid + sum(conv(grid) for conv in self.convs)
        flat = torch.cat([grid.flatten(2).transpose(1, 2), tokens.new_zeros(b, 1, dim)], dim=1)
        return torch.gather(flat, 1, cell.unsqueeze(-1).expand(-1, -1, dim)) * tok_mask.unsqueeze(-1)


class TransMIL(Aggregator):
    """Linear(D→512)+ReLU → [CLS] + squared tokens → Nyström layer → PPEG → Nyström layer → LayerNorm(CLS) → Linear(512→T)."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.25, heads: int = 8,
                 landmarks: int = 256, attn_dropout: float | None = None) -> None:
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout  # reference code: 0.1
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layer1 = TransLayer(hidden, heads, landmarks, attn_dropout)
        self.ppeg = PPEG(hidden)
        self.layer2 = TransLayer(hidden, heads, landmarks, attn_dropout)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, n_bins)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask0"]  # valid rows are a prefix of each bag (collate)
        h = project(self.fc, batch)
        n = mask.sum(1).clamp(min=1)
        side = torch.ceil(torch.sqrt(n.double())).long()
        length = int((side * side).max())
        j = torch.arange(length, device=mask.device).unsqueeze(0)
        tok_mask = j < (side * side).unsqueeze(1)
        idx = torch.where(j < n.unsqueeze(1), j, (j - n.unsqueeze(1)) % n.unsqueeze(1))  # repeat the first tokens
        idx = torch.where(tok_mask, idx, 0)
        tokens = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1])) * tok_mask.unsqueeze(-1)
        seq_mask = torch.cat([torch.ones_like(tok_mask[:, :1]), tok_mask], dim=1)
        seq = torch.cat([self.cls_token.expand(len(mask), -1, -1), tokens], dim=1)
        seq = self.layer1(seq, seq_mask)
        seq = torch.cat([seq[:, :1], self.ppeg(seq[:, 1:], tok_mask, side)], dim=1)
        seq = self.layer2(seq, seq_mask)
        emb = self.norm(seq[:, 0])
        return {"logits": self.classifier(emb), "embedding": emb}
