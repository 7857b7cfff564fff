"""CrossFusion (Soraki et al. 2025) as in its code (RustinS/CrossFusion, models/CrossFusion.py).

Per patient: every 10x token attends to all 5x tokens and, through a second block, to all 20x
tokens (no parent links; each block adds its own learned scale embedding to queries and keys).
The three token sets (10x, 10x-with-5x-context, 10x-with-20x-context) are squared to ⌈√N⌉²
tokens (the first ones repeated) and each runs through its own TransMIL-like transformer
(full-attention layers, a PPEG conv position encoding on the row-major token grid, more layers,
LayerNorm). A learned 3→1 conv mixes the streams, grouped 7/5/3 convs halve the width, a
Linear+LayerNorm restores it, and a last transformer reads a class token out.

``embedding`` is that LayerNorm-ed class token (``hidden`` wide, 512 by default); ``logits`` is
a Linear of it. The grid depends on each patient's 10x token count and order, so patients are
run one by one inside a batch: a patient's output never depends on who shares its batch.
Attention dropout (0.2) acts in training only; the reference keeps it on at evaluation. In
training each patient is checkpointed (``checkpointing``): a step of 32 patients holds one
patient's activations at a time, recomputed in the backward pass with the same dropout masks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wsikt.core.model_facts import DEFAULT_SCALES
from wsikt.mil.base import Aggregator, Batch


class Attention(nn.Module):
    """Multi-head scaled dot-product attention of ``x`` over ``context``; dropout on the weights in training only."""

    def __init__(self, dim: int, heads: int, attn_dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"CrossFusion width {dim} must be divisible by heads {heads} (experts.model_params)")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        p = self.attn_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(context)), heads(self.v(context)), dropout_p=p)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


def feed_forward(dim: int, ratio: float, dropout: float) -> nn.Sequential:
    """Linear → GELU → Dropout → Linear → Dropout, ``ratio``× wide inside."""
    inner = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim), nn.Dropout(dropout))


class ScaleCrossBlock(nn.Module):
    """10x queries attend to every token of one other magnification; residual, LayerNorm, residual feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float, mlp_ratio: float) -> None:
        super().__init__()
        self.scale_embedding = nn.Parameter(nn.init.trunc_normal_(torch.zeros(dim), std=0.02))
        self.attn = Attention(dim, heads, 0.0)  # the reference's cross-attention has no dropout
        self.norm = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, mlp_ratio, dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = self.norm(query + self.attn(query + self.scale_embedding, context + self.scale_embedding))
        return t + self.ffn(t)


class EncoderLayer(nn.Module):
    """The reference's layer order: x ← LN(x); x ← x + attn(x); x ← LN(x); x ← x + FFN(x)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, dropout: float, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout)
        self.ffn = feed_forward(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = self.norm2(x + self.attn(x, x))
        return x + self.ffn(x)


class PPEG(nn.Module):
    """Position encoding: the token grid plus its depthwise 7×7, 5×5 and 3×3 convolutions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        grid = self.convs[0](grid) + grid + self.convs[1](grid) + self.convs[2](grid)
        return grid.flatten(2).transpose(1, 2)


class Stream(nn.Module):
    """TransMIL-like: ``layers`` encoder layers, PPEG on the side×side grid, ``layers`` more, LayerNorm.

    With ``class_token`` the first token is left out of the grid.
    """

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float, dropout: float, mlp_ratio: float,
                 class_token: bool = False) -> None:
        super().__init__()
        self.class_token = class_token
        self.pre = nn.ModuleList(EncoderLayer(dim, heads, attn_dropout, dropout, mlp_ratio) for _ in range(layers))
        self.ppeg = PPEG(dim)
        self.post = nn.ModuleList(EncoderLayer(dim, heads, attn_dropout, dropout, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        for layer in self.pre:
            x = layer(x)
        if self.class_token:
            x = torch.cat([x[:, :1], self.ppeg(x[:, 1:], side)], dim=1)
        else:
            x = self.ppeg(x, side)
        for layer in self.post:
            x = layer(x)
        return self.norm(x)


class ConvFusion(nn.Module):
    """Learned 3→1 mix of the stream grids, grouped 7/5/3 convs (+ grouped 1×1 skip) to half width, ReLU, Linear+LayerNorm back."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        half = dim // 2
        self.mix = nn.Conv3d(3, 1, 1)
        self.convs = nn.ModuleList(nn.Conv2d(dim, half, k, 1, k // 2, groups=half) for k in (7, 5, 3))
        self.skip = nn.Conv2d(dim, half, 1, groups=half)
        self.drop = nn.Dropout2d(dropout)
        self.out = nn.Sequential(nn.Linear(half, dim), nn.LayerNorm(dim))

    def forward(self, streams: Sequence[torch.Tensor], side: int) -> torch.Tensor:
        b, n, c = streams[0].shape
        grids = torch.stack([s.transpose(1, 2).reshape(b, c, side, side) for s in streams], dim=1)
        g = self.mix(grids).squeeze(1)
        g = self.skip(g) + (self.convs[0](g) + self.convs[1](g) + self.convs[2](g))
        g = self.drop(torch.relu(g))
        return self.out(g.flatten(2).transpose(1, 2))


def square(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(1, N, C) → (1, side², C) with side = ⌈√N⌉, the first tokens repeated to fill the grid."""
    n = tokens.shape[1]
    side = math.isqrt(n - 1) + 1
    return torch.cat([tokens, tokens[:, : side * side - n]], dim=1), side


def _init(m: nn.Module) -> None:
    """The reference's initialisation: truncated-normal Linear weights, Kaiming (fan-out) convs, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class CrossFusion(Aggregator):
    """Whole-slide 10x→5x and 10x→20x cross-attention, three transformer streams, conv fusion, class-token readout."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 512, dropout: float = 0.3, heads: int = 4, layers: int = 1,
                 attn_dropout: float = 0.2, mlp_ratio: float = 2.0, checkpointing: bool = True,
                 scales: Sequence[str] = DEFAULT_SCALES["crossfusion"]) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        self.use_scales(scales, ("fine", "middle", "coarse"))
        if hidden % 2:
            raise ValueError(f"CrossFusion hidden width {hidden} must be even (experts.model_params.hidden)")

        def input_layer() -> nn.Module:  # the reference skips it when the features are already `hidden` wide
            return nn.Identity() if in_dim == hidden else nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden))

        def stream(class_token: bool = False) -> Stream:
            return Stream(hidden, heads, layers, attn_dropout, dropout, mlp_ratio, class_token)

        self.inputs = nn.ModuleList(input_layer() for _ in self.scales)  # fine, middle, coarse
        self.to_coarse = ScaleCrossBlock(hidden, heads, dropout, mlp_ratio)
        self.to_fine = ScaleCrossBlock(hidden, heads, dropout, mlp_ratio)
        self.middle_stream, self.fine_stream, self.coarse_stream = stream(), stream(), stream()
        self.fusion = ConvFusion(hidden, dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 1e-6)
        self.readout = stream(class_token=True)
        self.classifier = nn.Linear(hidden, n_bins)
        self.apply(_init)

    def patient(self, fine: torch.Tensor, middle: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """One patient's (N_s, D) features per magnification → its embedding (hidden,)."""
        f, m, c = (layer(x).unsqueeze(0) for layer, x in zip(self.inputs, (fine, middle, coarse)))
        coarse_t, side = square(self.to_coarse(m, c))
        fine_t, _ = square(self.to_fine(m, f))
        middle_t, _ = square(m)
        streams = [self.middle_stream(middle_t, side), self.fine_stream(fine_t, side), self.coarse_stream(coarse_t, side)]
        fused = self.fusion(streams, side)
        tokens = torch.cat([self.cls_token.to(fused.dtype), fused], dim=1)
        return self.readout(tokens, side)[0, 0]

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        per_scale = []
        for s in range(len(self.scales)):
            counts = batch[f"mask{s}"].sum(1).tolist()
            if min(counts) == 0:
                raise ValueError(f"a patient has no {self.scales[s]} patches; CrossFusion needs every magnification "
                                 "(preprocess.context_mpp)")
            per_scale.append(torch.split(batch[f"rows{s}"], counts))
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # keep one patient's activations at a time (recomputed in backward, same dropout masks)
            emb = torch.stack([checkpoint(self.patient, f, m, c, use_reentrant=False) for f, m, c in zip(*per_scale)])
        else:
            emb = torch.stack([self.patient(f, m, c) for f, m, c in zip(*per_scale)])
        return {"logits": self.classifier(emb), "embedding": emb}
