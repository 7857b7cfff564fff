"""Feature-extraction settings from config section ``features``; torch-free, so the workflow can parse it cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

STAIN_METHODS = ("none", "macenko")  # wsikt.features.stain.METHODS (that module imports torch)

# config key → extract_slides argument, for the keys that change a slide's features or how they are computed
CONFIG_KEYS = {"batch_size": "batch_size", "num_workers": "num_workers", "device": "device", "weights": "weights",
               "hub": "allow_hub", "precision": "precision", "compile": "compile", "prefetch": "prefetch",
               "color_norm": "color_norm", "color_norm_reference": "color_norm_reference"}


# keys left out of a job's params at these values, so adding them to the schema re-embeds nothing already embedded
UNSET = {"color_norm": "none", "color_norm_reference": None}


def feature_params(features: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of config section ``features`` an extraction job uses (its rule's params)."""
    return {k: features[k] for k in CONFIG_KEYS if k in features and not (k in UNSET and features[k] == UNSET[k])}


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
    color_norm: str = "none"  # wsikt.features.stain.METHODS
    color_norm_reference: str | None = None

    @classmethod
    def from_config(cls, features: Mapping[str, Any]) -> "FeatureSettings":
        """From config section ``features`` (or the subset :func:`feature_params` passes to a job)."""
        unknown = sorted(set(features) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"features settings: unknown key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
        values = {CONFIG_KEYS[k]: v for k, v in features.items()}
        if values.get("precision") == "auto":
            values["precision"] = None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Colour normalisation named and consistent (torch-free: checked when the workflow parses)."""
        check_color_norm(self.color_norm, self.color_norm_reference)

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of ``extract_slides``."""
        return asdict(self)


def check_color_norm(method: str, reference: str | None) -> None:
    """``features.color_norm`` is a known method, and a reference image only comes with a method that uses it."""
    if method not in STAIN_METHODS:
        raise ValueError(f"features.color_norm '{method}' must be one of {', '.join(STAIN_METHODS)}")
    if method == "none" and reference is not None:
        raise ValueError("features.color_norm_reference is set but features.color_norm is 'none'; "
                         "set color_norm: macenko or remove the reference")
