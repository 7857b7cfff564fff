"""HistoKT-style transfer baselines: fine-tune from one source expert, or merge experts by parameter averaging.

Methods (config key baselines.methods):
  head        new Linear(512→T) on the frozen source expert's cached embedding (HistoKT 'fine tuning')
  mlp         new MLP (512→hidden→T) on the frozen source expert's cached embedding
  all         every layer of the source expert trained, with a Linear(512→T) head (HistoKT 'deep tuning')
  merge       training-free: the pooled sources' experts' state dicts averaged, evaluated as is
  merge_tune  HistoKT's weight distillation: the pooled experts averaged, then deep-tuned on the target

head and all start from a new random Linear head (HistoKT, ``head_init: new``) or, with
``head_init: source``, from the source expert's classifier when the target's time bins equal the
source's. The source expert of outer fold k is each source's fold-k expert (it never saw a target
patient). The source, and the learning rate from ``lr_grid`` (HistoKT's grid), are chosen by inner
K-fold CV on the target's TRAINING patients of the outer fold; the test fold is never read. With
``null_gate`` the chosen model must also beat ``min_c`` in that inner CV, or it becomes the null model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsikt.mil import pad_bags
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival, survival_curve
from wsikt.training.checkpoint import read_checkpoint, save_checkpoint
from wsikt.training.experts import load_expert, predict
from wsikt.training.fit import Targets, fit
from wsikt.training.folds import inner_cv_c, write_fold_outputs
from wsikt.training.gate import gate_decision, life_table_logits, make_null_linear, null_gate, null_survival
from wsikt.training.settings import NullGate, TrainSettings
from wsikt.transfer.baseline_settings import METHODS, BaselineSettings, needs_bags
from wsikt.transfer.embedding_cache import ExpertKey, cache_keys, read_embeddings
from wsikt.transfer.matrix import positive_sources, selection_matrix

log = logging.getLogger("wsikt.transfer.baselines")

# a fine-tuning source: one expert, or a tuple of experts whose parameters are averaged first (merge_tune)
Source = ExpertKey | tuple[ExpertKey, ...]


def source_pool(cache_h5: str | Path, split: pd.DataFrame, target: str, fold: int, which: str, threshold: float) -> list[str]:
    """Other sources with a fold-``fold`` expert, selected on this fold's training patients only.

    'all': every one; 'positive': training-only zero-shot C > ``threshold`` (the best one if none is);
    'signal': C > 0.5, which leaves out null experts (one risk for all: C = 0.5) and reversed ones,
    possibly every source (an empty pool).
    """
    keys = cache_keys(cache_h5)
    sources = sorted({s for s, k in keys if s != target and k == fold})
    if not sources:
        raise ValueError(f"target {target}: no other source has a fold-{fold} expert; transfer needs ≥2 cancers")
    if which == "positive":
        sel = selection_matrix(cache_h5, split, target, fold)
        sources = sorted(set(positive_sources(sel, target, threshold)) & set(sources)) or [_best(sel, target, sources)]
    elif which == "signal":
        sel = selection_matrix(cache_h5, split, target, fold)
        sources = sorted(set(positive_sources(sel, target, 0.5)) & set(sources))
    return sources


def _best(sel: pd.DataFrame, target: str, sources: list[str]) -> str:
    g = sel[(sel["target"] == target) & sel["source"].isin(sources)].sort_values(["c_index_mean", "source"], ascending=[False, True])
    return str(g["source"].iloc[0])


class FineTuned(nn.Module):
    """A source expert whose embedding feeds a new head (the 'all' method trains both)."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def collate(self, bags: list, device: torch.device):
        """The trunk's own batch layout (padded, masked; multi-scale experts add their links)."""
        if hasattr(self.trunk, "collate"):
            return (self.trunk.collate(bags, device),)
        return pad_bags([torch.from_numpy(np.asarray(b, np.float32)).to(device) for b in bags])

    def forward(self, *batch) -> dict[str, torch.Tensor]:
        emb = self.trunk(*batch)["embedding"]
        return {"logits": self.head(emb), "embedding": emb}


@torch.inference_mode()
def _predict_finetuned(model: FineTuned, bags: list, device: torch.device, batch: int = 16) -> np.ndarray:
    model.eval()
    out = [survival_curve(torch.sigmoid(model(*model.collate(bags[i:i + batch], device))["logits"])).cpu().numpy()
           for i in range(0, len(bags), batch)]
    return np.concatenate(out)


def new_head(method: str, dim: int, n_bins: int, hidden: int, dropout: float) -> nn.Module:
    """Linear(dim→T) for head/all; Linear→ReLU→Dropout→Linear for mlp."""
    if METHODS[method].head == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_bins))
    return nn.Linear(dim, n_bins)


def source_head(checkpoint: str | Path, edges: np.ndarray) -> dict[str, torch.Tensor] | None:
    """The source expert's classifier weights when its time bins equal ``edges`` (else None: a fresh head)."""
    ckpt = read_checkpoint(checkpoint, "cpu", kind="expert")
    state = ckpt.state_dict
    if "aggregator.classifier.weight" not in state or not np.array_equal(ckpt.inner_edges, edges):
        return None
    if state["aggregator.classifier.weight"].shape[0] != len(edges) + 1:
        return None  # e.g. a Cox expert's single log-risk output
    return {"weight": state["aggregator.classifier.weight"], "bias": state["aggregator.classifier.bias"]}


def is_merged(source: Source) -> bool:
    """Whether a fine-tuning source is a pool of experts to average (merge_tune) rather than one expert."""
    return isinstance(source[0], tuple)


def source_label(source: Source) -> str:
    """How a source is named in metrics: 'SHB/fold0', or 'merge(NOI,SHB)/fold0' for an averaged pool."""
    if is_merged(source):
        return f"merge({','.join(s for s, _ in source)})/fold{source[0][1]}"
    return f"{source[0]}/fold{source[1]}"


def fine_tune(
    method: str, source: Source, train_idx: np.ndarray, times: np.ndarray, events: np.ndarray,
    train: TrainSettings, settings: BaselineSettings, device: torch.device,
    emb: dict[ExpertKey, np.ndarray] | None = None, bags: list | None = None, checkpoints: dict[ExpertKey, str | Path] | None = None,
    lr: float | None = None,
) -> tuple[nn.Module, np.ndarray, list[float]]:
    """Fit one fine-tuning baseline on ``train_idx`` at learning rate ``lr`` (default experts.lr).

    Returns the module, the bin edges and the loss history. head/mlp train on ``emb[source]`` (the
    frozen expert's cached eval-mode embedding, identical to its forward pass); 'all' rebuilds the
    expert from ``checkpoints[source]`` and trains it on ``bags``; 'merge_tune' does the same from
    the parameter average of the experts ``source`` (a tuple of keys). Every layer is trainable in
    deep tuning; only the new head in head/mlp (HistoKT's ``freeze_encoder``).
    """
    edges = fit_time_bins(times[train_idx], events[train_idx], train.bins_kind, train.n_bins, train.bin_width_days)
    bins = assign_bins(times, edges)[train_idx]
    nll = replace(train, loss="nll", lr=train.lr if lr is None else float(lr))  # the new head has T outputs: the NLL
    torch.manual_seed(train.seed)
    spec = METHODS[method]
    if spec.head is None:
        raise ValueError(f"fine_tune has no method '{method}'; it is training-free (use merge_experts)")
    init = None
    if settings.head_init == "source" and spec.can_start_from_source_head and checkpoints and not is_merged(source):
        init = source_head(checkpoints[source], edges)
    if not spec.tunes_trunk:
        x = torch.from_numpy(emb[source][train_idx]).to(device)
        module: nn.Module = new_head(method, x.shape[1], len(edges) + 1, settings.mlp_hidden, train.dropout).to(device)
        if init is not None:
            module.load_state_dict(init)
        history = fit(module, lambda i: (module(x[i]), None), Targets(bins, events[train_idx]), nll, device)
    else:
        trunk = (merge_experts([checkpoints[k] for k in source], device) if is_merged(source)
                 else load_expert(checkpoints[source], device))
        torch.manual_seed(train.seed)  # the new head's init does not depend on how the trunk was built
        dim = int(predict(trunk, [bags[int(train_idx[0])]], device)[1].shape[1])
        module = FineTuned(trunk, new_head(method, dim, len(edges) + 1, settings.mlp_hidden, train.dropout)).to(device)
        if init is not None:
            module.head.load_state_dict(init)
        chosen = [bags[int(i)] for i in train_idx]
        history = fit(module, lambda i: (module(*module.collate([chosen[j] for j in i], device))["logits"], None),
                      Targets(bins, events[train_idx]), nll, device)
    return module.eval(), edges, history


@torch.inference_mode()
def predict_baseline(method: str, module: nn.Module, source: Source, idx: np.ndarray, device: torch.device,
                     emb: dict[ExpertKey, np.ndarray] | None = None, bags: list | None = None) -> np.ndarray:
    """Survival curves (len(idx), T) of a fitted baseline, eval mode."""
    module.eval()
    if METHODS[method].reads == "embeddings":
        return survival_curve(torch.sigmoid(module(torch.from_numpy(emb[source][idx]).to(device)))).cpu().numpy()
    return _predict_finetuned(module, [bags[int(i)] for i in idx], device)


def lr_key(lr: float) -> str:
    """A learning rate as a metrics-JSON key (``%g``)."""
    return f"{lr:g}"


def choose_source(
    method: str, sources: Sequence[str] | dict[str, Source], split: pd.DataFrame, fold: int, train: TrainSettings,
    settings: BaselineSettings, device: torch.device, **data,
) -> tuple[str, float, dict[str, dict[str, float]]]:
    """The (source, learning rate) whose fine-tuned model has the best pooled inner-CV C on the training patients.

    ``sources``: names (each one's fold-``fold`` expert) or name → :data:`Source`. Every rate of
    ``settings.grid(train)`` is tried. Only training patients (and their labels) are read; ties and
    all-NaN scores go to the first source by name, then the larger rate. Returns the name, the
    rate and the inner C per name and rate (:func:`lr_key`).
    """
    named = sources if isinstance(sources, dict) else {s: (s, fold) for s in sources}
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    grid = sorted(settings.grid(train), reverse=True)
    scores: dict[str, dict[str, float]] = {}
    for name, src in named.items():
        scores[name] = {}
        for lr in grid:
            def fit_predict(tr: np.ndarray, va: np.ndarray, src: Source = src, lr: float = lr) -> np.ndarray:
                module, _, _ = fine_tune(method, src, tr, times, events, train, settings, device, lr=lr, **data)
                return risk_from_survival(predict_baseline(method, module, src, va, device, data.get("emb"), data.get("bags")))

            scores[name][lr_key(lr)] = inner_cv_c(split, fold, settings.inner_folds, train.seed, fit_predict,
                                                  key="baselines.inner_folds")
    ranked = sorted(((name, lr) for name in sorted(named) for lr in grid),
                    key=lambda p: -(scores[p[0]][lr_key(p[1])] if np.isfinite(scores[p[0]][lr_key(p[1])]) else -np.inf))
    return ranked[0][0], ranked[0][1], scores


def merge_experts(checkpoints: Sequence[str | Path], device: torch.device) -> nn.Module:
    """Parameter averaging: the element-wise mean of experts' state dicts (one architecture), loaded into the first."""
    models = [load_expert(p, device) for p in checkpoints]
    states = [m.state_dict() for m in models]
    ref = states[0]
    for p, st in zip(checkpoints, states):
        if st.keys() != ref.keys() or any(st[k].shape != ref[k].shape for k in ref):
            raise ValueError(
                f"parameter averaging needs experts of one architecture and one bin count; {p} differs "
                f"from {checkpoints[0]} (check experts.model and experts.bins)"
            )
    models[0].load_state_dict(average_states(states))
    models[0].make_null(None)  # the averaged head is used, even where the first expert was a null model
    return models[0].eval()


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform weight combination: the element-wise mean of every floating tensor; others (counters, flags) from the first."""
    ref = states[0]
    return {k: (torch.stack([st[k].float() for st in states]).mean(0).to(ref[k].dtype) if ref[k].is_floating_point() else ref[k])
            for k in ref}


def _inner_split(split: pd.DataFrame, tr: np.ndarray, va: np.ndarray, fold: int) -> pd.DataFrame:
    """Rows ``tr`` ∪ ``va`` of ``split`` relabelled so that ``va`` is fold ``fold`` (the held-out part) for pool selection."""
    sub = split.iloc[np.r_[tr, va]].copy()
    sub["fold"] = np.r_[np.full(len(tr), -1), np.full(len(va), fold)]
    return sub


def _null_head(module: nn.Module, logits: torch.Tensor) -> None:
    """Make a fitted head/mlp/FineTuned baseline the null model (its output Linear gives ``logits`` for everyone)."""
    make_null_linear([m for m in module.modules() if isinstance(m, nn.Linear)][-1], logits)


@dataclass
class _Fitted:
    """One outer fold's fitted baseline: what run_baseline_fold saves and writes."""

    module: nn.Module
    edges: np.ndarray
    surv: np.ndarray
    meta: dict
    extra: dict
    gate: dict | None


def _gate_record(gate: NullGate, scored: float | None, split: pd.DataFrame, fold: int, seed: int, fit_predict) -> dict | None:
    """The null gate's record: from the selection's own inner C when it used the same folds, else its own inner CV."""
    if not gate.inner_folds:
        return None
    if scored is not None:
        return gate_decision(scored, gate)
    return null_gate(split, fold, gate, seed, fit_predict, key="baselines.null_gate.inner_folds")


def _run_merge(split: pd.DataFrame, cache_h5: str | Path, target: str, fold: int, train: TrainSettings,
               settings: BaselineSettings, device: torch.device, bags: list, checkpoints: dict[ExpertKey, str | Path]) -> _Fitted:
    """merge: the pool's averaged expert as is (the null model when the pool is empty or the gate fails)."""
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    train_idx = np.flatnonzero((split["fold"] != fold).to_numpy())
    pool = source_pool(cache_h5, split, target, fold, settings.merge_set, settings.threshold)
    first = checkpoints[(pool[0], fold)] if pool else next(v for (s, k), v in sorted(checkpoints.items()) if s != target and k == fold)
    edges = read_checkpoint(first, "cpu", kind="expert").inner_edges
    module = merge_experts([checkpoints[(s, fold)] for s in pool], device) if pool else load_expert(first, device)

    def fit_predict(tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        inner_pool = source_pool(cache_h5, _inner_split(split, tr, va, fold), target, fold, settings.merge_set, settings.threshold)
        if not inner_pool:
            return np.zeros(len(va))  # the null model: one risk for all
        merged = merge_experts([checkpoints[(s, fold)] for s in inner_pool], device)
        return risk_from_survival(predict(merged, [bags[int(i)] for i in va], device)[0])

    gate = _gate_record(settings.null_gate, None, split, fold, train.seed, fit_predict) if pool else None
    null = not pool or bool(gate and gate["null"])
    if null:
        module.make_null(life_table_logits(assign_bins(times, edges)[train_idx], events[train_idx], len(edges) + 1))
    return _Fitted(module, edges, predict(module, bags, device)[0], {"merged": [f"{s}/fold{fold}" for s in pool]},
                   {"merged_sources": pool, "null": null, **({} if pool else {"null_reason": "empty merge_set pool"})}, gate)


def _run_fine_tuned(split: pd.DataFrame, cache_h5: str | Path, target: str, fold: int, train: TrainSettings,
                    settings: BaselineSettings, device: torch.device, bags: list | None,
                    checkpoints: dict[ExpertKey, str | Path]) -> _Fitted:
    """head, mlp, all, merge_tune: (source, lr) chosen by inner CV, fit on the training fold, gated."""
    method, spec = settings.method, METHODS[settings.method]
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    train_idx = np.flatnonzero((split["fold"] != fold).to_numpy())
    extra: dict = {}
    if spec.merges:
        pool = source_pool(cache_h5, split, target, fold, settings.merge_set, settings.threshold)
        named: dict[str, Source] = {"merge": tuple((s, fold) for s in pool)} if pool else {}
        extra["merged_sources"] = pool
    else:
        named = {s: (s, fold) for s in source_pool(cache_h5, split, target, fold, settings.candidates, settings.threshold)}
    data: dict = {"bags": bags, "checkpoints": checkpoints}
    if not needs_bags(method):
        data = {"emb": read_embeddings(cache_h5, list(named.values()), list(split["patient_id"].astype(str))),
                "checkpoints": checkpoints}
    edges = fit_time_bins(times[train_idx], events[train_idx], train.bins_kind, train.n_bins, train.bin_width_days)
    null_logits = life_table_logits(assign_bins(times, edges)[train_idx], events[train_idx], len(edges) + 1)
    if not named:  # merge_tune with an empty pool: nothing to distil, the null model
        module = nn.Linear(1, len(edges) + 1)
        _null_head(module, null_logits)
        extra.update(source=None, source_expert=None, lr=None, inner_c_index={}, inner_c_index_per_lr={}, loss_per_epoch=[], null=True,
                     null_reason="empty merge_set pool")
        return _Fitted(module, edges, null_survival(null_logits, len(split)), {"source": "none"}, extra, None)
    chosen, lr, scores = choose_source(method, named, split, fold, train, settings, device, **data)
    source = named[chosen]
    module, edges, history = fine_tune(method, source, train_idx, times, events, train, settings, device, lr=lr, **data)

    def fit_predict(tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        m, _, _ = fine_tune(method, source, tr, times, events, train, settings, device, lr=lr, **data)
        return risk_from_survival(predict_baseline(method, m, source, va, device, data.get("emb"), data.get("bags")))

    same_folds = settings.null_gate.inner_folds == settings.inner_folds  # the same inner folds and seed: the selection's score
    gate = _gate_record(settings.null_gate, scores[chosen][lr_key(lr)] if same_folds else None, split, fold, train.seed, fit_predict)
    null = bool(gate and gate["null"])
    if null:
        _null_head(module, null_logits)
        surv = null_survival(null_logits, len(split))
    else:
        surv = predict_baseline(method, module, source, np.arange(len(split)), device, data.get("emb"), data.get("bags"))
    best = {name: max((c for c in per.values() if np.isfinite(c)), default=float("nan")) for name, per in scores.items()}
    extra.update(source=chosen, source_expert=source_label(source), lr=lr, inner_c_index=best, inner_c_index_per_lr=scores,
                 loss_per_epoch=history, null=null)
    return _Fitted(module, edges, surv, {"source": source_label(source), "lr": lr}, extra, gate)


def run_baseline_fold(
    split: pd.DataFrame, cache_h5: str | Path, target: str, fold: int, train: TrainSettings, settings: BaselineSettings,
    out_model: str | Path, out_predictions: str | Path, out_metrics: str | Path, device: torch.device,
    bags: list | None = None, checkpoints: dict[ExpertKey, str | Path] | None = None,
) -> dict:
    """Run one baseline on one outer fold of ``target`` and write model, predictions and metrics.

    ``checkpoints`` ((source, fold) → model.pt) are always needed; ``bags`` (aligned with
    ``split``) by 'all', 'merge' and 'merge_tune' only. The metrics JSON records the chosen source
    and learning rate, every inner C, and the null gate's decision (``null``, ``null_gate``).
    """
    if checkpoints is None or (needs_bags(settings.method) and bags is None):
        raise ValueError(f"baseline '{settings.method}' needs the source expert checkpoints"
                         + (" and the target's bags" if needs_bags(settings.method) else ""))
    run = _run_merge if METHODS[settings.method].head is None else _run_fine_tuned
    fitted = run(split, cache_h5, target, fold, train, settings, device, bags, checkpoints)
    if fitted.gate is not None:
        log.info("baseline %s %s fold %d: inner-CV C %.3f %s %.2f: %s", settings.method, target, fold, fitted.gate["inner_c"],
                 "≤" if fitted.gate["null"] else ">", fitted.gate["min_c"], "null model" if fitted.gate["null"] else "kept")
    save_checkpoint(out_model, "baseline", fitted.module, fitted.edges, train, asdict(settings), method=settings.method, **fitted.meta)
    extra = {"model": f"baseline_{settings.method}", "target": target, "settings": asdict(settings), **fitted.extra,
             "lr_grid": list(settings.grid(train)), "null_gate": fitted.gate, "train_settings": asdict(train)}
    metrics = write_fold_outputs(split, fold, fitted.surv, extra, out_predictions, out_metrics)
    log.info("baseline %s %s fold %d: C test %.3f", settings.method, target, fold, metrics["c_index_test"])
    return metrics
