"""Per-cancer expert survival models: batched masked training, prediction, per-fold outputs."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsikt.io import atomic_path, write_json, write_tsv
from wsikt.models import build_model, pad_bags
from wsikt.survival import assign_bins, fit_time_bins, harrell_c, nll_loss, risk_from_survival, survival_curve

log = logging.getLogger("wsikt.experts")


@dataclass(frozen=True)
class TrainSettings:
    """Expert training settings (CROPKT defaults); every field comes from config key experts.*."""

    model: str = "abmil"
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-5
    patients_per_step: int = 16
    warmup_epochs: int = 1
    alpha: float = 0.5
    dropout: float = 0.25
    seed: int = 42
    feature_norm: str = "none"  # 'standardize': z-score features with training-fold patch statistics
    bins_kind: str = "uniform"
    n_bins: int = 32
    bin_width_days: float = 365.0


def optimizer_for(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on ≥2-D weights only (biases and norms undecayed)."""
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


def train_expert(
    bags: list[np.ndarray], bins: np.ndarray, events: np.ndarray, n_bins: int, settings: TrainSettings, device: torch.device
) -> tuple[nn.Module, list[float]]:
    """Train an aggregator; one optimiser step per ``patients_per_step`` patients in one padded forward.

    Returns the model after the last epoch (no selection on any held-out data) and the mean
    training loss per epoch.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_model(settings.model, bags[0].shape[1], n_bins, settings.dropout).to(device)
    if settings.feature_norm == "standardize":
        patches = torch.from_numpy(np.concatenate(bags)).double()
        model.set_normalisation(patches.mean(0).float().to(device), patches.std(0).float().to(device))
    elif settings.feature_norm != "none":
        raise ValueError(f"experts.feature_norm '{settings.feature_norm}' must be 'none' or 'standardize'")
    opt = optimizer_for(model, settings.lr, settings.weight_decay)
    steps_per_epoch = math.ceil(len(bags) / settings.patients_per_step)
    sched = cosine_with_warmup(opt, settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch)
    tensors = [torch.from_numpy(b).to(device) for b in bags]
    y = torch.as_tensor(bins, device=device)
    e = torch.as_tensor(events, device=device)
    history = []
    for _ in range(settings.epochs):
        model.train()
        order = rng.permutation(len(bags))
        losses = []
        for start in range(0, len(order), settings.patients_per_step):
            idx = order[start:start + settings.patients_per_step]
            x, mask = pad_bags([tensors[i] for i in idx])
            out = model(x, mask)
            loss = nll_loss(torch.sigmoid(out["logits"]), y[idx], e[idx], settings.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()) * len(idx))
        history.append(sum(losses) / len(bags))
    return model, history


@torch.inference_mode()
def predict(model: nn.Module, bags: list[np.ndarray], device: torch.device, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Survival curves (N, T) and bag embeddings (N, 512) in eval mode."""
    model.eval()
    surv, emb = [], []
    for start in range(0, len(bags), batch):
        x, mask = pad_bags([torch.from_numpy(b).to(device) for b in bags[start:start + batch]])
        out = model(x, mask)
        surv.append(survival_curve(torch.sigmoid(out["logits"])).cpu().numpy())
        emb.append(out["embedding"].cpu().numpy())
    return np.concatenate(surv), np.concatenate(emb)


def save_expert(path: str | Path, model: nn.Module, in_dim: int, n_bins: int, inner_edges: np.ndarray, settings: TrainSettings) -> None:
    """Weights plus what is needed to rebuild and reuse the expert, written atomically."""
    with atomic_path(path) as tmp:
        torch.save(
            {"state_dict": model.state_dict(), "in_dim": in_dim, "n_bins": n_bins,
             "inner_edges": inner_edges.tolist(), "settings": asdict(settings)},
            tmp,
        )


def load_expert(path: str | Path, device: torch.device) -> nn.Module:
    """Rebuild an expert from its checkpoint, in eval mode."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    s = ckpt["settings"]
    model = build_model(s["model"], ckpt["in_dim"], ckpt["n_bins"], s["dropout"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def run_expert_fold(
    split: pd.DataFrame,
    bags: list[np.ndarray],
    fold: int,
    settings: TrainSettings,
    out_model: str | Path,
    out_predictions: str | Path,
    out_metrics: str | Path,
    device: torch.device,
) -> dict:
    """Train on every fold but ``fold``, predict all patients, write weights, predictions and metrics.

    ``split`` rows (patient_id, cancer, time, event, fold) align with ``bags``. Time bins are fit on
    the training patients only.
    """
    train = (split["fold"] != fold).to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    edges = fit_time_bins(times[train], events[train], settings.bins_kind, settings.n_bins, settings.bin_width_days)
    n_bins = len(edges) + 1
    bins = assign_bins(times, edges)
    train_idx = np.flatnonzero(train)
    model, history = train_expert([bags[i] for i in train_idx], bins[train_idx], events[train_idx], n_bins, settings, device)
    surv, _ = predict(model, bags, device)
    risk = risk_from_survival(surv)
    preds = pd.DataFrame(
        {"patient_id": split["patient_id"], "fold": fold, "split": np.where(train, "train", "test"),
         "time": times, "event": events, "risk": risk}
    )
    preds = pd.concat([preds, pd.DataFrame(surv, columns=[f"S_{k}" for k in range(n_bins)])], axis=1)
    test = ~train
    metrics = {
        "cancer": str(split["cancer"].iloc[0]), "fold": fold, "model": settings.model,
        "c_index_test": harrell_c(times[test], events[test], risk[test]),
        "c_index_train": harrell_c(times[train], events[train], risk[train]),
        "n_train": int(train.sum()), "n_test": int(test.sum()), "events_test": int(events[test].sum()),
        "loss_per_epoch": history, "settings": asdict(settings),
    }
    save_expert(out_model, model, bags[0].shape[1], n_bins, edges, settings)
    write_tsv(preds, out_predictions)
    write_json(metrics, out_metrics)
    log.info("%s fold %d: C test %.3f, train %.3f", metrics["cancer"], fold, metrics["c_index_test"], metrics["c_index_train"])
    return metrics


def summarise_experts(metrics: list[dict]) -> pd.DataFrame:
    """One row per cancer: mean ± sd of test C over folds, per-fold values."""
    df = pd.DataFrame(metrics)
    rows = []
    for cancer, g in df.groupby("cancer", sort=True):
        g = g.sort_values("fold")
        c = g["c_index_test"].astype(float)
        rows.append(
            {"cancer": cancer, "model": g["model"].iloc[0], "n_patients": int(g["n_train"].iloc[0] + g["n_test"].iloc[0]),
             "n_events": int(g["events_test"].sum()), "folds": len(g),
             "c_index_mean": float(np.nanmean(c)), "c_index_sd": float(np.nanstd(c, ddof=1)) if c.notna().sum() > 1 else float("nan"),
             "c_index_folds": ",".join(f"{v:.4f}" for v in c)}
        )
    return pd.DataFrame(rows)
