"""The one fit loop's optimisers and learning-rate schedules against the torch classes the papers' code uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsikt.training import fit as fit_module
from wsikt.training.fit import Targets, fit
from wsikt.training.settings import TrainSettings


def _lrs_and_optimiser(n: int, settings: TrainSettings, monkeypatch) -> tuple[list[float], torch.optim.Optimizer]:
    """The lr of every optimiser step of our fit loop on ``n`` patients, and the optimiser it built."""
    lrs, built = [], []
    real = fit_module.optimizer_for

    def recording(model, lr, weight_decay, kind="adamw"):
        opt = real(model, lr, weight_decay, kind)
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        built.append(opt)
        return opt

    monkeypatch.setattr(fit_module, "optimizer_for", recording)
    head = nn.Linear(3, 4)
    fit(head, lambda idx: (head(torch.ones(len(idx), 3)), None), Targets(np.zeros(n, int), np.ones(n, int)), settings,
        torch.device("cpu"))
    return lrs, built[0]


def test_epoch_cosine_is_crossfusions_cosine_annealing_stepped_per_epoch(monkeypatch):
    """CrossFusion's train.py: CosineAnnealingLR(T_max=10, eta_min=lr // 10 = 0), scheduler.step() once per epoch."""
    settings = TrainSettings(epochs=25, lr=1e-4, patients_per_step=4, drop_last=False, warmup_epochs=0,
                             lr_schedule="epoch_cosine", lr_period_epochs=10, optimizer="adam", weight_decay=4e-6)
    ours, _ = _lrs_and_optimiser(10, settings, monkeypatch)  # 3 steps per epoch
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4 // 10)
    theirs = []
    for _ in range(25):
        theirs += [opt.param_groups[0]["lr"]] * 3
        opt.step()
        sched.step()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    assert min(ours) == pytest.approx(0.0, abs=1e-15) and ours[-1] > ours[3 * 15]  # it falls to 0, then rises back


def test_adam_is_torch_adam_with_l2_on_every_weight(monkeypatch):
    settings = TrainSettings(epochs=1, patients_per_step=4, optimizer="adam", weight_decay=4e-6, lr_schedule="constant",
                             warmup_epochs=0)
    lrs, opt = _lrs_and_optimiser(8, settings, monkeypatch)
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 4e-6 and len(opt.param_groups[0]["params"]) == 2  # weight and bias
    assert lrs == [1e-4, 1e-4]


def test_default_optimiser_is_adamw_without_decay_on_biases(monkeypatch):
    _, opt = _lrs_and_optimiser(16, TrainSettings(epochs=1), monkeypatch)
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0]


@pytest.mark.parametrize("schedule", ["epoch_cosine", "constant"])
def test_schedules_without_warmup_refuse_one(schedule):
    with pytest.raises(ValueError, match="set experts.warmup_epochs: 0"):
        TrainSettings(lr_schedule=schedule, warmup_epochs=1)
    with pytest.raises(ValueError, match="experts.optimizer 'sgd' must be one of adamw, adam"):
        TrainSettings(optimizer="sgd")
