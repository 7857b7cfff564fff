"""The one checkpoint format (``model.pt``) of every trained model: experts, ROUPKT and the baselines.

A dict saved with ``torch.save``: ``kind`` (expert, roupkt, baseline), ``state_dict``,
``inner_edges`` (the time bins, or [] for a training-free model), ``settings`` (the model's own),
``train_settings`` (TrainSettings) and ``meta`` (what rebuilding needs: in_dim, n_bins, experts…).
Loaded with ``weights_only=True``: plain tensors, lists, numbers and strings only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsikt.core.io import atomic_path
from wsikt.training.settings import TrainSettings

KINDS = ("expert", "roupkt", "baseline")


@dataclass
class Checkpoint:
    """A trained model's weights and what is needed to rebuild and reuse it."""

    kind: str
    state_dict: dict[str, torch.Tensor]
    inner_edges: np.ndarray
    train_settings: TrainSettings
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, kind: str, model: nn.Module, inner_edges: np.ndarray | None, train: TrainSettings,
                    settings: dict[str, Any] | None = None, **meta: Any) -> None:
    """Write a model's checkpoint atomically."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind '{kind}' must be one of {', '.join(KINDS)}")
    edges = [] if inner_edges is None else np.asarray(inner_edges, float).tolist()
    with atomic_path(path) as tmp:
        torch.save({"kind": kind, "state_dict": model.state_dict(), "inner_edges": edges, "train_settings": asdict(train),
                    "settings": dict(settings or {}), "meta": meta}, tmp)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu", kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; ``kind`` checks it is the model the caller expects."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"{path}: not a wsikt checkpoint (no 'kind'); delete it and rerun the training job")
    if kind is not None and ckpt["kind"] != kind:
        raise ValueError(f"{path}: a {ckpt['kind']} checkpoint where a {kind} was expected; check the path")
    return Checkpoint(ckpt["kind"], ckpt["state_dict"], np.asarray(ckpt["inner_edges"], float),
                      TrainSettings(**ckpt["train_settings"]), ckpt["settings"], ckpt["meta"])
