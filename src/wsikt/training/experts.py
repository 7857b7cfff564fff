"""Per-cancer expert survival models: batched masked training, prediction, per-fold outputs.

One optimiser step sees ``patients_per_step`` patients in ONE padded, masked forward; because every
aggregator ignores padding and the losses are means over patients, the step's loss and gradients
equal the mean of the per-patient (batch-1) ones. Bags are numpy arrays (single magnification) or
:class:`wsikt.cohort.bags.PatientBag` (several); they stay on the host and each step's batch is padded
there and moved to ``device`` once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsikt.cohort.bags import Bag, as_patient_bag, primary_features
from wsikt.cohort.splits import inner_folds
from wsikt.core.io import atomic_path, write_json, write_tsv
from wsikt.mil import Expert, build_model
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival
from wsikt.survival.losses import check_loss_config, cox_ph_loss, nll_loss
from wsikt.survival.metrics import evaluate_fold, harrell_c

log = logging.getLogger("wsikt.training.experts")


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
    loss: str = "nll"  # 'nll' (discrete-time, T outputs) or 'cox' (one log-risk output, ≥16 patients per step)
    model_params: dict[str, Any] = field(default_factory=dict)  # the aggregator's own hyper-parameters


@dataclass(frozen=True)
class NullGate:
    """Keep a trained expert only if inner CV on its training fold shows signal (config key experts.null_gate).

    Otherwise the expert becomes the null model: one survival curve (the training fold's
    life-table) for every patient. A fit to noise is not a neutral expert: C ignores scale, so
    its chance slope along the image's main direction ranks other cancers far from 0.5.
    """

    inner_folds: int = 0  # 0 = off: every expert keeps its trained head (CROPKT)
    min_c: float = 0.55  # pooled out-of-fold Harrell's C the inner experts must exceed


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


def new_expert(bags: Sequence[Bag], n_bins: int, settings: TrainSettings, device: torch.device) -> Expert:
    """A freshly initialised expert (seeded) with its feature normalisation fit on ``bags``."""
    check_loss_config(settings.loss, settings.patients_per_step)
    torch.manual_seed(settings.seed)
    in_dim = primary_features(bags[0]).shape[1]
    model = build_model(settings.model, in_dim, n_bins, settings.dropout, settings.loss, **settings.model_params).to(device)
    if settings.feature_norm == "standardize":
        stats = [feature_stats([as_patient_bag(b).scale(s) for b in bags]) for s in model.scales]
        mean = torch.from_numpy(np.stack([m for m, _ in stats])).float().to(device)
        std = torch.from_numpy(np.stack([s for _, s in stats])).float().to(device)
        model.set_normalisation(mean, std)
    elif settings.feature_norm != "none":
        raise ValueError(f"experts.feature_norm '{settings.feature_norm}' must be 'none' or 'standardize'")
    return model


def feature_stats(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and sample sd over all rows of ``arrays`` (two float64 passes, no concatenated copy)."""
    n = sum(len(a) for a in arrays)
    mean = sum(a.sum(0, dtype=np.float64) for a in arrays) / n
    var = sum(((a - mean) ** 2).sum(0) for a in arrays) / max(1, n - 1)
    return mean, np.sqrt(var)


def step_loss(out: dict[str, torch.Tensor], bins: torch.Tensor, times: torch.Tensor | None, events: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    """Loss of one step's batch: NLL mean over patients, or the Cox partial likelihood of the batch."""
    if settings.loss == "cox":
        return cox_ph_loss(out["logits"][:, 0], times, events)
    return nll_loss(torch.sigmoid(out["logits"]), bins, events, settings.alpha)


def train_expert(
    bags: Sequence[Bag], bins: np.ndarray, events: np.ndarray, n_bins: int, settings: TrainSettings, device: torch.device,
    times: np.ndarray | None = None,
) -> tuple[Expert, list[float]]:
    """Train an aggregator; one optimiser step per ``patients_per_step`` patients in one padded, masked forward.

    Returns the model after the last epoch (no selection on any held-out data) and the mean
    training loss per epoch. ``times`` (days) are needed by the Cox loss only.
    """
    if settings.loss == "cox" and times is None:
        raise ValueError("experts.loss 'cox' needs the patients' times: pass times= to train_expert")
    rng = np.random.default_rng(settings.seed)
    model = new_expert(bags, n_bins, settings, device)
    opt = optimizer_for(model, settings.lr, settings.weight_decay)
    steps_per_epoch = math.ceil(len(bags) / settings.patients_per_step)
    sched = cosine_with_warmup(opt, settings.warmup_epochs * steps_per_epoch, settings.epochs * steps_per_epoch)
    y = torch.as_tensor(bins, device=device)
    e = torch.as_tensor(events, device=device)
    t = None if times is None else torch.as_tensor(np.asarray(times, np.float64), device=device)
    history = []
    for _ in range(settings.epochs):
        model.train()
        order = rng.permutation(len(bags))
        total = 0.0
        for start in range(0, len(order), settings.patients_per_step):
            idx = order[start:start + settings.patients_per_step]
            out = model(model.collate([bags[i] for i in idx], device))
            ti = torch.as_tensor(idx, device=device)
            loss = step_loss(out, y[ti], None if t is None else t[ti], e[ti], settings)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(bags))
    return model, history


@torch.inference_mode()
def forward_all(model: Expert, bags: Sequence[Bag], device: torch.device, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Raw head outputs (N, T or 1) and bag embeddings (N, 512) in eval mode."""
    model.eval()
    logits, emb = [], []
    for start in range(0, len(bags), batch):
        out = model(model.collate(bags[start:start + batch], device))
        logits.append(out["logits"].float().cpu().numpy())
        emb.append(out["embedding"].float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(emb)


@torch.inference_mode()
def predict(model: Expert, bags: Sequence[Bag], device: torch.device, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Survival curves (N, T) and bag embeddings (N, 512) in eval mode."""
    logits, emb = forward_all(model, bags, device, batch)
    surv = model.survival(torch.from_numpy(logits).to(model.feature_mean.device)).cpu().numpy()
    return surv, emb


def breslow_log_cumhaz(times: np.ndarray, events: np.ndarray, log_risk: np.ndarray, at: np.ndarray) -> np.ndarray:
    """log H0(t) of the Breslow baseline fit on (times, events, log-risk), at times ``at`` (−inf where H0 = 0).

    H0(t) = Σ_{event times s ≤ t} d_s / Σ_{j: t_j ≥ s} exp(η_j), in log space so large η cannot overflow.
    """
    times, events, eta = np.asarray(times, float), np.asarray(events).astype(bool), np.asarray(log_risk, float)
    s, d = np.unique(times[events], return_counts=True)
    if len(s) == 0:
        return np.full(len(at), -np.inf)
    order = np.argsort(times)
    t_sorted, eta_sorted = times[order], eta[order]
    suffix = np.logaddexp.accumulate(eta_sorted[::-1])[::-1]  # log Σ_{j ≥ i} exp η_j over sorted times
    log_den = suffix[np.searchsorted(t_sorted, s, side="left")]
    log_cum = np.logaddexp.accumulate(np.log(d) - log_den)
    k = np.searchsorted(s, np.asarray(at, float), side="right") - 1
    return np.where(k >= 0, log_cum[np.clip(k, 0, None)], -np.inf)


def survival_times(inner_edges: np.ndarray, train_times: np.ndarray) -> np.ndarray:
    """The T time points of the survival columns: each bin's upper edge, the last training time for the open bin."""
    last = max(float(np.max(train_times)), float(inner_edges[-1]) if len(inner_edges) else 0.0)
    return np.append(np.asarray(inner_edges, float), last)


def fit_cox_baseline(model: Expert, train_times: np.ndarray, train_events: np.ndarray, train_log_risk: np.ndarray, inner_edges: np.ndarray) -> None:
    """Fit the Breslow baseline on the training fold and store log H0 at the bin edges in the expert."""
    at = survival_times(inner_edges, train_times)
    log_h0 = breslow_log_cumhaz(train_times, train_events, train_log_risk, at)
    model.set_baseline(torch.as_tensor(log_h0, dtype=torch.float32))


def expert_risk(model: Expert, bags: Sequence[Bag], device: torch.device) -> np.ndarray:
    """Risk per patient (higher = shorter survival): the log-risk for Cox, −Σ S_k for NLL."""
    if model.loss == "cox":
        return forward_all(model, bags, device)[0][:, 0].astype(float)
    return risk_from_survival(predict(model, bags, device)[0])


def inner_cv_c(
    split: pd.DataFrame, bags: Sequence[Bag], fold: int, settings: TrainSettings, n_inner: int, device: torch.device,
) -> float:
    """Harrell's C of out-of-fold risks pooled over ``n_inner`` inner experts on outer fold ``fold``'s training patients.

    Inner folds are stratified like the outer ones; each inner expert fits its own time bins and is
    trained exactly like the outer one. The risks are pooled (one C over all training patients)
    because a small cohort's inner validation folds hold too few comparable pairs on their own.
    The outer test fold is never read.
    """
    inner = inner_folds(split, fold, n_inner, settings.seed, key="experts.null_gate.inner_folds")
    rows = split.index.get_indexer(inner.index)
    labels = inner.to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    risk = np.full(len(split), np.nan)
    for j in range(n_inner):
        tr, va = rows[labels != j], rows[labels == j]
        try:
            edges = fit_time_bins(times[tr], events[tr], settings.bins_kind, settings.n_bins, settings.bin_width_days)
        except ValueError as exc:
            raise ValueError(f"experts.null_gate inner fold {j} of outer fold {fold}: {exc}; "
                             "or lower experts.null_gate.inner_folds (0 = off)") from None
        model, _ = train_expert([bags[i] for i in tr], assign_bins(times, edges)[tr], events[tr], len(edges) + 1,
                                settings, device, times=times[tr])
        risk[va] = expert_risk(model, [bags[i] for i in va], device)
    return harrell_c(times[rows], events[rows], risk[rows])


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


def save_expert(path: str | Path, model: nn.Module, in_dim: int, n_bins: int, inner_edges: np.ndarray, settings: TrainSettings) -> None:
    """Weights plus what is needed to rebuild and reuse the expert, written atomically."""
    with atomic_path(path) as tmp:
        torch.save(
            {"state_dict": model.state_dict(), "in_dim": in_dim, "n_bins": n_bins,
             "inner_edges": np.asarray(inner_edges).tolist(), "settings": asdict(settings)},
            tmp,
        )


def load_expert(path: str | Path, device: torch.device) -> Expert:
    """Rebuild an expert from its checkpoint, in eval mode."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    s = ckpt["settings"]
    model = build_model(s["model"], ckpt["in_dim"], ckpt["n_bins"], s["dropout"], s.get("loss", "nll"), **s.get("model_params", {}))
    state = dict(ckpt["state_dict"])
    for key in ("is_null", "null_logits"):  # checkpoints from before the null gate: a trained head
        state.setdefault(key, getattr(model, key))
    model.load_state_dict(state)
    return model.to(device).eval()


def run_expert_fold(
    split: pd.DataFrame,
    bags: Sequence[Bag],
    fold: int,
    settings: TrainSettings,
    out_model: str | Path,
    out_predictions: str | Path,
    out_metrics: str | Path,
    device: torch.device,
    gate: NullGate = NullGate(),
) -> dict:
    """Train on every fold but ``fold``, predict all patients, write weights, predictions and metrics.

    ``split`` rows (patient_id, cancer, time, event, fold) align with ``bags``. Time bins (and, for
    Cox, the Breslow baseline) are fit on the training patients only. With ``gate.inner_folds`` the
    expert becomes the null model unless inner CV on the training patients beats ``gate.min_c``.
    """
    train = (split["fold"] != fold).to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    edges = fit_time_bins(times[train], events[train], settings.bins_kind, settings.n_bins, settings.bin_width_days)
    n_bins = len(edges) + 1
    bins = assign_bins(times, edges)
    train_idx = np.flatnonzero(train)
    model, history = train_expert(
        [bags[i] for i in train_idx], bins[train_idx], events[train_idx], n_bins, settings, device, times=times[train_idx]
    )
    gate_result = None
    if gate.inner_folds:
        inner_c = inner_cv_c(split, bags, fold, settings, gate.inner_folds, device)
        is_null = not inner_c > gate.min_c  # NaN (no comparable pair) is no evidence either
        if is_null:
            model.make_null(torch.zeros(1) if settings.loss == "cox" else life_table_logits(bins[train_idx], events[train_idx], n_bins))
        gate_result = {"inner_folds": gate.inner_folds, "min_c": gate.min_c, "inner_c": inner_c, "null": is_null}
        log.info("%s fold %d: inner-CV C %.3f %s %.2f: %s", split["cancer"].iloc[0], fold, inner_c,
                 "≤" if is_null else ">", gate.min_c, "null model (one risk for all)" if is_null else "trained expert kept")
    if settings.loss == "cox":
        logits, _ = forward_all(model, bags, device)
        fit_cox_baseline(model, times[train], events[train], logits[train, 0], edges)
        surv, _ = predict(model, bags, device)
        risk = logits[:, 0].astype(float)
    else:
        surv, _ = predict(model, bags, device)
        risk = risk_from_survival(surv)
    preds = pd.DataFrame(
        {"patient_id": split["patient_id"], "fold": fold, "split": np.where(train, "train", "test"),
         "time": times, "event": events, "risk": risk}
    )
    preds = pd.concat([preds, pd.DataFrame(surv, columns=[f"S_{k}" for k in range(n_bins)])], axis=1)
    test = ~train
    ev = evaluate_fold(times[train], events[train], times[test], events[test], risk[test], surv[test], edges)
    metrics = {
        "cancer": str(split["cancer"].iloc[0]), "fold": fold, "model": settings.model, "loss": settings.loss,
        "c_index_test": harrell_c(times[test], events[test], risk[test]),
        "c_index_train": harrell_c(times[train], events[train], risk[train]),
        "uno_c_test": ev["uno_c"], "td_auc_test": ev["td_auc"], "ibs_test": ev["ibs"], "ibs_km_test": ev["ibs_km"],
        "eval_times": ev["eval_times"], "td_auc_per_time": ev["td_auc_per_time"], "metrics_reason": ev["reason"],
        "n_train": int(train.sum()), "n_test": int(test.sum()), "events_test": int(events[test].sum()),
        "loss_per_epoch": history, "settings": asdict(settings),
        "null": bool(gate_result and gate_result["null"]), "null_gate": gate_result,
    }
    save_expert(out_model, model, primary_features(bags[0]).shape[1], n_bins, edges, settings)
    write_tsv(preds, out_predictions)
    write_json(metrics, out_metrics)
    log.info("%s fold %d: C test %.3f, train %.3f", metrics["cancer"], fold, metrics["c_index_test"], metrics["c_index_train"])
    return metrics


def summarise_experts(metrics: list[dict]) -> pd.DataFrame:
    """One row per cancer: mean ± sd of test C over folds, per-fold values (experts: how many folds are null models)."""
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
        if "null" in g:  # experts (not ROUPKT): folds the null gate made the null model
            rows[-1]["null_folds"] = int(g["null"].fillna(False).astype(bool).sum())
    return pd.DataFrame(rows)
