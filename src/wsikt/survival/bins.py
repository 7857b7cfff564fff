"""Discrete-time survival: time bins fit on training patients, survival curves and risk."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["assign_bins", "fit_time_bins", "risk_from_survival", "survival_curve"]


def fit_time_bins(
    times: np.ndarray, events: np.ndarray, kind: str = "uniform", n_bins: int = 32, width_days: float = 365.0
) -> np.ndarray:
    """Inner bin edges (n_bins − 1 values); fit only on the training fold's times and events.

    ``uniform``: edges every ``width_days`` (CROPKT: 32 yearly bins, the last one open).
    ``quantile``: edges at the quantiles of event times (censored patients ignored), as in PORPOISE.
    """
    if kind == "uniform":
        return np.arange(1, n_bins, dtype=np.float64) * width_days
    if kind == "quantile":
        event_times = np.asarray(times, float)[np.asarray(events).astype(bool)]
        if len(event_times) < n_bins:
            raise ValueError(
                f"quantile time bins need ≥{n_bins} events in the training fold, got {len(event_times)}; "
                "set experts.bins.kind to 'uniform' or lower experts.bins.n_bins"
            )
        edges = np.quantile(event_times, np.linspace(0, 1, n_bins + 1)[1:-1])
        return np.maximum.accumulate(edges)
    raise ValueError(f"unknown time-bin kind '{kind}' (experts.bins.kind): use 'uniform' or 'quantile'")


def assign_bins(times: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Bin index in [0, len(inner_edges)] for each time (last bin open-ended)."""
    return np.searchsorted(inner_edges, np.asarray(times, float), side="right").astype(np.int64)


def survival_curve(hazards: torch.Tensor) -> torch.Tensor:
    """S_k = Π_{j≤k} (1 − h_j)."""
    return torch.cumprod(1 - hazards, dim=1)


def risk_from_survival(surv: np.ndarray) -> np.ndarray:
    """Risk = −Σ_k S_k: higher risk means shorter expected survival."""
    return -np.asarray(surv).sum(axis=1)
