"""Survival losses and their registry: discrete-time NLL and the Cox partial likelihood (config key experts.loss).

Every registered loss takes the same batch, ``(hazards (B, T), bins (B,), times (B,), events (B,), alpha)``,
so the training loop does not need to know which one it runs.
"""

from __future__ import annotations

from typing import Callable

import torch

from wsikt.core.model_facts import LOSS_NAMES, MIN_COX_BATCH, check_loss_config  # noqa: F401 (the losses' limits)


def nll_loss(hazards: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """Discrete-time negative log-likelihood (Zadeh & Schmid), mean over patients.

    ``hazards`` (B, T) in (0, 1); ``bins`` (B,) int; ``events`` (B,) 1 = event. Uncensored patients
    contribute −log S(y−1) − log h(y); censored ones −log S(y). The total is
    (1 − α)·NLL + α·uncensored part (CROPKT α = 0.5).
    """
    y = bins.view(-1, 1).long()
    c = (1 - events.float()).view(-1, 1)  # censorship
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_padded = torch.cat([torch.ones_like(c, dtype=surv.dtype), surv], dim=1)
    s_before = torch.gather(surv_padded, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_at = torch.gather(surv_padded, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_at)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


COX_REDUCTIONS = ("events", "patients")


def cox_ph_loss(log_risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor, reduction: str = "events") -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, averaged over the batch's events or patients.

    −(1/E) Σ_{i: event} [η_i − log Σ_{j: t_j ≥ t_i} exp η_j]; patients tied with i in time are in
    its risk set (Breslow). ``reduction`` 'patients' divides the same sum by the batch size B instead
    of E (HistoSSLscaling's CoxLoss: a mean over all patients, censored ones adding 0). A batch
    without events gives 0, still attached to the graph.
    """
    if reduction not in COX_REDUCTIONS:
        raise ValueError(f"experts.cox_reduction '{reduction}' must be one of {', '.join(COX_REDUCTIONS)}")
    eta = log_risk.reshape(-1)
    t = times.reshape(-1).to(eta.device)
    e = events.reshape(-1).to(eta.device).bool()
    if eta.shape != t.shape or eta.shape != e.shape:
        raise ValueError(f"log_risk {tuple(log_risk.shape)}, times {tuple(times.shape)} and events {tuple(events.shape)} must all be (B,)")
    if not bool(e.any()):
        return eta.sum() * 0.0
    at_risk = t[None, :] >= t[e][:, None]  # (E, B): row i's risk set
    log_den = torch.logsumexp(eta[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    total = -(eta[e] - log_den).sum()
    return total / (int(e.sum()) if reduction == "events" else eta.numel())


def log_risk_from_hazards(hazards: torch.Tensor) -> torch.Tensor:
    """log Σ_k (1 − S_k): a log-risk that ranks patients like survival.risk_from_survival (−Σ S_k)."""
    surv = torch.cumprod(1 - hazards, dim=1)
    return torch.log((1 - surv).sum(dim=1).clamp(min=1e-12))


def _nll(hazards: torch.Tensor, bins: torch.Tensor, times: torch.Tensor, events: torch.Tensor, alpha: float) -> torch.Tensor:
    return nll_loss(hazards, bins, events, alpha)


def _cox(hazards: torch.Tensor, bins: torch.Tensor, times: torch.Tensor, events: torch.Tensor, alpha: float) -> torch.Tensor:
    return cox_ph_loss(log_risk_from_hazards(hazards), times, events)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
LOSSES: dict[str, LossFn] = {"nll": _nll, "cox": _cox}


def get_loss(name: str) -> LossFn:
    """The registered loss ``name``: fn(hazards, bins, times, events, alpha) → scalar tensor."""
    if name not in LOSSES:
        raise ValueError(f"unknown experts.loss '{name}': use one of {sorted(LOSSES)}")
    return LOSSES[name]
