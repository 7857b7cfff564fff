"""ROUPKT: route a target patient to the top-k frozen experts' cached embeddings, adapt, mix, predict.

Router = ABMIL over the target patient's patch features → Linear(512→E, no bias) → softmax →
top-k (weights NOT renormalised). Each expert's cached 512-d embedding passes its own adapter
Linear(512→512)+ReLU; the top-k adapted embeddings are summed with their router probabilities
and a new head Linear(512→T) gives hazards. Loss = NLL(α) + w_b·balance + w_z·z-loss. Trained:
router, adapters, head; the experts are frozen (only their cached embeddings are used).

Experts (E): the target's own fold-matched expert ("self", trained on this outer fold's training
patients only) plus the other sources' experts. Other cancers' experts never saw a target patient,
so any of their folds is leak-free; ``source_folds=0`` (default, CROPKT) takes fold 0 of each source
for every outer fold (any fold number f: fold f), ``'matched'`` takes fold k of each source for
outer fold k (both: one network per source, E = sources + 1), ``'all'`` takes every fold of every
source as its own expert. ``expert_set='positive'`` keeps only sources whose zero-shot C on
this fold's TRAINING patients is above ``threshold`` (never the test fold).

Caveat (as in CROPKT): the self expert was trained on this fold's training patients, so its cached
embeddings of those patients are in-sample and look more informative in training than on the
test fold; the router may over-weight it. Its test-fold embeddings are out-of-sample.

Balance loss: ``'top1'`` (default, what CROPKT's code computes: one patient per forward, averaged
over the step) is the mean top-1 probability (discourages confident routing, not imbalance).
``'switch'`` is the Switch-Transformer load balance E·Σ_e f_e·P_e that CROPKT's comment names, with
f_e the share of patients whose top-1 expert is e (not differentiable) and P_e the mean router
probability (differentiable); it is 1 when routing is uniform. z-loss = mean logsumexp(logits)².
The router's feature projection is Linear+ReLU with ``experts.projection_dropout`` after it (CROPKT: 0).

Null gate (``null_gate``, as the experts'): ROUPKT models trained exactly like the outer one on
inner folds of the outer training patients rank the held-out inner patients; unless their pooled
C exceeds ``min_c`` the fold's model becomes the null model (head weights zeroed, bias = the
training patients' life-table hazards), so every patient gets one curve and the test C is 0.5.
The expert set is the outer fold's (chosen on its training patients); the test fold is never read.
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

from wsikt.core.io import write_tsv
from wsikt.mil import ABMIL, pad_bags
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival, survival_curve
from wsikt.training.checkpoint import read_checkpoint, save_checkpoint
from wsikt.training.fit import Targets, fit
from wsikt.training.folds import FitPredict, inner_bins, write_fold_outputs
from wsikt.training.gate import life_table_logits, make_null_linear, null_gate
from wsikt.training.settings import NullGate, TrainSettings
from wsikt.transfer.embedding_cache import ExpertKey, cache_keys, key_name, stack_embeddings
from wsikt.transfer.matrix import positive_sources, selection_matrix

log = logging.getLogger("wsikt.transfer.roupkt")


@dataclass(frozen=True)
class RoupktSettings:
    """ROUPKT settings (config key roupkt.*); optimiser, epochs and bins come from TrainSettings (experts.*)."""

    topk: int = 5
    expert_set: str = "all"  # 'all' or 'positive' (training-only zero-shot C > threshold)
    threshold: float = 0.6
    source_folds: str | int = 0  # a fold number f (fold f of each source; CROPKT: 0), 'matched' (fold k) or 'all'
    balance: str = "top1"  # 'top1': mean top-1 probability (CROPKT's code); 'switch': E·Σ f_e·P_e (f_e = top-1 share)
    balance_weight: float = 0.01
    z_weight: float = 0.01
    null_gate: NullGate = NullGate()  # inner_folds 0 = off (CROPKT has no gate)

    @classmethod
    def from_config(cls, roupkt: Mapping[str, Any]) -> "RoupktSettings":
        """From config section ``roupkt`` (its ``targets`` list picks the jobs, not the model)."""
        values = {k: v for k, v in roupkt.items() if k not in ("targets", "null_gate")}
        return cls(**values, null_gate=NullGate.from_config(roupkt, key="roupkt"))

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"roupkt.topk must be ≥ 1, got {self.topk}")
        for key, value, allowed in (("expert_set", self.expert_set, ("all", "positive")),
                                    ("balance", self.balance, ("top1", "switch"))):
            if value not in allowed:
                raise ValueError(f"roupkt.{key} '{value}' must be one of {', '.join(allowed)}")
        fixed = isinstance(self.source_folds, int) and not isinstance(self.source_folds, bool)
        if not (self.source_folds in ("matched", "all") or (fixed and self.source_folds >= 0)):
            raise ValueError(f"roupkt.source_folds {self.source_folds!r} must be a fold number (e.g. 0, CROPKT), matched or all")


def primary(bag) -> np.ndarray:
    """The (N, D) float32 primary-magnification features of a bag (array or multi-scale PatientBag)."""
    return np.asarray(bag, dtype=np.float32)


def route(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Softmax over experts, keep the top-k probabilities as weights (not renormalised), zero the rest."""
    probs = torch.softmax(logits, dim=-1)
    weights, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return {"probs": probs, "topk_idx": idx, "topk_weight": weights, "dense": torch.zeros_like(probs).scatter(-1, idx, weights)}


def balance_loss(probs: torch.Tensor, kind: str = "top1") -> torch.Tensor:
    """Load balance: mean top-1 probability (CROPKT's code), or Switch-style E·Σ_e f_e·P_e (f_e share of top-1 picks, P_e mean probability)."""
    if kind == "top1":
        return probs.max(dim=-1).values.mean()
    n_experts = probs.shape[-1]
    share = torch.nn.functional.one_hot(probs.argmax(-1), n_experts).float().mean(0)
    return n_experts * (share * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss: mean squared logsumexp of the router logits (keeps logits small)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


class Router(nn.Module):
    """ABMIL over the patient's (normalised) patch features → Linear(hidden (512)→E, no bias) logits."""

    def __init__(self, in_dim: int, n_experts: int, dropout: float = 0.25, projection_dropout: float = 0.0,
                 hidden: int = 512, attn_hidden: int = 384) -> None:
        super().__init__()
        self.abmil = ABMIL(in_dim, 1, hidden, attn_hidden, dropout, projection_dropout)  # its 1-bin classifier is unused
        self.gate = nn.Linear(hidden, n_experts, bias=False)
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(x, mask)[0]

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits (B, E) and the ABMIL attention (B, N) over the patches they were routed by."""
        x = ((x - self.feature_mean) / self.feature_std).masked_fill(~mask.unsqueeze(-1), 0.0)
        h, a = self.abmil.embed(x, mask)
        return self.gate(h), a


class ROUPKT(nn.Module):
    """Router + per-expert adapters + new survival head over cached expert embeddings (B, E, 512).

    The router's width is the embeddings' (512), as in CROPKT; ``attn_hidden`` is its attention's (384).
    """

    def __init__(self, in_dim: int, n_experts: int, n_bins: int, topk: int = 5, emb_dim: int = 512, dropout: float = 0.25,
                 projection_dropout: float = 0.0, attn_hidden: int = 384) -> None:
        super().__init__()
        self.topk = topk
        self.router = Router(in_dim, n_experts, dropout, projection_dropout, emb_dim, attn_hidden)
        self.adapters = nn.ModuleList(nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.ReLU()) for _ in range(n_experts))
        self.head = nn.Linear(emb_dim, n_bins)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.router(x, mask)
        r = route(logits, self.topk)
        adapted = torch.stack([a(emb[:, e]) for e, a in enumerate(self.adapters)], dim=1)  # (B, E, 512)
        mixed = (r["dense"].unsqueeze(-1) * adapted).sum(1)
        return {"logits": self.head(mixed), "embedding": mixed, "router_logits": logits, **r}


def roupkt_experts(cache_h5: str | Path, split: pd.DataFrame, target: str, fold: int, settings: RoupktSettings) -> list[ExpertKey]:
    """The E experts of outer fold ``fold``: self (target, fold) first, then the chosen other sources' experts."""
    keys = cache_keys(cache_h5)
    if (target, fold) not in keys:
        raise KeyError(f"the embedding cache {cache_h5} lacks the self expert {target}/fold{fold}; rerun the transfer embedding job")
    sources = sorted({s for s, _ in keys if s != target})
    if settings.expert_set == "positive":
        sources = sorted(positive_sources(selection_matrix(cache_h5, split, target, fold), target, settings.threshold))
    if settings.source_folds == "all":
        others = [k for k in keys if k[0] in sources]
    else:
        source_fold = fold if settings.source_folds == "matched" else int(settings.source_folds)
        missing = [s for s in sources if (s, source_fold) not in keys]
        if missing:
            raise KeyError(f"sources {missing} have no fold-{source_fold} expert in {cache_h5}; "
                           "set roupkt.source_folds to a fold every source has, or to all")
        others = [(s, source_fold) for s in sources]
    return [(target, fold), *others]


def _nll(train: TrainSettings) -> TrainSettings:
    """ROUPKT is always fit with the discrete-time NLL (experts.alpha), whatever loss the experts used."""
    return replace(train, loss="nll") if train.loss != "nll" else train


def train_roupkt(
    bags: list[np.ndarray], emb: np.ndarray, bins: np.ndarray, events: np.ndarray, n_bins: int,
    train: TrainSettings, settings: RoupktSettings, device: torch.device,
) -> tuple[ROUPKT, list[float]]:
    """Fit router, adapters and head on the training patients (bags aligned with ``emb`` (N, E, 512)).

    The router reads each bag's primary-magnification features; the loss is always the
    discrete-time NLL (experts.alpha), whatever loss the experts were trained with.
    """
    bags = [primary(b) for b in bags]
    torch.manual_seed(train.seed)
    model = ROUPKT(bags[0].shape[1], emb.shape[1], n_bins, settings.topk, emb.shape[2], train.dropout,
                   train.projection_dropout).to(device)
    if train.feature_norm == "standardize":
        patches = torch.from_numpy(np.concatenate(bags)).double()
        model.router.feature_mean.copy_(patches.mean(0).float())
        model.router.feature_std.copy_(patches.std(0).float().clamp(min=1e-6))
    tensors = [torch.from_numpy(b) for b in bags]  # bags stay on the host; each step's batch moves once
    emb_t = torch.from_numpy(emb)

    def forward(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = pad_bags([tensors[i] for i in idx])
        out = model(x.to(device), mask.to(device), emb_t[idx].to(device))
        aux = settings.balance_weight * balance_loss(out["probs"], settings.balance) + settings.z_weight * z_loss(out["router_logits"])
        return out["logits"], aux

    return model, fit(model, forward, Targets(bins, events), _nll(train), device)


@torch.inference_mode()
def predict_roupkt(model: ROUPKT, bags: list[np.ndarray], emb: np.ndarray, device: torch.device, batch: int = 16) -> dict[str, np.ndarray]:
    """Survival curves (N, T), router probabilities (N, E), top-k expert indices and weights (N, k), eval mode."""
    model.eval()
    bags = [primary(b) for b in bags]
    parts: dict[str, list] = {"surv": [], "probs": [], "topk_idx": [], "topk_weight": []}
    for start in range(0, len(bags), batch):
        x, mask = pad_bags([torch.from_numpy(b) for b in bags[start:start + batch]])
        out = model(x.to(device), mask.to(device), torch.from_numpy(emb[start:start + batch]).to(device))
        parts["surv"].append(survival_curve(torch.sigmoid(out["logits"])).cpu().numpy())
        for k in ("probs", "topk_idx", "topk_weight"):
            parts[k].append(out[k].cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def router_table(split: pd.DataFrame, fold: int, names: list[str], pred: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per patient: the top-k experts and their weights by rank, then every expert's router probability."""
    train = (split["fold"] != fold).to_numpy()
    df = pd.DataFrame({"patient_id": split["patient_id"].to_numpy(), "fold": fold, "split": np.where(train, "train", "test")})
    for r in range(pred["topk_idx"].shape[1]):
        df[f"expert_{r + 1}"] = [names[i] for i in pred["topk_idx"][:, r]]
        df[f"weight_{r + 1}"] = pred["topk_weight"][:, r]
    for e, name in enumerate(names):
        df[f"p_{name}"] = pred["probs"][:, e]
    return df


def roupkt_fit_predict(
    split: pd.DataFrame, bags: list[np.ndarray], emb: np.ndarray, fold: int, train: TrainSettings,
    settings: RoupktSettings, device: torch.device,
) -> FitPredict:
    """The null gate's model: ROUPKT trained like the outer one (own bins) on inner-training rows of outer fold
    ``fold``; risks of the validation rows. ``emb`` (N, E, 512) rows align with ``split``."""
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)

    def fit_predict(tr: np.ndarray, va: np.ndarray) -> np.ndarray:
        edges = inner_bins(times, events, tr, train, fold, "roupkt.null_gate.inner_folds")
        model, _ = train_roupkt([bags[i] for i in tr], emb[tr], assign_bins(times, edges)[tr], events[tr], len(edges) + 1,
                                train, settings, device)
        return risk_from_survival(predict_roupkt(model, [bags[i] for i in va], emb[va], device)["surv"])

    return fit_predict


def run_roupkt_fold(
    split: pd.DataFrame, bags: list[np.ndarray], cache_h5: str | Path, target: str, fold: int,
    train: TrainSettings, settings: RoupktSettings, out_model: str | Path, out_predictions: str | Path,
    out_router: str | Path, out_metrics: str | Path, device: torch.device,
) -> dict:
    """Train ROUPKT on one outer fold's training patients of ``target``; predict all; write the four outputs.

    ``split`` rows align with ``bags``; time bins are fit on the training patients only, exactly as
    for the experts. With ``settings.null_gate.inner_folds`` the model becomes the null model unless
    inner CV on the training patients beats ``settings.null_gate.min_c`` (recorded in the metrics).
    """
    keys = roupkt_experts(cache_h5, split, target, fold, settings)
    names = [key_name(k) for k in keys]
    emb = stack_embeddings(cache_h5, keys, list(split["patient_id"].astype(str)))
    is_train = (split["fold"] != fold).to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    edges = fit_time_bins(times[is_train], events[is_train], train.bins_kind, train.n_bins, train.bin_width_days)
    bins = assign_bins(times, edges)
    idx = np.flatnonzero(is_train)
    model, history = train_roupkt([bags[i] for i in idx], emb[idx], bins[idx], events[idx], len(edges) + 1, train, settings, device)
    gate, gate_result = settings.null_gate, None
    if gate.inner_folds:  # the router is kept; the head gives every patient the training life table
        gate_result = null_gate(split, fold, gate, train.seed, roupkt_fit_predict(split, bags, emb, fold, train, settings, device),
                                key="roupkt.null_gate.inner_folds")
        if gate_result["null"]:
            make_null_linear(model.head, life_table_logits(bins[idx], events[idx], len(edges) + 1))
        log.info("ROUPKT %s fold %d: inner-CV C %.3f %s %.2f: %s", target, fold, gate_result["inner_c"],
                 "≤" if gate_result["null"] else ">", gate.min_c,
                 "null model (one risk for all)" if gate_result["null"] else "trained model kept")
    pred = predict_roupkt(model, bags, emb, device)
    routes = router_table(split, fold, names, pred)
    test = routes["split"] == "test"
    usage = {n: {"mean_weight_test": float(np.where(pred["topk_idx"][test.to_numpy()] == e, pred["topk_weight"][test.to_numpy()], 0).sum(1).mean()),
                 "top1_share_test": float((routes.loc[test, "expert_1"] == n).mean())} for e, n in enumerate(names)}
    save_checkpoint(out_model, "roupkt", model, edges, train, asdict(settings), experts=names,
                    in_dim=primary(bags[0]).shape[1], n_bins=len(edges) + 1)
    write_tsv(routes, out_router)
    metrics = write_fold_outputs(
        split, fold, pred["surv"], {"model": "roupkt", "target": target, "experts": names, "self_expert": names[0],
                                    "topk_effective": int(pred["topk_idx"].shape[1]), "router_usage": usage,
                                    "loss_per_epoch": history, "settings": asdict(settings), "train_settings": asdict(train),
                                    "inner_edges": edges.tolist(),
                                    "null": bool(gate_result and gate_result["null"]), "null_gate": gate_result},
        out_predictions, out_metrics,
    )
    log.info("ROUPKT %s fold %d (%d experts): C test %.3f", target, fold, len(names), metrics["c_index_test"])
    return metrics


def load_roupkt(path: str | Path, device: torch.device) -> tuple[ROUPKT, list[str]]:
    """Rebuild a saved ROUPKT model (eval mode) and the names of its E experts, in router order."""
    ckpt = read_checkpoint(path, device, kind="roupkt")
    meta = ckpt.meta
    model = ROUPKT(meta["in_dim"], len(meta["experts"]), meta["n_bins"], ckpt.settings["topk"],
                   int(ckpt.state_dict["head.weight"].shape[1]), ckpt.train_settings.dropout, ckpt.train_settings.projection_dropout)
    model.load_state_dict(ckpt.state_dict)
    return model.to(device).eval(), list(meta["experts"])
