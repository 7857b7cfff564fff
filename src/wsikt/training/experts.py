"""Per-cancer expert survival models: batched masked training, prediction, per-fold outputs.

One optimiser step sees ``patients_per_step`` patients in ONE padded, masked forward; because every
aggregator ignores padding and the losses are means over patients, the step's loss and gradients
equal the mean of the per-patient (batch-1) ones. Bags are numpy arrays (single magnification) or
:class:`wsikt.cohort.bags.PatientBag` (several); they stay on the host and each step's batch is padded
there and moved to ``device`` once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from wsikt.cohort.bags import Bag, as_patient_bag, primary_features
from wsikt.mil import Expert, build_model
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival
from wsikt.survival.metrics import evaluate_fold
from wsikt.training.checkpoint import read_checkpoint, save_checkpoint
from wsikt.training.fit import Targets, fit
from wsikt.training.folds import FitPredict, inner_bins, inner_cv_c, inner_cv_curve, write_fold_outputs
from wsikt.training.gate import life_table_logits, null_gate
from wsikt.training.settings import HyperGrid, NullGate, TrainSettings

log = logging.getLogger("wsikt.training.experts")


def new_expert(bags: Sequence[Bag], n_bins: int, settings: TrainSettings, device: torch.device) -> Expert:
    """A freshly initialised expert (seeded) with its feature normalisation fit on ``bags``."""
    torch.manual_seed(settings.seed)
    in_dim = primary_features(bags[0]).shape[1]
    model = build_model(settings.model, in_dim, n_bins, settings.dropout, settings.loss, settings.projection_dropout,
                        **settings.model_params).to(device)
    if settings.feature_norm == "standardize":
        stats = [feature_stats([as_patient_bag(b).scale(s) for b in bags]) for s in model.scales]
        mean = torch.from_numpy(np.stack([m for m, _ in stats])).float().to(device)
        std = torch.from_numpy(np.stack([s for _, s in stats])).float().to(device)
        model.set_normalisation(mean, std)
    return model


def feature_stats(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and sample sd over all rows of ``arrays`` (two float64 passes, no concatenated copy)."""
    n = sum(len(a) for a in arrays)
    mean = sum(a.sum(0, dtype=np.float64) for a in arrays) / n
    var = sum(((a - mean) ** 2).sum(0) for a in arrays) / max(1, n - 1)
    return mean, np.sqrt(var)


def train_expert(
    bags: Sequence[Bag], bins: np.ndarray, events: np.ndarray, n_bins: int, settings: TrainSettings, device: torch.device,
    times: np.ndarray | None = None, on_epoch: Callable[[Expert, int], None] | None = None,
) -> tuple[Expert, list[float]]:
    """A new expert trained by the one fit loop, each step one padded, masked forward of its patients.

    Returns the model after the last epoch and the mean training loss per epoch. ``times`` (days)
    are needed by the Cox loss only. ``on_epoch(model, e)`` runs after each epoch e = 1, 2, ….
    """
    model = new_expert(bags, n_bins, settings, device)

    def forward(idx: np.ndarray) -> tuple[torch.Tensor, None]:
        return model(model.collate([bags[i] for i in idx], device))["logits"], None

    hook = None if on_epoch is None else (lambda e: on_epoch(model, e))
    return model, fit(model, forward, Targets(bins, events, times), settings, device, on_epoch=hook)


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


def gate_c(split: pd.DataFrame, bags: Sequence[Bag], fold: int, settings: TrainSettings, n_inner: int, device: torch.device) -> float:
    """The null gate's score: pooled inner-CV C of experts trained exactly like the outer one, each with its own bins."""
    return inner_cv_c(split, fold, n_inner, settings.seed, expert_fit_predict(split, bags, fold, settings, device),
                      key="experts.null_gate.inner_folds")


def expert_fit_predict(split: pd.DataFrame, bags: Sequence[Bag], fold: int, settings: TrainSettings, device: torch.device) -> FitPredict:
    """Train an expert like the outer one (its own bins) on inner-training rows; risks of the validation rows."""
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)

    def fit_predict(tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        edges = inner_bins(times, events, tr, settings, fold, "experts.null_gate.inner_folds")
        model, _ = train_expert([bags[i] for i in tr], assign_bins(times, edges)[tr], events[tr], len(edges) + 1,
                                settings, device, times=times[tr])
        return expert_risk(model, [bags[i] for i in va], device)

    return fit_predict


def select_hyperparameters(split: pd.DataFrame, bags: Sequence[Bag], fold: int, settings: TrainSettings, grid: HyperGrid,
                           device: torch.device) -> tuple[TrainSettings, dict]:
    """Nested CV on outer fold ``fold``'s training patients: the grid's best settings, and a record of every trial.

    Each combination is trained on each inner fold's training part (its own time bins) and scored
    on the held-out inner fold (after every epoch when ``grid.epochs``); the best inner score wins,
    the first combination on a tie. The outer test fold is never read.
    """
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    trials = []
    for params in grid.candidates():
        s = replace(settings, **params)

        def fit_predict(tr: np.ndarray, va: np.ndarray, s: TrainSettings = s) -> np.ndarray:
            edges = inner_bins(times, events, tr, s, fold, "experts.grid.inner_folds")
            val = [bags[i] for i in va]
            risks: list[np.ndarray] = []

            def score(model: Expert, epoch: int) -> None:
                if grid.epochs or epoch == s.epochs:
                    risks.append(expert_risk(model, val, device))

            train_expert([bags[i] for i in tr], assign_bins(times, edges)[tr], events[tr], len(edges) + 1, s, device,
                         times=times[tr], on_epoch=score)
            return np.stack(risks)

        curve = inner_cv_curve(split, fold, grid.inner_folds, settings.seed, fit_predict, key="experts.grid.inner_folds",
                               pooled=grid.score == "pooled")
        k = int(np.nanargmax(curve)) if np.isfinite(curve).any() else len(curve) - 1
        trials.append({"params": params, "epochs": k + 1 if grid.epochs else s.epochs, "inner_c": float(curve[k]),
                       "inner_c_per_epoch": curve.tolist() if grid.epochs else None})
    best = max(range(len(trials)), key=lambda i: (np.nan_to_num(trials[i]["inner_c"], nan=-np.inf), -i))
    chosen = {**trials[best]["params"], "epochs": trials[best]["epochs"]}
    log.info("%s fold %d: grid chose %s (inner C %.3f over %d combinations)", split["cancer"].iloc[0], fold, chosen,
             trials[best]["inner_c"], len(trials))
    record = {"inner_folds": grid.inner_folds, "score": grid.score, "select_epochs": grid.epochs, "chosen": chosen, "trials": trials}
    return replace(settings, **chosen), record


def save_expert(path: str | Path, model: Expert, in_dim: int, n_bins: int, inner_edges: np.ndarray, settings: TrainSettings,
                cancer: str = "", fold: int = -1) -> None:
    """The expert's checkpoint (kind 'expert'), written atomically; it names its (cancer, fold)."""
    save_checkpoint(path, "expert", model, inner_edges, settings, in_dim=in_dim, n_bins=n_bins, cancer=cancer, fold=fold)


def expert_key(path: str | Path) -> tuple[str, int]:
    """The (cancer, outer fold) an expert checkpoint was trained for, as recorded in it."""
    meta = read_checkpoint(path, "cpu", kind="expert").meta
    if not meta.get("cancer") or meta.get("fold", -1) < 0:
        raise ValueError(f"{path}: the expert checkpoint names no cancer and fold; rerun its training job")
    return str(meta["cancer"]), int(meta["fold"])


def load_expert(path: str | Path, device: torch.device) -> Expert:
    """Rebuild an expert from its checkpoint, in eval mode."""
    ckpt = read_checkpoint(path, device, kind="expert")
    s = ckpt.train_settings
    model = build_model(s.model, ckpt.meta["in_dim"], ckpt.meta["n_bins"], s.dropout, s.loss, s.projection_dropout, **s.model_params)
    model.load_state_dict(ckpt.state_dict)
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
    grid: HyperGrid = HyperGrid(),
) -> dict:
    """Train on every fold but ``fold``, predict all patients, write weights, predictions and metrics.

    ``split`` rows (patient_id, cancer, time, event, fold) align with ``bags``. Time bins (and, for
    Cox, the Breslow baseline) are fit on the training patients only. With ``gate.inner_folds`` the
    expert becomes the null model unless inner CV on the training patients beats ``gate.min_c``.
    With ``grid`` enabled, the settings are first chosen by nested CV on the training patients.
    """
    grid_result = None
    if grid.enabled:
        settings, grid_result = select_hyperparameters(split, bags, fold, settings, grid, device)
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
        gate_result = null_gate(split, fold, gate, settings.seed, expert_fit_predict(split, bags, fold, settings, device),
                                key="experts.null_gate.inner_folds")
        inner_c, is_null = gate_result["inner_c"], gate_result["null"]
        if is_null:
            model.make_null(torch.zeros(1) if settings.loss == "cox" else life_table_logits(bins[train_idx], events[train_idx], n_bins))
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
    test = ~train
    ev = evaluate_fold(times[train], events[train], times[test], events[test], risk[test], surv[test], edges)
    extra = {
        "model": settings.model, "loss": settings.loss,
        "uno_c_test": ev["uno_c"], "td_auc_test": ev["td_auc"], "ibs_test": ev["ibs"], "ibs_km_test": ev["ibs_km"],
        "eval_times": ev["eval_times"], "td_auc_per_time": ev["td_auc_per_time"], "metrics_reason": ev["reason"],
        "loss_per_epoch": history, "train_settings": asdict(settings), "inner_edges": np.asarray(edges, float).tolist(),
        "null": bool(gate_result and gate_result["null"]), "null_gate": gate_result, "grid": grid_result,
    }
    save_expert(out_model, model, primary_features(bags[0]).shape[1], n_bins, edges, settings,
                cancer=str(split["cancer"].iloc[0]), fold=fold)
    metrics = write_fold_outputs(split, fold, surv, extra, out_predictions, out_metrics, risk=risk)
    log.info("%s fold %d: C test %.3f, train %.3f", metrics["cancer"], fold, metrics["c_index_test"], metrics["c_index_train"])
    return metrics
