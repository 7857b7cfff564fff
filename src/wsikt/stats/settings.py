"""Statistics settings (config keys stats.*), light enough to build while the workflow parses."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from wsikt.survival.metrics import BOOT_SEED


@dataclass(frozen=True)
class StatsSettings:
    """How chance references and intervals are computed; ``permutations`` > 0 also retrains on permuted labels."""

    chance_permutations: int = 1000  # test-fold shuffles of each result's risks (the cheap chance reference)
    n_boot: int = 1000  # paired bootstrap resamples (within fold) for differences and matrix cells
    level: float = 0.95  # CI level
    below_chance_p: float = 0.05  # a result is 'below chance' when its permutation p_below is under this
    seed: int = BOOT_SEED
    permutations: int = 0  # opt-in: retrain the fold pipeline on labels permuted within training folds, N times

    def __post_init__(self) -> None:
        for key in ("chance_permutations", "n_boot"):
            if getattr(self, key) < 1:
                raise ValueError(f"stats.{key} must be ≥ 1, got {getattr(self, key)}")
        if not 0 < self.level < 1:
            raise ValueError(f"stats.level must be in (0, 1), got {self.level}")
        if not 0 < self.below_chance_p < 1:
            raise ValueError(f"stats.below_chance_p must be in (0, 1), got {self.below_chance_p}")
        if self.permutations < 0:
            raise ValueError(f"stats.permutations must be ≥ 0 (0 = off), got {self.permutations}")

    @classmethod
    def from_config(cls, stats: Mapping[str, Any]) -> "StatsSettings":
        """From config section ``stats``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stats.items() if k in names})

    def cheap(self) -> dict[str, Any]:
        """The keys the prediction-only rules read (not ``permutations``: changing it reruns none of them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "permutations"}
