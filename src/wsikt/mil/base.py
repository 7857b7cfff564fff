"""Shared pieces of the MIL aggregators: the batch contract, masked ops, gated attention, collation.

A batch is a dict of tensors, for each of the model's magnifications s = 0, 1, … (in ``scales``
order): ``mask{s}`` (B, N_s) validity of the padded layout (each bag's rows are a prefix) and
``rows{s}`` (M_s, D) the valid rows packed in that layout's order (= x[mask] of the padded
(B, N_s, D) tensor, which is never built: the D-wide input is the largest tensor and padding it
only costs memory traffic), plus whatever index tensors the model's own collate adds. Models
project the packed rows first, then pad the narrower projections. Everything a model computes for
one bag depends only on that bag's valid rows, so a bag alone and the same bag padded in a batch give the same output.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from wsikt.cohort.bags import PRIMARY, Bag, as_patient_bag, primary_features

Batch = dict[str, torch.Tensor]


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


def pack_arrays(arrays: Sequence[np.ndarray], device: torch.device, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate numpy (N_i, D) arrays on the host, one transfer to ``device``: rows (ΣN_i, D), mask (B, N_max)."""
    lengths = np.array([len(a) for a in arrays])
    mask = np.arange(max(min_len, int(lengths.max())))[None, :] < lengths[:, None]
    rows = np.concatenate(arrays).astype(np.float32, copy=False)
    return _to(torch.from_numpy(rows), device), _to(torch.from_numpy(mask), device)


def unpack(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Packed rows (M, H) → (B, N, H) zeros-padded in ``mask``'s layout."""
    full = rows.new_zeros((*mask.shape, rows.shape[-1]))
    full[mask] = rows
    return full


def project(module: Callable[[torch.Tensor], torch.Tensor], batch: "Batch", s: int = 0) -> torch.Tensor:
    """Per-instance ``module`` on magnification s's packed rows, padded to (B, N_s, H)."""
    return unpack(module(batch[f"rows{s}"]), batch[f"mask{s}"])


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def children_index(bags: Sequence, fine: str, coarse: str, n_coarse: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(B, N_coarse, r²) row of each coarse patch's child in cell k of its r×r grid (−1 = none), and r.

    ``bags`` are PatientBags; padded coarse rows have no children.
    """
    links = [b.link(fine, coarse) for b in bags]
    ratios = {r for _, _, r in links}
    if len(ratios) > 1:
        raise ValueError(f"patients disagree on the {fine}/{coarse} patch ratio {sorted(ratios)}; rerun preprocessing with one config")
    r = ratios.pop()
    out = np.full((len(bags), n_coarse, r * r), -1, np.int64)
    for i, (parents, slots, _) in enumerate(links):
        ok = (parents >= 0) & (slots >= 0)
        rows = np.flatnonzero(ok)
        out[i, parents[ok], slots[ok]] = rows
    return _to(torch.from_numpy(out), device), r


def parent_index(bags: Sequence, fine: str, coarse: str, n_fine: int, device: torch.device) -> torch.Tensor:
    """(B, N_fine) row of each fine patch's parent at ``coarse`` (−1 = none or padding)."""
    out = np.full((len(bags), n_fine), -1, np.int64)
    for i, b in enumerate(bags):
        parents, _, _ = b.link(fine, coarse)
        out[i, : len(parents)] = parents
    return _to(torch.from_numpy(out), device)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over valid entries only; rows with no valid entry give all zeros (never NaN)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


def packed(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply a per-instance module to the valid rows only (no work on padding), scattered back, zeros elsewhere."""
    if bool(mask.all()):
        return module(x)
    out = module(x[mask])
    full = out.new_zeros((*mask.shape, out.shape[-1]))
    full[mask] = out
    return full


def gather_rows(h: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of h (B, N, H) at index (B, M, K) → (B, M, K, H), zeros where index < 0; and the validity."""
    valid = index >= 0
    b, m, k = index.shape
    flat = index.clamp(min=0).reshape(b, m * k, 1).expand(-1, -1, h.shape[-1])
    out = torch.gather(h, 1, flat).reshape(b, m, k, h.shape[-1])
    return out * valid.unsqueeze(-1), valid


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def tile_projection(in_dim: int, projection: int, dropout: float) -> tuple[nn.Module, int]:
    """wsikt's optional learnt tile projection Linear(D→projection)+ReLU+Dropout (0 = none: the raw features, as
    HistoSSLscaling's Chowder and DSMIL read them); returns the module and the width it gives."""
    if not projection:
        return nn.Identity(), in_dim
    return nn.Sequential(nn.Linear(in_dim, projection), nn.ReLU(), nn.Dropout(dropout)), projection


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "sigmoid", dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of widths ``hidden`` each followed by ``activation`` (and Dropout when > 0), then Linear(→out_dim).

    Each hidden layer is one Sequential block (Linear, activation[, Dropout]), so parameter names
    read ``<i>.0.weight`` for hidden layer i and ``<len(hidden)>.weight`` for the output layer.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation '{activation}' must be one of {', '.join(ACTIVATIONS)} (experts.model_params)")
    blocks: list[nn.Module] = []
    width = in_dim
    for w in hidden:
        block: list[nn.Module] = [nn.Linear(width, w), ACTIVATIONS[activation]()]
        if dropout > 0:
            block.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*block))
        width = w
    return nn.Sequential(*blocks, nn.Linear(width, out_dim))


class FixedProjection(nn.Module):
    """A fixed (never trained) linear map D → ``dim`` giving a model whose bag vector is not 512 wide its 512-d embedding.

    D ≤ dim: the identity, zero-padded. D > dim: ``dim`` orthonormal directions drawn once from a
    seeded Gaussian (an isometry onto a random subspace, Johnson-Lindenstrauss); the matrix is a
    buffer, so a checkpoint carries it and the global RNG (the model's initialisation) is untouched.
    """

    def __init__(self, in_dim: int, dim: int = 512, seed: int = 0) -> None:
        super().__init__()
        if in_dim <= dim:
            weight = torch.eye(dim, in_dim)
        else:
            g = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(in_dim, dim, generator=g))  # (D, dim), orthonormal columns
            weight = q.T.contiguous()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class GatedAttention(nn.Module):
    """Gated attention (Ilse et al.): a = w·(tanh(V h) ⊙ σ(U h)), softmax over the bag's valid instances."""

    def __init__(self, dim: int = 512, hidden: int = 384, dropout: float = 0.25) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(self.v(h) * self.u(h))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(packed(self.scores, h, mask).squeeze(-1), mask, dim=1)


class CrossAttention(nn.Module):
    """Multi-head attention of one query token over its own K key tokens: q (B, M, H), kv (B, M, K, H) → (B, M, H).

    Keys marked invalid are ignored; a query with no valid key gets zeros.
    """

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.25) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads {heads}")
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, m, k, _ = kv.shape
        qh = self.q(q).view(b, m, self.heads, self.dh)
        keys, values = self.kv(kv).view(b, m, k, 2, self.heads, self.dh).unbind(3)
        scores = torch.einsum("bmhd,bmkhd->bmhk", qh, keys) / self.dh ** 0.5
        attn = self.drop(masked_softmax(scores, valid.unsqueeze(2), dim=-1))
        ctx = torch.einsum("bmhk,bmkhd->bmhd", attn, values).reshape(b, m, -1)
        return self.out(ctx)


class Aggregator(nn.Module):
    """Base class: ``scales`` names the magnifications the model reads (PRIMARY = the primary one).

    ``forward(batch)`` returns dict(logits (B, T), embedding (B, 512)); single-scale models can also
    be called as ``forward(x, mask)`` with padded (B, N, D) features.
    """

    scales: tuple[str, ...] = (PRIMARY,)
    min_instances: int = 1  # pad every bag at least this long (e.g. top-k needs k slots)

    def collate(self, bags: Sequence[Bag], device: torch.device) -> Batch:
        """Pack each magnification of ``bags`` into rows{s}/mask{s} on ``device`` (multi-scale models add links)."""
        if self.scales == (PRIMARY,):
            rows, mask = pack_arrays([primary_features(b) for b in bags], device, self.min_instances)
            return {"rows0": rows, "mask0": mask}
        pbs = [as_patient_bag(b) for b in bags]
        batch: Batch = {}
        for s, name in enumerate(self.scales):
            batch[f"rows{s}"], batch[f"mask{s}"] = pack_arrays([b.scale(name) for b in pbs], device, self.min_instances)
        return batch

    def use_scales(self, scales: Sequence[str], roles: tuple[str, ...]) -> None:
        """Set the magnifications a multi-scale model reads, one per role (e.g. fine, coarse), finest first."""
        if len(scales) != len(roles):
            raise ValueError(f"{type(self).__name__} needs {len(roles)} magnifications ({', '.join(roles)}), got {list(scales)}; "
                             "set experts.model_params.scales")
        self.scales = tuple(scales)

    def forward(self, batch: Batch | torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if mask is not None:  # padded (B, N, D) features and their mask
            batch = {"rows0": batch[mask], "mask0": mask}
        return self.run(batch)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-patch attention of each bag, per magnification it weighs: {scale name: (B, N_s)}.

        ``out`` is ``run(batch)``'s output (so nothing is computed twice). Each row is ≥ 0, zero on
        padding and sums to 1 over the bag's valid patches: the share of the bag embedding that
        patch holds. Heatmaps (``wsikt.attention``) call it; a model without it raises
        :class:`AttentionUnavailable`, and ``wsikt.core.model_facts.ATTENTION_MODELS`` lists the
        models that have it (so the workflow can leave heatmaps out without importing torch).
        """
        raise AttentionUnavailable(type(self).__name__)


class AttentionUnavailable(NotImplementedError):
    """The aggregator has no per-patch attention (heatmaps need ``Aggregator.patch_attention``)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"aggregator {model} has no per-patch attention (Aggregator.patch_attention); "
                         "heatmaps need one of wsikt.core.model_facts.ATTENTION_MODELS, or set report.heatmaps: 0")


def bag_share(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) non-negative weights → each valid row normalised to sum 1 (zeros on padding and empty bags)."""
    w = weights * mask
    return w / w.sum(1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)
