"""Patching settings from config section ``preprocess``; torch- and OpenCV-free, so the workflow can parse it cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

CONTOUR_FNS = ("four_pt", "four_pt_hard", "center", "basic", "none")


def patch_params(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of config section ``preprocess`` that shape a slide's patches (a rule's params: change → rerun)."""
    names = {f.name for f in fields(PatchSettings)}
    return {k: v for k, v in preprocess.items() if k in names}


@dataclass(frozen=True)
class PatchSettings:
    """Patching settings (config keys preprocess.*)."""

    target_mpp: float = 0.5
    patch_size: int = 256
    mpp_tolerance: float = 0.1
    context_mpp: tuple[float, ...] = ()
    contour_fn: str = "four_pt"
    min_tissue_fraction: float = 0.0
    grid: str = "global"  # 'global' (anchored at (0, 0), nests) or 'clam' (per-contour bounding box)
    nest_from: str = "fine"  # with context_mpp: 'fine' tests target_mpp cells for tissue, 'coarse' the coarsest (DSCA)
    segmentation: dict = field(default_factory=dict)
    qc_max_side: int = 1024

    @classmethod
    def from_config(cls, preprocess: Mapping[str, Any]) -> "PatchSettings":
        """From config section ``preprocess`` (keys that do not shape the patches, such as on_error, are ignored)."""
        return cls(**patch_params(preprocess))

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_mpp", tuple(float(m) for m in self.context_mpp))  # JSON gives a list
        if self.contour_fn not in CONTOUR_FNS:
            raise ValueError(f"preprocess.contour_fn '{self.contour_fn}' must be one of {', '.join(CONTOUR_FNS)}")
        if self.grid not in ("global", "clam"):
            raise ValueError(f"preprocess.grid '{self.grid}' must be 'global' or 'clam'")
        for mpp in self.context_mpp:
            ratio = mpp / self.target_mpp
            if round(ratio) < 2 or abs(ratio - round(ratio)) > 1e-6:
                raise ValueError(f"preprocess.context_mpp {mpp:g} must be an integer multiple (≥2) of preprocess.target_mpp "
                                 f"{self.target_mpp:g} (e.g. {2 * self.target_mpp:g}, {4 * self.target_mpp:g}) so the levels nest")
        if self.contour_fn == "none" and not self.min_tissue_fraction > 0:
            raise ValueError("preprocess.contour_fn 'none' keeps cells by tissue fraction alone: "
                             "set preprocess.min_tissue_fraction > 0")
        if self.nest_from not in ("fine", "coarse"):
            raise ValueError(f"preprocess.nest_from '{self.nest_from}' must be 'fine' or 'coarse'")
        if self.nest_from == "coarse" and not self.context_mpp:
            raise ValueError("preprocess.nest_from 'coarse' tests the coarsest context level for tissue: set "
                             "preprocess.context_mpp (e.g. [2.0]) or nest_from: fine")
        if self.grid == "clam" and self.context_mpp:
            raise ValueError("preprocess.grid 'clam' starts a grid per contour, so levels cannot nest: "
                             "use grid 'global' with preprocess.context_mpp, or context_mpp: []")
