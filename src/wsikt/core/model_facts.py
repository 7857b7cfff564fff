"""What validating a config needs to know about the models and losses, without importing torch.

The Snakefile validates the config while it parses, and every job (on SLURM, every job's own
snakemake) parses it again: importing torch there would cost each job a second or more, and a dry
run would need torch installed. The torch registries (``wsikt.mil``, ``wsikt.survival.losses``)
take these names and defaults from here; a test holds the two in agreement.
"""

from __future__ import annotations

from typing import Any

PRIMARY = "primary"  # scale name meaning "the features file's primary magnification", whatever it is
MIN_COX_BATCH = 16  # the partial likelihood compares each event with the batch's patients still at risk
LOSS_NAMES = ("nll", "cox")
MODEL_NAMES = ("abmil", "abmil_hssl", "mean", "max", "transmil", "chowder", "dsmil", "dsca", "crossfusion",
               "crossfusion_local")
ATTENTION_MODELS = ("abmil", "abmil_hssl", "mean", "max", "dsmil", "dsca")  # aggregators with per-patch attention (Aggregator.patch_attention)
DEFAULT_SCALES: dict[str, tuple[str, ...]] = {  # multi-scale models: fine → coarse
    "dsca": ("20x", "5x"),
    "crossfusion": ("20x", "10x", "5x"),
    "crossfusion_local": ("20x", "10x", "5x"),
}


def model_scales(name: str, **params: Any) -> tuple[str, ...]:
    """Magnifications model ``name`` reads (PRIMARY = the features' primary one): what to load bags with."""
    if "scales" in params:
        return tuple(params["scales"])
    if name not in MODEL_NAMES:
        raise KeyError(f"unknown aggregator '{name}' (config key experts.model); known: {', '.join(MODEL_NAMES)}")
    return DEFAULT_SCALES.get(name, (PRIMARY,))


def check_loss_config(loss: str, patients_per_step: int) -> None:
    """Reject a loss the optimiser steps cannot support, before any job runs."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown experts.loss '{loss}': use one of {sorted(LOSS_NAMES)}")
    if loss == "cox" and patients_per_step < MIN_COX_BATCH:
        raise ValueError(
            f"experts.loss 'cox' needs experts.patients_per_step ≥{MIN_COX_BATCH} (got {patients_per_step}): "
            "the partial likelihood ranks each event only against the patients in the same optimiser step; "
            "use 'nll' or raise patients_per_step"
        )
