"""The one fit loop: experts, ROUPKT and the fine-tuning baselines are all trained by :func:`fit`.

One optimiser step per ``patients_per_step`` patients of a shuffled epoch: floor(N/patients_per_step)
steps with the last partial step dropped (CROPKT, ``drop_last``) or ceil(N/…) steps keeping it;
AdamW with weight decay on ≥2-D weights only (or Adam with L2 on every weight, as CrossFusion and
HistoSSLscaling); linear warmup then cosine decay (Hugging Face's ``get_cosine_schedule_with_warmup``
as CROPKT uses it, or wsikt's warmup that starts above 0), a per-epoch cosine annealing that
restarts (CrossFusion) or a constant rate (HistoSSLscaling); the
model after the last epoch is kept (no selection on held-out data). The loss is the discrete-time NLL(α) or the
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
    """AdamW with weight decay on ≥2-D weights only (biases and norms undecayed); or ``adam``: torch's Adam
    with its L2 ``weight_decay`` on every trainable weight, as CrossFusion's and HistoSSLscaling's code build it."""
    if kind == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "hf_cosine",
              steps_per_epoch: int = 1, period_epochs: int = 10) -> float:
    """The learning-rate multiplier of optimiser step ``step`` (0-based).

    'hf_cosine' is Hugging Face's get_cosine_schedule_with_warmup (half a cycle): step/warmup during
    warmup, so the first step has lr 0. 'cosine' warms up one step ahead, (step+1)/warmup.
    'epoch_cosine' is PyTorch's CosineAnnealingLR(T_max=period_epochs, eta_min=0) stepped once per
    epoch, as CrossFusion steps it: (1 + cos(π·epoch/T_max))/2, which falls to 0 over T_max epochs and
    rises back over the next T_max. 'constant' is 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "epoch_cosine":
        return 0.5 * (1 + math.cos(math.pi * (step // max(1, steps_per_epoch)) / period_epochs))
    if step < warmup_steps:
        return (step + (schedule == "cosine")) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       schedule: str = "hf_cosine", steps_per_epoch: int = 1,
                       period_epochs: int = 10) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of every optimiser step, as :func:`lr_factor` gives it."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, schedule, steps_per_epoch, period_epochs))


def step_slices(n: int, patients_per_step: int, drop_last: bool) -> list[slice]:
    """The positions in a shuffled epoch of ``n`` patients that each optimiser step trains on.

    With ``drop_last`` the last partial step is dropped (floor(n/p) steps, CROPKT); a training set
    smaller than one step is then trained as one step of all its patients (CROPKT's loop has no step
    there and fails).
    """
    p = patients_per_step
    n_steps = n // p if drop_last and n >= p else math.ceil(n / p)
    return [slice(i * p, min(n, (i + 1) * p)) for i in range(n_steps)]


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
    steps = step_slices(n, settings.patients_per_step, settings.drop_last)
    sched = cosine_with_warmup(opt, settings.warmup_epochs * len(steps), settings.epochs * len(steps), settings.lr_schedule,
                               len(steps), settings.lr_period_epochs)
    y, e = torch.as_tensor(targets.bins, device=device), torch.as_tensor(targets.events, device=device)
    t = None if targets.times is None else torch.as_tensor(np.asarray(targets.times, np.float64), device=device)
    history = []
    for _ in range(settings.epochs):
        module.train()
        order, total, seen = rng.permutation(n), 0.0, 0
        for part in steps:
            idx = order[part]
            logits, aux = forward(idx)
            ti = torch.as_tensor(idx, device=device)
            loss = survival_loss(logits, y[ti], e[ti], None if t is None else t[ti], settings)
            if aux is not None:
                loss = loss + aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        history.append(total / seen)
        if on_epoch is not None:
            on_epoch(len(history))
    return history
