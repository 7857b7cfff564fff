"""Training settings, built from the config sections in one place (config keys experts.*)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from wsikt.core.model_facts import check_loss_config


@dataclass(frozen=True)
class TrainSettings:
    """How a survival model is fit (CROPKT defaults); experts, ROUPKT and the baselines share them."""

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

    def __post_init__(self) -> None:
        if self.feature_norm not in ("none", "standardize"):
            raise ValueError(f"experts.feature_norm '{self.feature_norm}' must be 'none' or 'standardize'")
        check_loss_config(self.loss, self.patients_per_step)

    @classmethod
    def from_config(cls, experts: Mapping[str, Any], model: str | None = None) -> "TrainSettings":
        """From config section ``experts`` (its ``bins`` sub-section flattened); ``model`` overrides experts.model."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in experts.items() if k in names}
        bins = experts.get("bins", {})
        values.update({k: bins[c] for k, c in (("bins_kind", "kind"), ("n_bins", "n_bins"), ("bin_width_days", "width_days"))
                       if c in bins})
        if model is not None:
            values["model"] = model
        return cls(**values)


@dataclass(frozen=True)
class NullGate:
    """Keep a trained model only if inner CV on its training fold shows signal (config key experts.null_gate).

    Otherwise it becomes the null model: one survival curve (the training fold's life-table) for
    every patient. A fit to noise is not a neutral model: C ignores scale, so its chance slope
    along the image's main direction ranks other cancers far from 0.5.
    """

    inner_folds: int = 0  # 0 = off: every expert keeps its trained head (CROPKT)
    min_c: float = 0.55  # pooled out-of-fold Harrell's C the inner models must exceed

    def __post_init__(self) -> None:
        if self.inner_folds == 1 or self.inner_folds < 0:
            raise ValueError(f"experts.null_gate.inner_folds {self.inner_folds} leaves no patient to train on: "
                             "use 0 (off) or at least 2")

    @classmethod
    def from_config(cls, section: Mapping[str, Any], key: str = "experts") -> "NullGate":
        """From the ``null_gate`` sub-section of config section ``key`` (experts, roupkt); errors name ``key``."""
        try:
            return cls(**section.get("null_gate", {}))
        except ValueError as exc:
            raise ValueError(str(exc).replace("experts.null_gate", f"{key}.null_gate", 1)) from None
