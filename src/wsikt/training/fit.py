"""The one fit loop: experts, ROUPKT and the fine-tuning baselines are all trained by :func:`fit`.

One optimiser step per ``patients_per_step`` patients (a shuffled epoch, last partial step kept);
AdamW with weight decay on ≥2-D weights only; linear warmup then cosine decay (or, experts.optimizer
'adam' and experts.lr_schedule 'constant', HistoSSLscaling's Adam at a constant rate); the model after the
last epoch is kept (no selection on held-out data). The loss is the discrete-time NLL(α) or the
Cox partial likelihood, plus the model's auxiliary loss when it has one (ROUPKT's routing losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from wsikt.survival.losses import cox_ph_loss, nll_loss
from wsikt.training.settings import TrainSettings

# forward(idx) → (logits (B, T or 1), auxiliary loss or None) for the patients ``idx``
StepForward = Callable[[np.ndarray], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class Targets:
    """The training patients' labels: time bins, events and (for Cox) times in days."""

    bins: np.ndarray
    events: np.ndarray
    times: np.ndarray | None = None


def optimizer_for(model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW with weight decay on ≥2-D weights only (biases and norms undecayed); or 'adam': Adam, L2 on every parameter.

    'adam' is HistoSSLscaling's torch.optim.Adam(params, lr, weight_decay).
    """
    if kind == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps`` then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def survival_loss(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, times: torch.Tensor | None,
                  settings: TrainSettings) -> torch.Tensor:
    """NLL(α) of the hazards sigmoid(logits), mean over patients; or the batch's Cox partial likelihood."""
    if settings.loss == "cox":
        if times is None:
            raise ValueError("experts.loss 'cox' needs the patients' times: pass Targets(times=...)")
        return cox_ph_loss(logits[:, 0], times, events, settings.cox_reduction)
    return nll_loss(torch.sigmoid(logits), bins, events, settings.alpha)


def fit(module: nn.Module, forward: StepForward, targets: Targets, settings: TrainSettings, device: torch.device,
        on_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Train ``module`` on ``len(targets.bins)`` patients; returns the mean loss per epoch.

    ``on_epoch(e)`` runs after each epoch e = 1, 2, … (e.g. to score the model on validation patients).
    """
    n = len(targets.bins)
    rng = np.random.default_rng(settings.seed)
    opt = optimizer_for(module, settings.lr, settings.weight_decay, settings.optimizer)
    steps = math.ceil(n / settings.patients_per_step)
    sched = cosine_with_warmup(opt, settings.warmup_epochs * steps, settings.epochs * steps) if settings.lr_schedule == "cosine" else None
    y, e = torch.as_tensor(targets.bins, device=device), torch.as_tensor(targets.events, device=device)
    t = None if targets.times is None else torch.as_tensor(np.asarray(targets.times, np.float64), device=device)
    history = []
    for _ in range(settings.epochs):
        module.train()
        order, total = rng.permutation(n), 0.0
        for start in range(0, n, settings.patients_per_step):
            idx = order[start:start + settings.patients_per_step]
            logits, aux = forward(idx)
            ti = torch.as_tensor(idx, device=device)
            loss = survival_loss(logits, y[ti], e[ti], None if t is None else t[ti], settings)
            if aux is not None:
                loss = loss + aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
        if on_epoch is not None:
            on_epoch(len(history))
    return history
