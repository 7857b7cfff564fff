"""MIL aggregator registry: a config name (experts.model) → model class, wrapped as an Expert.

Every model returns ``logits`` (B, T) and ``embedding`` (B, 512), the bag representation reused by
transfer and routing, and names the magnifications it reads in ``scales``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from wsikt.cohort.bags import Bag
from wsikt.core.model_facts import PRIMARY, model_scales
from wsikt.mil.abmil_hssl import ABMILHSSL
from wsikt.mil.base import (
    Aggregator,
    AttentionUnavailable,
    Batch,
    CrossAttention,
    GatedAttention,
    masked_softmax,
    pack_arrays,
    pad_bags,
)
from wsikt.mil.chowder import Chowder
from wsikt.mil.crossfusion import CrossFusion
from wsikt.mil.crossfusion_local import CrossFusionLocal
from wsikt.mil.dsca import DSCA
from wsikt.mil.dsmil import DSMIL
from wsikt.mil.pooling import ABMIL, PoolMIL
from wsikt.mil.transmil import TransMIL

REGISTRY: dict[str, Callable[..., Aggregator]] = {
    "abmil": ABMIL,
    "abmil_hssl": ABMILHSSL,
    "mean": partial(PoolMIL, pool="mean"),
    "max": partial(PoolMIL, pool="max"),
    "transmil": TransMIL,
    "chowder": Chowder,
    "dsmil": DSMIL,
    "dsca": DSCA,
    "crossfusion": CrossFusion,  # the paper's model (RustinS/CrossFusion)
    "crossfusion_local": CrossFusionLocal,  # our parent-linked variant: local, order-free, ~5x smaller
}
MODELS = tuple(REGISTRY)
LOSSES = ("nll", "cox")


class Expert(nn.Module):
    """An aggregator behind a fixed per-feature affine normalisation (identity unless fit), per magnification.

    The normalisation is part of the expert, so whoever reuses it (transfer, routing) feeds raw
    encoder features and gets exactly what the expert saw in training. A Cox expert (one log-risk
    output) also carries its Breslow baseline cumulative hazard at the T survival time points.
    """

    def __init__(self, aggregator: Aggregator, in_dim: int, n_bins: int, loss: str = "nll") -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"experts.loss '{loss}' must be one of {', '.join(LOSSES)}")
        self.aggregator, self.n_bins, self.loss = aggregator, n_bins, loss
        n_scales = len(aggregator.scales)
        shape = (in_dim,) if n_scales == 1 else (n_scales, in_dim)
        self.register_buffer("feature_mean", torch.zeros(shape))
        self.register_buffer("feature_std", torch.ones(shape))
        if loss == "cox":  # log H0 at the T survival time points; −inf (H0 = 0, S = 1) until fit
            self.register_buffer("baseline_log_cumhaz", torch.full((n_bins,), float("-inf")))
        self.register_buffer("is_null", torch.zeros((), dtype=torch.bool))
        self.register_buffer("null_logits", torch.zeros(1 if loss == "cox" else n_bins))

    @property
    def scales(self) -> tuple[str, ...]:
        return self.aggregator.scales

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-feature mean/std, (D,) for one magnification or (S, D) for S."""
        self.feature_mean.copy_(mean.reshape(self.feature_mean.shape))
        self.feature_std.copy_(std.reshape(self.feature_std.shape).clamp(min=1e-6))

    def set_baseline(self, log_cumhaz: torch.Tensor) -> None:
        """Cox only: log of the baseline cumulative hazard H0 at the T survival time points."""
        self.baseline_log_cumhaz.copy_(log_cumhaz)

    def make_null(self, logits: torch.Tensor | None) -> None:
        """Replace the head's output by ``logits`` (T,) for every patient (one risk for all); None undoes it.

        NLL: the baseline hazard logits of the training fold; Cox: a log-risk of 0 (the Breslow
        baseline is then the Nelson-Aalen estimate).
        """
        self.is_null.fill_(logits is not None)
        if logits is not None:
            self.null_logits.copy_(logits.reshape(self.null_logits.shape))

    def collate(self, bags: Sequence[Bag], device: torch.device) -> Batch:
        """Padded tensors, masks and links of ``bags`` on ``device`` in the aggregator's layout."""
        return self.aggregator.collate(bags, device)

    def forward(self, batch: Batch | torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if mask is not None:  # padded (B, N, D) features and their mask
            batch = {"rows0": batch[mask], "mask0": mask}
        return self._head(self.aggregator(self.normalise(batch)))

    def normalise(self, batch: Batch) -> Batch:
        """The batch with each magnification's rows standardised by the expert's stored mean/std."""
        batch = dict(batch)
        mean, std = self.feature_mean.view(-1, self.feature_mean.shape[-1]), self.feature_std.view(-1, self.feature_std.shape[-1])
        for s in range(len(self.scales)):
            batch[f"rows{s}"] = (batch[f"rows{s}"] - mean[s]) / std[s]
        return batch

    def _head(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if bool(self.is_null):
            out = {**out, "logits": self.null_logits.to(out["logits"].dtype).expand_as(out["logits"]).clone()}
        return out

    def attend(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``forward``'s output and the per-patch attention per magnification (Aggregator.patch_attention).

        A null expert's attention is still its trained aggregator's; its logits are the null ones.
        """
        batch = self.normalise(batch)
        out = self.aggregator(batch)
        return self._head(out), self.aggregator.patch_attention(batch, out)

    def survival(self, logits: torch.Tensor) -> torch.Tensor:
        """Survival curves (B, T): Π(1 − sigmoid) for NLL; exp(−H0·e^{log-risk}) for Cox."""
        if self.loss == "cox":
            return torch.exp(-torch.exp(self.baseline_log_cumhaz.unsqueeze(0) + logits[:, :1]))
        return torch.cumprod(1 - torch.sigmoid(logits), dim=1)


def _unknown(name: str) -> KeyError:
    return KeyError(f"unknown aggregator '{name}' (config key experts.model); known: {', '.join(MODELS)}")


def has_projection_dropout(name: str) -> bool:
    """Whether aggregator ``name`` takes ``projection_dropout`` (dropout after its Linear+ReLU feature projection)."""
    return "projection_dropout" in inspect.signature(REGISTRY[name]).parameters


def build_model(name: str, in_dim: int, n_bins: int, dropout: float = 0.25, loss: str = "nll",
                projection_dropout: float | None = None, **params: Any) -> Expert:
    """Instantiate the aggregator registered under ``name`` (experts.model) as an Expert.

    ``params`` are the model's own hyper-parameters (experts.model_params), e.g. scales, heads.
    ``projection_dropout`` (experts.projection_dropout) reaches the aggregators that take it (abmil,
    mean, max); the others keep their own layout. With loss 'cox' the head has one output (log-risk);
    ``n_bins`` stays the number of survival columns.
    """
    if name not in REGISTRY:
        raise _unknown(name)
    if "scales" in params:
        params["scales"] = tuple(params["scales"])
    if projection_dropout is not None and has_projection_dropout(name):
        params.setdefault("projection_dropout", projection_dropout)
    try:
        agg = REGISTRY[name](in_dim, 1 if loss == "cox" else n_bins, dropout=dropout, **params)
    except TypeError as exc:
        raise ValueError(f"experts.model_params {sorted(params)} do not fit model '{name}': {exc}") from None
    return Expert(agg, in_dim, n_bins, loss)


__all__ = [
    "ABMIL", "ABMILHSSL", "Aggregator", "AttentionUnavailable", "Batch", "Chowder", "CrossAttention", "CrossFusion",
    "CrossFusionLocal", "DSCA", "DSMIL", "Expert", "GatedAttention", "LOSSES", "MODELS", "PRIMARY", "PoolMIL", "REGISTRY",
    "TransMIL", "build_model", "has_projection_dropout",
    "masked_softmax", "model_scales", "pack_arrays", "pad_bags",
]
