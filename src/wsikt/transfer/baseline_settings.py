"""The transfer baselines' settings and method registry (config key baselines.*), light enough for parse time.

No torch: common.smk builds :class:`BaselineSettings` while parsing the workflow. The methods
themselves are in :mod:`wsikt.transfer.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from wsikt.training.settings import NullGate, TrainSettings

# HistoKT's learning-rate grid for fine- and deep-tuning (slurm_scripts/create_scripts*.py, AdamP)
HISTOKT_LR_GRID = (1e-3, 5e-4, 2e-4, 1e-4, 5e-5)


@dataclass(frozen=True)
class Method:
    """What a baseline method reads and trains (config names in :data:`METHODS`)."""

    reads: str  # 'embeddings' (the frozen experts' cached 512-d embeddings) or 'bags' (the target's patch features)
    head: str | None  # the new head: 'linear', 'mlp', or None for a training-free method
    tunes_trunk: bool  # the source expert's aggregator is trained too (deep tuning)
    can_start_from_source_head: bool  # with head_init 'source', the head starts from the source's classifier when bins match
    merges: bool = False  # the trunk is the parameter average of the source pool


METHODS: dict[str, Method] = {
    "head": Method("embeddings", "linear", tunes_trunk=False, can_start_from_source_head=True),  # HistoKT fine tuning
    "mlp": Method("embeddings", "mlp", tunes_trunk=False, can_start_from_source_head=False),
    "all": Method("bags", "linear", tunes_trunk=True, can_start_from_source_head=True),  # HistoKT deep tuning
    "merge": Method("bags", None, tunes_trunk=False, can_start_from_source_head=False, merges=True),  # parameter averaging
    "merge_tune": Method("bags", "linear", tunes_trunk=True, can_start_from_source_head=False, merges=True),  # HistoKT distillation
}
POOLS = ("all", "positive", "signal")


@dataclass(frozen=True)
class BaselineSettings:
    """One baseline (config key baselines.*); optimiser, epochs and bins come from TrainSettings (experts.*)."""

    method: str = "head"
    inner_folds: int = 3  # inner CV on the outer training fold that picks the source and the lr
    candidates: str = "all"  # sources tried: 'all' others, or 'positive' (training-only C > threshold)
    merge_set: str = "all"  # experts averaged by merge/merge_tune: 'all' others, 'positive', or 'signal' (C > 0.5)
    threshold: float = 0.6
    mlp_hidden: int = 256
    lr_grid: tuple[float, ...] = HISTOKT_LR_GRID  # () = experts.lr only
    head_init: str = "new"  # 'new' random head (HistoKT) or 'source' (the source's classifier when bins match)
    null_gate: NullGate = field(default_factory=NullGate)  # inner_folds 0 = off (HistoKT)

    @classmethod
    def from_config(cls, baselines: Mapping[str, Any], method: str) -> "BaselineSettings":
        """From config section ``baselines`` for one of its ``methods``."""
        values = {k: v for k, v in baselines.items() if k != "methods"}
        if "lr_grid" in values:
            values["lr_grid"] = tuple(float(v) for v in values["lr_grid"])
        if "null_gate" in values:
            try:
                values["null_gate"] = NullGate(**values["null_gate"])
            except ValueError as exc:
                raise ValueError(str(exc).replace("experts.null_gate", "baselines.null_gate")) from None
        return cls(method=method, **values)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"baselines method '{self.method}' must be one of {', '.join(METHODS)}")
        for key, value, allowed in (("candidates", self.candidates, POOLS[:2]), ("merge_set", self.merge_set, POOLS)):
            if value not in allowed:
                raise ValueError(f"baselines.{key} '{value}' must be one of {', '.join(allowed)}")
        if self.inner_folds < 2:
            raise ValueError(f"baselines.inner_folds must be ≥ 2, got {self.inner_folds}")
        if self.head_init not in ("new", "source"):
            raise ValueError(f"baselines.head_init '{self.head_init}' must be 'new' (HistoKT) or 'source'")
        if any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"baselines.lr_grid {list(self.lr_grid)}: every learning rate must be > 0 ([] = experts.lr)")

    def grid(self, train: TrainSettings) -> tuple[float, ...]:
        """The learning rates tried: ``lr_grid``, or experts.lr alone when it is empty."""
        return self.lr_grid or (train.lr,)


def needs_bags(method: str) -> bool:
    """Whether a method reads the target's patch features; head/mlp train on cached embeddings."""
    return METHODS[method].reads == "bags"
