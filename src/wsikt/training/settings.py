"""Training settings, built from the config sections in one place (config keys experts.*)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from wsikt.core.model_facts import check_loss_config

LR_SCHEDULES = ("hf_cosine", "cosine", "epoch_cosine", "constant")
OPTIMIZERS = ("adamw", "adam")


@dataclass(frozen=True)
class TrainSettings:
    """How a survival model is fit (CROPKT defaults); experts, ROUPKT and the baselines share them."""

    model: str = "abmil"
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-5
    patients_per_step: int = 16
    drop_last: bool = True  # CROPKT: floor(N / patients_per_step) steps per epoch; False keeps the last partial step
    warmup_epochs: int = 1
    lr_schedule: str = "hf_cosine"  # HF get_cosine_schedule_with_warmup (lr 0 at the first step); 'cosine': warmup from lr/warmup
    lr_period_epochs: int = 10  # epoch_cosine: PyTorch CosineAnnealingLR's T_max in epochs (CrossFusion: 10)
    optimizer: str = "adamw"  # adamw: decoupled decay on >=2-D weights (CROPKT); adam: L2 on every weight (CrossFusion, HistoSSLscaling)
    alpha: float = 0.5
    dropout: float = 0.25  # in the attention (and the other aggregators' layers)
    projection_dropout: float = 0.0  # after the Linear+ReLU feature projection of abmil/mean/max and the ROUPKT router (CROPKT: none)
    seed: int = 42
    feature_norm: str = "none"  # 'standardize': z-score features with training-fold patch statistics
    bins_kind: str = "uniform"
    n_bins: int = 32
    bin_width_days: float = 365.0
    loss: str = "nll"  # 'nll' (discrete-time, T outputs) or 'cox' (one log-risk output, ≥16 patients per step)
    cox_reduction: str = "patients"  # Cox sum over events divided by the step's patients (HistoSSLscaling) or 'events'
    max_tiles_per_slide: int | None = None  # each slide's first k patches only (HistoSSLscaling: 1000); None = all
    model_params: dict[str, Any] = field(default_factory=dict)  # the aggregator's own hyper-parameters

    def __post_init__(self) -> None:
        if self.feature_norm not in ("none", "standardize"):
            raise ValueError(f"experts.feature_norm '{self.feature_norm}' must be 'none' or 'standardize'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"experts.lr_schedule '{self.lr_schedule}' must be one of {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule in ("epoch_cosine", "constant") and self.warmup_epochs:
            raise ValueError(f"experts.lr_schedule '{self.lr_schedule}' has no warmup: set experts.warmup_epochs: 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"experts.optimizer '{self.optimizer}' must be one of {', '.join(OPTIMIZERS)}")
        check_loss_config(self.loss, self.patients_per_step)
        if self.cox_reduction not in ("events", "patients"):
            raise ValueError(f"experts.cox_reduction '{self.cox_reduction}' must be 'events' or 'patients'")

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


GRID_KEYS = ("lr", "weight_decay", "epochs", "dropout", "alpha", "patients_per_step", "warmup_epochs")
GRID_SCORES = ("mean", "pooled")


@dataclass(frozen=True)
class HyperGrid:
    """Nested CV (HistoSSLscaling): each outer fold picks its hyper-parameters by inner CV on its training patients.

    Config key experts.grid. Every combination of ``params`` (values for experts.* keys) is trained
    on each of ``inner_folds`` inner folds and scored on the held-out inner fold; with ``epochs``
    the epoch count is chosen too (the epoch with the best inner score, at most experts.epochs).
    The best combination is retrained on the whole training fold. Empty ``params`` and no
    ``epochs`` = no search (the experts.* values as given).
    """

    params: dict[str, list[Any]] = field(default_factory=dict)
    inner_folds: int = 5
    epochs: bool = False
    score: str = "mean"  # 'mean': mean of each inner fold's C (HistoSSLscaling); 'pooled': one C over pooled risks

    def __post_init__(self) -> None:
        unknown = sorted(set(self.params) - set(GRID_KEYS))
        if unknown:
            raise ValueError(f"experts.grid.params {unknown} cannot be searched: use keys among {', '.join(GRID_KEYS)}")
        empty = sorted(k for k, v in self.params.items() if not isinstance(v, (list, tuple)) or not v)
        if empty:
            raise ValueError(f"experts.grid.params {empty} need a non-empty list of values each")
        if self.epochs and "epochs" in self.params:
            raise ValueError("experts.grid.epochs picks the epoch count itself: drop 'epochs' from experts.grid.params")
        if self.inner_folds < 2:
            raise ValueError(f"experts.grid.inner_folds {self.inner_folds} leaves no patient to validate on: use at least 2")
        if self.score not in GRID_SCORES:
            raise ValueError(f"experts.grid.score '{self.score}' must be one of {', '.join(GRID_SCORES)}")

    @property
    def enabled(self) -> bool:
        return bool(self.params) or self.epochs

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of ``params``, in config order (the first wins a tie)."""
        keys = list(self.params)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.params[k] for k in keys))]

    @classmethod
    def from_config(cls, experts: Mapping[str, Any]) -> "HyperGrid":
        """From config section ``experts`` (its ``grid`` sub-section)."""
        grid = dict(experts.get("grid", {}))
        grid["params"] = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in dict(grid.get("params", {})).items()}
        return cls(**grid)
