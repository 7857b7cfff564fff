"""Feature-extraction settings from config section ``features``; torch-free, so the workflow can parse it cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

# config key → extract_slides argument, for the keys that change a slide's features or how they are computed
CONFIG_KEYS = {"batch_size": "batch_size", "num_workers": "num_workers", "device": "device", "weights": "weights",
               "hub": "allow_hub", "precision": "precision", "compile": "compile", "prefetch": "prefetch"}


def feature_params(features: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of config section ``features`` an extraction job uses (its rule's params)."""
    return {k: features[k] for k in CONFIG_KEYS if k in features}


@dataclass(frozen=True)
class FeatureSettings:
    """How a batch of slides is embedded (the arguments of ``extract_slides`` besides the encoder)."""

    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    weights: str | None = None
    allow_hub: bool = False
    precision: str | None = None  # None: the encoder's own ('auto' in config)
    compile: bool = False
    prefetch: int = 2

    @classmethod
    def from_config(cls, features: Mapping[str, Any]) -> "FeatureSettings":
        """From config section ``features`` (or the subset :func:`feature_params` passes to a job)."""
        unknown = sorted(set(features) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"features settings: unknown key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
        values = {CONFIG_KEYS[k]: v for k, v in features.items()}
        if values.get("precision") == "auto":
            values["precision"] = None
        return cls(**values)

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of ``extract_slides``."""
        return asdict(self)
