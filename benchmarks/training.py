"""Batched expert training (one padded, masked forward per step) vs a batch-1 loop, same model, data and seed.

Both run one epoch of ABMIL with dropout 0 over the same synthetic patients in the same order:
the batched path is :func:`wsikt.training.experts.train_expert`; the batch-1 loop (CROPKT-style) runs one
forward/backward per patient, accumulating loss/16 gradients, and steps the same optimiser and
schedule every ``--step`` patients. Prints both epoch losses (they must agree to 1e-5) and the
wall-clock ratio.

    python benchmarks/training.py            # 64 patients, 500-3000 patches of 1024-d, 1 thread
    python benchmarks/training.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from wsikt.training.experts import new_expert, train_expert
from wsikt.training.fit import cosine_with_warmup, optimizer_for, survival_loss
from wsikt.training.settings import TrainSettings


def synthetic(n: int, lo: int, hi: int, dim: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """``n`` bags of lo-hi patches (dim features) with a planted risk signal, their bins and events."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    w = rng.normal(size=dim).astype(np.float32)
    bags = [(rng.normal(size=(k, dim)).astype(np.float32) + np.float32(ui) * w) for ui, k in zip(u, rng.integers(lo, hi + 1, n))]
    n_bins = 8
    bins = np.clip((u * n_bins).astype(int), 0, n_bins - 1)[::-1].copy()
    events = (rng.uniform(size=n) < 0.6).astype(int)
    return bags, bins, events, n_bins


def batch1_epoch(bags, bins, events, n_bins: int, settings: TrainSettings, device: torch.device) -> float:
    """One epoch, one patient per forward, gradients accumulated over each step's patients."""
    rng = np.random.default_rng(settings.seed)
    model = new_expert(bags, n_bins, settings, device)
    opt = optimizer_for(model, settings.lr, settings.weight_decay)
    steps = math.ceil(len(bags) / settings.patients_per_step)
    sched = cosine_with_warmup(opt, settings.warmup_epochs * steps, settings.epochs * steps)
    y, e = torch.as_tensor(bins, device=device), torch.as_tensor(events, device=device)
    model.train()
    order = rng.permutation(len(bags))
    total = 0.0
    for start in range(0, len(order), settings.patients_per_step):
        idx = order[start:start + settings.patients_per_step]
        opt.zero_grad(set_to_none=True)
        for i in idx:
            loss = survival_loss(model(model.collate([bags[i]], device))["logits"], y[i:i + 1], e[i:i + 1], None, settings)
            (loss / len(idx)).backward()
            total += float(loss.detach())
        opt.step()
        sched.step()
    return total / len(bags)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 patients of 200-800 patches of 512-d")
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--min-patches", type=int, default=500)
    ap.add_argument("--max-patches", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--step", type=int, default=16, help="patients per optimiser step")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave as is)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args(argv)
    if a.quick:
        a.patients, a.min_patches, a.max_patches, a.dim = 32, 200, 800, 512
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    bags, bins, events, n_bins = synthetic(a.patients, a.min_patches, a.max_patches, a.dim, a.seed)
    settings = TrainSettings(model="abmil", epochs=1, lr=1e-4, dropout=0.0, patients_per_step=a.step, seed=a.seed)
    n_patches = sum(len(b) for b in bags)
    print(f"{a.patients} patients, {n_patches} patches ({a.min_patches}-{a.max_patches} each) of {a.dim}-d; "
          f"{a.step} patients per step; torch threads {torch.get_num_threads()}; device {device}")

    warm = TrainSettings(model="abmil", epochs=1, dropout=0.0, patients_per_step=2, seed=a.seed)
    train_expert(bags[:2], bins[:2], events[:2], n_bins, warm, device)  # first-call costs (allocator, BLAS) paid by neither
    t0 = time.perf_counter()
    loss_1 = batch1_epoch(bags, bins, events, n_bins, settings, device)
    t_1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, history = train_expert(bags, bins, events, n_bins, settings, device)
    t_b = time.perf_counter() - t0
    loss_b = history[0]
    diff = abs(loss_b - loss_1)
    print(f"batch-1 loop : epoch loss {loss_1:.7f}  {t_1:7.2f} s  ({a.patients / t_1:6.1f} patients/s)")
    print(f"batched      : epoch loss {loss_b:.7f}  {t_b:7.2f} s  ({a.patients / t_b:6.1f} patients/s)")
    print(f"|loss difference| {diff:.2e} ({'OK' if diff <= 1e-5 else 'MISMATCH'} at 1e-5); speed-up batched / batch-1: {t_1 / t_b:.2f}x")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
