"""DSCA (Liu et al., ESWA 2023): a dual-stream network over 20x (fine) and 5x (coarse) patches.

The forward of the paper's ``WSIHierNet`` with its published configuration (config_hier.yaml):

- fine stream: each coarse patch's r×r aligned fine children (r = 4 at 20x/5x) form a grid; a full
  3×3 Conv2d (D→H) + LayerNorm + ReLU embeds them, then cross-attention pooling (CAPool, 4 heads)
  with the coarse patch's Linear(D→H) projection as the query gives one token per coarse patch;
- coarse stream: a Conv1d (k = 5) over the patient's coarse patch sequence + LayerNorm. The
  sequence is CLAM's grid order (slide by slide, column by column: sorted by x, then y), whatever
  the order of the rows in the bag, so the model's output does not depend on row order;
- both streams get the same 2-D sine-cosine position encoding of the coarse patches' grid positions,
  then each its own Transformer encoder (post-norm, 8 heads, feed-forward H, 1 layer);
- the streams are summed, gated-attention pooled (GAPool) and a Linear(H→T) gives the hazard logits.

H = 384. The embedding handed to transfer is the pooled H-d representation zero-padded to 512;
the classifier reads it (its last 512 − H columns only ever see zeros), so logits are unchanged.
Missing children (20x cells dropped by the tissue test under preprocess.nest_from 'fine'; DSCA's
big-to-small patching, nest_from 'coarse', always has all 16) are zeros in the conv grid and are
masked out of the cross-attention keys.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from wsikt.cohort.bags import PRIMARY, Bag, PatientBag, as_patient_bag
from wsikt.core.model_facts import DEFAULT_SCALES
from wsikt.mil.base import Aggregator, Batch, GatedAttention, _to, bag_share, children_index, unpack

EMBEDDING_DIM = 512


def grid_positions(coords: np.ndarray, slide_index: np.ndarray) -> np.ndarray:
    """DSCA's patch positions (N, 2) (x, y) for the position encoding, from level-0 coords.

    Per slide, each axis is discretised to the rank of the coordinate among the slide's distinct
    values; a patient's slides are then laid side by side: slide s is shifted by the previous slides'
    (width + 1) in x and by their summed height in y, as the paper's ``rearrange_coord`` does.
    Finally everything is shifted so the minimum is (0, 0).
    """
    out = np.zeros((len(coords), 2), np.int64)
    shift = np.array([0, 0], np.int64)
    for s in np.unique(slide_index):
        rows = np.flatnonzero(slide_index == s)
        ranks = np.stack([np.unique(coords[rows, a], return_inverse=True)[1].reshape(-1) for a in (0, 1)], 1)
        ranks = ranks - ranks.min(0)
        out[rows] = ranks + shift
        shift = shift + ranks.max(0) + np.array([1, 0])
    return out - out.min(0) if len(out) else out


def sincos_encoding(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine-cosine encoding (N, dim) of (x, y) positions: [sin xω, cos xω, sin yω, cos yω]."""
    if dim % 4:
        raise ValueError(f"DSCA hidden width {dim} must be a multiple of 4 for its 2-D position encoding")
    q = dim // 4
    omega = 1.0 / temperature ** (torch.arange(q, device=pos.device, dtype=torch.float32) / (q - 1))
    x = pos[:, 0:1].float() * omega
    y = pos[:, 1:2].float() * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def _encoder(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class DSCA(Aggregator):
    """Square-pooled fine stream (conv + cross-attention) and coarse stream, each a Transformer, summed, GAPool."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 384, dropout: float = 0.6, heads: int = 8,
                 pool_heads: int = 4, layers: int = 1, coarse_kernel: int = 5, pool_dropout: float = 0.25,
                 position: bool = True, scales: Sequence[str] = DEFAULT_SCALES["dsca"]) -> None:
        super().__init__()
        self.use_scales(scales, ("fine", "coarse"))
        if hidden > EMBEDDING_DIM:
            raise ValueError(f"DSCA hidden {hidden} exceeds the {EMBEDDING_DIM}-d embedding; set experts.model_params.hidden ≤ {EMBEDDING_DIM}")
        self.hidden, self.position = hidden, position
        # fine stream: square pooling of each coarse patch's child grid, guided by the coarse patch
        self.fine_conv = nn.Conv2d(in_dim, hidden, 3, padding=1)
        self.fine_norm = nn.LayerNorm(hidden)
        self.guide = nn.Linear(in_dim, hidden)
        self.square_pool = nn.MultiheadAttention(hidden, pool_heads, batch_first=True)
        # coarse stream: a 1-D conv along the patient's coarse patch sequence
        self.coarse_conv = nn.Conv1d(in_dim, hidden, coarse_kernel, padding=(coarse_kernel - 1) // 2)
        self.coarse_norm = nn.LayerNorm(hidden)
        self.fine_encoder = _encoder(hidden, heads, layers, dropout)
        self.coarse_encoder = _encoder(hidden, heads, layers, dropout)
        self.attention = GatedAttention(hidden, hidden, pool_dropout)
        self.classifier = nn.Linear(EMBEDDING_DIM, n_bins)

    def collate(self, bags: Sequence[Bag], device: torch.device) -> Batch:
        batch = super().collate(bags, device)
        pbs = [as_patient_bag(b) for b in bags]
        batch["children"], _ = children_index(pbs, self.scales[0], self.scales[1], batch["mask1"].shape[1], device)
        coarse = [_coarse_coords(b, self.scales[1]) for b in pbs]
        batch["sequence1"] = _to(torch.from_numpy(_sequence(coarse, batch["mask1"].shape[1])), device)
        if self.position:
            batch["pos1"] = _to(torch.from_numpy(np.concatenate([grid_positions(*c) for c in coarse]).astype(np.float32)), device)
        return batch

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch["mask1"]  # (B, Nc) valid coarse patches
        fine_rows, coarse_rows = batch["rows0"], batch["rows1"]
        # fine stream: children's raw features on each coarse patch's r×r grid (packed valid coarse rows)
        start = torch.cumsum(batch["mask0"].sum(1), 0) - batch["mask0"].sum(1)  # first packed fine row per bag
        kids = batch["children"][mask]  # (Mc, r²) row in the bag, −1 = none
        valid = kids >= 0
        rows = (kids + start.repeat_interleave(mask.sum(1)).unsqueeze(1)).clamp(min=0)
        m, k = kids.shape
        r = int(round(k ** 0.5))
        grid = (fine_rows[rows] * valid.unsqueeze(-1)).transpose(1, 2).reshape(m, -1, r, r)
        keys = torch.relu(self.fine_norm(self.fine_conv(grid).flatten(2).transpose(1, 2)))  # (Mc, r², H)
        guide = self.guide(coarse_rows).unsqueeze(1)  # (Mc, 1, H)
        orphan = ~valid.any(1)  # a coarse patch with no fine child: attends to nothing, gets zeros
        ignore = ~valid & ~orphan.unsqueeze(1)
        pooled, _ = self.square_pool(guide, keys, keys, key_padding_mask=ignore, need_weights=False)
        fine = unpack(pooled.squeeze(1) * ~orphan.unsqueeze(1), mask)  # (B, Nc, H)
        # coarse stream: Conv1d over each bag's own sequence (zeros past its end, as the conv's padding)
        seq = batch["sequence1"].unsqueeze(-1)  # (B, Nc, 1): row at each sequence place; padding stays last
        coarse = torch.gather(unpack(coarse_rows, mask), 1, seq.expand(-1, -1, coarse_rows.shape[1]))
        coarse = self.coarse_norm(self.coarse_conv(coarse.transpose(1, 2)).transpose(1, 2))
        coarse = torch.empty_like(coarse).scatter(1, seq.expand(-1, -1, self.hidden), coarse)  # back to row order
        if self.position:
            pe = unpack(sincos_encoding(batch["pos1"], self.hidden).to(coarse.dtype), mask)
            fine, coarse = fine + pe, coarse + pe
        pad = ~mask
        fused = self.fine_encoder(fine, src_key_padding_mask=pad) + self.coarse_encoder(coarse, src_key_padding_mask=pad)
        fused = fused * mask.unsqueeze(-1)
        a = self.attention(fused, mask)
        rep = torch.bmm(a.unsqueeze(1), fused).squeeze(1)
        emb = nn.functional.pad(rep, (0, EMBEDDING_DIM - self.hidden))
        return {"logits": self.classifier(emb), "embedding": emb, "attention": a,
                "square_pool": (guide, keys, ignore, kids, orphan)}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """5x: GAPool's attention over the 5x patches. 20x: each child's share of its parent's CAPool
        cross-attention (heads averaged) times its parent's 5x attention, so each bag's row sums to 1."""
        guide, keys, ignore, kids, orphan = out["square_pool"]
        _, w = self.square_pool(guide, keys, keys, key_padding_mask=ignore, need_weights=True)
        w = w.squeeze(1) * (kids >= 0) * ~orphan.unsqueeze(1)  # (Mc, r²): no weight on missing children
        mask, fine_mask = batch["mask1"], batch["mask0"]
        share = w * out["attention"][mask].unsqueeze(1)  # (Mc, r²): parent's attention split over its children
        bag = torch.arange(len(mask), device=mask.device).repeat_interleave(mask.sum(1))
        fine = torch.zeros(fine_mask.shape, dtype=share.dtype, device=share.device)
        valid = kids >= 0
        fine.index_put_((bag.unsqueeze(1).expand_as(kids)[valid], kids[valid]), share[valid], accumulate=True)
        return {self.scales[0]: bag_share(fine, fine_mask), self.scales[1]: out["attention"]}


def _coarse_coords(bag: PatientBag, coarse: str) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 coords (N, 2) and slide index (N,) of ``bag``'s coarse patches."""
    key = bag.primary if coarse == PRIMARY else coarse
    if key not in bag.coords:
        raise KeyError(f"this patient bag lacks the {coarse} coords DSCA needs; load bags with "
                       "wsikt.cohort.bags.load_patient_bags(..., scales=model.scales)")
    return bag.coords[key], bag.slide_index.get(key, np.zeros(len(bag.coords[key]), np.int64))


def _sequence(coarse: list[tuple[np.ndarray, np.ndarray]], length: int) -> np.ndarray:
    """(B, length) row of each place of each bag's coarse sequence: CLAM's order (slide, x, y); padding after."""
    out = np.tile(np.arange(length, dtype=np.int64), (len(coarse), 1))
    for i, (xy, slide) in enumerate(coarse):
        out[i, : len(xy)] = np.lexsort((xy[:, 1], xy[:, 0], slide))
    return out
