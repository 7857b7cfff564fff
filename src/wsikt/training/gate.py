"""The null gate every trained model shares: keep it only if inner CV on its training fold shows signal.

A model that fails the gate becomes the null model: the training fold's life table (Kaplan–Meier on
the binned times) for every patient, so its test C is exactly 0.5. Experts, ROUPKT and the transfer
baselines call :func:`null_gate` with their own ``fit_predict``; only training patients are read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsikt.survival.bins import survival_curve
from wsikt.training.folds import FitPredict, inner_cv_c
from wsikt.training.settings import NullGate


def gate_decision(inner_c: float, gate: NullGate) -> dict:
    """The gate's record for a metrics JSON: null unless ``inner_c`` > ``gate.min_c`` (NaN is no evidence)."""
    return {"inner_folds": gate.inner_folds, "min_c": gate.min_c, "inner_c": float(inner_c), "null": not inner_c > gate.min_c}


def null_gate(split: pd.DataFrame, fold: int, gate: NullGate, seed: int, fit_predict: FitPredict, key: str) -> dict:
    """Score ``fit_predict`` by pooled inner CV on outer fold ``fold``'s training patients and decide.

    ``fit_predict(train rows, validation rows)`` must train exactly like the outer model. ``key`` is
    the config key of ``gate.inner_folds`` (named in errors). Returns :func:`gate_decision`'s record.
    """
    if not gate.inner_folds:
        raise ValueError(f"{key} is 0 (gate off): check gate.inner_folds before calling null_gate")
    return gate_decision(inner_cv_c(split, fold, gate.inner_folds, seed, fit_predict, key=key), gate)


def life_table_logits(bins: np.ndarray, events: np.ndarray, n_bins: int, eps: float = 1e-7) -> torch.Tensor:
    """Logits of the discrete-time hazards h_t = d_t / n_t (events in bin t over patients with bin ≥ t).

    The Kaplan-Meier estimate on the binned times, censored patients surviving their own bin as
    in the NLL loss; clipped to [eps, 1 − eps] so bins nobody reaches stay finite.
    """
    bins, events = np.asarray(bins), np.asarray(events).astype(bool)
    at_risk = np.array([(bins >= t).sum() for t in range(n_bins)], float)
    died = np.bincount(bins[events], minlength=n_bins)[:n_bins].astype(float)
    h = np.clip(np.divide(died, at_risk, out=np.zeros(n_bins), where=at_risk > 0), eps, 1 - eps)
    return torch.from_numpy(np.log(h) - np.log1p(-h)).float()


def null_survival(logits: torch.Tensor, n_patients: int) -> np.ndarray:
    """The null model's predictions: one survival curve from hazard ``logits`` (T,), repeated for every patient."""
    curve = survival_curve(torch.sigmoid(logits.float()).reshape(1, -1)).numpy()
    return np.repeat(curve, n_patients, axis=0)


@torch.no_grad()
def make_null_linear(layer: nn.Linear, logits: torch.Tensor) -> None:
    """Turn an output Linear into the null head: zero weights, bias = ``logits``, so every input gives them."""
    layer.weight.zero_()
    layer.bias.copy_(logits.to(layer.bias))
