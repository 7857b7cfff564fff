"""Discrete-time survival: time bins fit on training patients, the NLL loss, risk, Harrell's C."""

from __future__ import annotations

import numpy as np
import torch
from sksurv.metrics import concordance_index_censored


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


def nll_loss(hazards: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """Discrete-time negative log-likelihood (Zadeh & Schmid), mean over patients.

    ``hazards`` (B, T) in (0, 1); ``bins`` (B,) int; ``events`` (B,) 1 = event. Uncensored patients
    contribute −log S(y−1) − log h(y); censored ones −log S(y). The total is
    (1 − α)·NLL + α·uncensored part (CROPKT α = 0.5).
    """
    y = bins.view(-1, 1).long()
    c = (1 - events.float()).view(-1, 1)  # censorship
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_padded = torch.cat([torch.ones_like(c), surv], dim=1)
    s_before = torch.gather(surv_padded, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_at = torch.gather(surv_padded, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_at)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def survival_curve(hazards: torch.Tensor) -> torch.Tensor:
    """S_k = Π_{j≤k} (1 − h_j)."""
    return torch.cumprod(1 - hazards, dim=1)


def risk_from_survival(surv: np.ndarray) -> np.ndarray:
    """Risk = −Σ_k S_k: higher risk means shorter expected survival."""
    return -np.asarray(surv).sum(axis=1)


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C on continuous time (scikit-survival); NaN when no pair is comparable."""
    event = np.asarray(event).astype(bool)
    if event.sum() == 0 or len(time) < 2:
        return float("nan")
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # tied times only: 0/0 → NaN
            return float(concordance_index_censored(event, np.asarray(time, float), np.asarray(risk, float))[0])
    except ValueError:  # no comparable pairs
        return float("nan")
