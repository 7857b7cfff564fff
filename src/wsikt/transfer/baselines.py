"""HistoKT-style transfer baselines: fine-tune from one source expert, or merge experts by parameter averaging.

Methods (config key baselines.methods):
  head   new Linear(512→T) on the frozen source expert's cached embedding
  mlp    new MLP (512→hidden→T) on the frozen source expert's cached embedding
  all    every layer of the source expert trained, with a new Linear(512→T) head on its embedding
  merge  training-free: the other sources' experts' state dicts averaged, evaluated as is

head and all start their Linear head from the source expert's classifier when the target's time
bins (fit on its own training fold) equal the source's, else from a fresh one; mlp's head is
always new. The source expert of outer fold k is each source's fold-k expert (it never saw a target
patient). Which source to fine-tune from is chosen by inner K-fold CV on the target's TRAINING
patients of the outer fold (stratified like the outer splits); the test fold is never read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

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
from wsikt.training.settings import TrainSettings
from wsikt.transfer.embedding_cache import ExpertKey, cache_keys, read_embeddings
from wsikt.transfer.matrix import positive_sources, selection_matrix

log = logging.getLogger("wsikt.transfer.baselines")



@dataclass(frozen=True)
class Method:
    """What a baseline method reads and trains (config names in :data:`METHODS`)."""

    reads: str  # 'embeddings' (the frozen experts' cached 512-d embeddings) or 'bags' (the target's patch features)
    head: str | None  # the new head: 'linear', 'mlp', or None for a training-free method
    tunes_trunk: bool  # the source expert's aggregator is trained too (deep tuning)
    starts_from_source_head: bool  # the head starts from the source's classifier when the time bins match


METHODS: dict[str, Method] = {
    "head": Method("embeddings", "linear", tunes_trunk=False, starts_from_source_head=True),  # HistoKT frozen encoder
    "mlp": Method("embeddings", "mlp", tunes_trunk=False, starts_from_source_head=False),
    "all": Method("bags", "linear", tunes_trunk=True, starts_from_source_head=True),  # HistoKT deep tuning
    "merge": Method("bags", None, tunes_trunk=False, starts_from_source_head=False),  # parameter averaging
}


@dataclass(frozen=True)
class BaselineSettings:
    """One baseline (config key baselines.*); optimiser, epochs and bins come from TrainSettings (experts.*)."""

    method: str = "head"
    inner_folds: int = 3  # inner CV on the outer training fold that picks the source
    candidates: str = "all"  # sources tried: 'all' others, or 'positive' (training-only C > threshold)
    merge_set: str = "all"  # experts averaged by 'merge': 'all' others or 'positive'
    threshold: float = 0.6
    mlp_hidden: int = 256

    @classmethod
    def from_config(cls, baselines: Mapping[str, Any], method: str) -> "BaselineSettings":
        """From config section ``baselines`` for one of its ``methods``."""
        return cls(method=method, **{k: v for k, v in baselines.items() if k != "methods"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"baselines method '{self.method}' must be one of {', '.join(METHODS)}")
        for key, value in (("candidates", self.candidates), ("merge_set", self.merge_set)):
            if value not in ("all", "positive"):
                raise ValueError(f"baselines.{key} '{value}' must be 'all' or 'positive'")
        if self.inner_folds < 2:
            raise ValueError(f"baselines.inner_folds must be ≥ 2, got {self.inner_folds}")


def needs_bags(method: str) -> bool:
    """Whether a method reads the target's patch features; head/mlp train on cached embeddings."""
    return METHODS[method].reads == "bags"


def source_pool(cache_h5: str | Path, split: pd.DataFrame, target: str, fold: int, which: str, threshold: float) -> list[str]:
    """Other sources with a fold-``fold`` expert: all of them, or those positive on this fold's training patients."""
    keys = cache_keys(cache_h5)
    sources = sorted({s for s, k in keys if s != target and k == fold})
    if which == "positive":
        sel = selection_matrix(cache_h5, split, target, fold)
        sources = sorted(set(positive_sources(sel, target, threshold)) & set(sources)) or [_best(sel, target, sources)]
    if not sources:
        raise ValueError(f"target {target}: no other source has a fold-{fold} expert; transfer needs ≥2 cancers")
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


def fine_tune(
    method: str, source: ExpertKey, train_idx: np.ndarray, times: np.ndarray, events: np.ndarray,
    train: TrainSettings, settings: BaselineSettings, device: torch.device,
    emb: dict[ExpertKey, np.ndarray] | None = None, bags: list | None = None, checkpoints: dict[ExpertKey, str | Path] | None = None,
) -> tuple[nn.Module, np.ndarray, list[float]]:
    """Fit one fine-tuning baseline on ``train_idx``; returns the module, the bin edges and the loss history.

    head/mlp train on ``emb[source]`` (the frozen expert's cached eval-mode embedding, identical to
    its forward pass); 'all' rebuilds the expert from ``checkpoints[source]`` and trains it on ``bags``.
    ``checkpoints`` also supply the source classifier that head/all start from (when bins match).
    """
    edges = fit_time_bins(times[train_idx], events[train_idx], train.bins_kind, train.n_bins, train.bin_width_days)
    bins = assign_bins(times, edges)[train_idx]
    nll = replace(train, loss="nll")  # the new head has T outputs: always the discrete-time NLL
    torch.manual_seed(train.seed)
    spec = METHODS[method]
    if spec.head is None:
        raise ValueError(f"fine_tune has no method '{method}'; it is training-free (use merge_experts)")
    init = source_head(checkpoints[source], edges) if checkpoints and spec.starts_from_source_head else None
    if not spec.tunes_trunk:
        x = torch.from_numpy(emb[source][train_idx]).to(device)
        module: nn.Module = new_head(method, x.shape[1], len(edges) + 1, settings.mlp_hidden, train.dropout).to(device)
        if init is not None:
            module.load_state_dict(init)
        history = fit(module, lambda i: (module(x[i]), None), Targets(bins, events[train_idx]), nll, device)
    else:
        trunk = load_expert(checkpoints[source], device)
        dim = int(predict(trunk, [bags[int(train_idx[0])]], device)[1].shape[1])
        module = FineTuned(trunk, new_head(method, dim, len(edges) + 1, settings.mlp_hidden, train.dropout)).to(device)
        if init is not None:
            module.head.load_state_dict(init)
        chosen = [bags[int(i)] for i in train_idx]
        history = fit(module, lambda i: (module(*module.collate([chosen[j] for j in i], device))["logits"], None),
                      Targets(bins, events[train_idx]), nll, device)
    return module.eval(), edges, history


@torch.inference_mode()
def predict_baseline(method: str, module: nn.Module, source: ExpertKey, idx: np.ndarray, device: torch.device,
                     emb: dict[ExpertKey, np.ndarray] | None = None, bags: list | None = None) -> np.ndarray:
    """Survival curves (len(idx), T) of a fitted baseline, eval mode."""
    module.eval()
    if METHODS[method].reads == "embeddings":
        return survival_curve(torch.sigmoid(module(torch.from_numpy(emb[source][idx]).to(device)))).cpu().numpy()
    return _predict_finetuned(module, [bags[int(i)] for i in idx], device)


def choose_source(
    method: str, sources: list[str], split: pd.DataFrame, fold: int, train: TrainSettings, settings: BaselineSettings,
    device: torch.device, **data,
) -> tuple[str, dict[str, float]]:
    """The source whose fine-tuned model has the best pooled inner-CV C on the outer fold's training patients.

    Only training patients (and their labels) are read; ties and all-NaN scores go to the first
    source by name.
    """
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    scores = {}
    for s in sources:
        def fit_predict(tr: np.ndarray, va: np.ndarray, s: str = s) -> np.ndarray:
            module, _, _ = fine_tune(method, (s, fold), tr, times, events, train, settings, device, **data)
            return risk_from_survival(predict_baseline(method, module, (s, fold), va, device, data.get("emb"), data.get("bags")))

        scores[s] = inner_cv_c(split, fold, settings.inner_folds, train.seed, fit_predict, key="baselines.inner_folds")
    ranked = sorted(sources, key=lambda s: (-(scores[s] if np.isfinite(scores[s]) else -np.inf), s))
    return ranked[0], scores


def merge_experts(checkpoints: list[str | Path], device: torch.device) -> nn.Module:
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
    avg = {k: (torch.stack([st[k].float() for st in states]).mean(0).to(ref[k].dtype) if ref[k].is_floating_point() else ref[k])
           for k in ref}
    models[0].load_state_dict(avg)
    models[0].make_null(None)  # the averaged head is used, even where the first expert was a null model
    return models[0].eval()


def run_baseline_fold(
    split: pd.DataFrame, cache_h5: str | Path, target: str, fold: int, train: TrainSettings, settings: BaselineSettings,
    out_model: str | Path, out_predictions: str | Path, out_metrics: str | Path, device: torch.device,
    bags: list | None = None, checkpoints: dict[ExpertKey, str | Path] | None = None,
) -> dict:
    """Run one baseline on one outer fold of ``target`` and write model, predictions and metrics.

    ``checkpoints`` ((source, fold) → model.pt) are always needed; ``bags`` (aligned with
    ``split``) by 'all' and 'merge' only.
    """
    if checkpoints is None or (needs_bags(settings.method) and bags is None):
        raise ValueError(f"baseline '{settings.method}' needs the source expert checkpoints"
                         + (" and the target's bags" if needs_bags(settings.method) else ""))
    ids = list(split["patient_id"].astype(str))
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    is_train = (split["fold"] != fold).to_numpy()
    every = np.arange(len(split))
    extra: dict = {"model": f"baseline_{settings.method}", "target": target, "settings": asdict(settings)}
    if METHODS[settings.method].head is None:
        merged = source_pool(cache_h5, split, target, fold, settings.merge_set, settings.threshold)
        module = merge_experts([checkpoints[(s, fold)] for s in merged], device)
        surv = predict(module, bags, device)[0]
        extra["merged_sources"] = merged
        edges, meta = None, {"merged": [f"{s}/fold{fold}" for s in merged]}
    else:
        sources = source_pool(cache_h5, split, target, fold, settings.candidates, settings.threshold)
        data = {"bags": bags, "checkpoints": checkpoints}
        if not needs_bags(settings.method):
            data = {"emb": read_embeddings(cache_h5, [(s, fold) for s in sources], ids), "checkpoints": checkpoints}
        chosen, scores = choose_source(settings.method, sources, split, fold, train, settings, device, **data)
        module, edges, history = fine_tune(settings.method, (chosen, fold), np.flatnonzero(is_train), times, events,
                                           train, settings, device, **data)
        surv = predict_baseline(settings.method, module, (chosen, fold), every, device, data.get("emb"), data.get("bags"))
        extra.update(source=chosen, source_expert=f"{chosen}/fold{fold}", inner_c_index=scores, loss_per_epoch=history)
        meta = {"source": f"{chosen}/fold{fold}"}
    save_checkpoint(out_model, "baseline", module, edges, train, asdict(settings), method=settings.method, **meta)
    extra["train_settings"] = asdict(train)
    metrics = write_fold_outputs(split, fold, surv, extra, out_predictions, out_metrics)
    log.info("baseline %s %s fold %d: C test %.3f", settings.method, target, fold, metrics["c_index_test"])
    return metrics
