"""Magnification names: the one place where µm/px becomes "20x" (10 / mpp) and back."""

from __future__ import annotations

import math


def mag_name(mpp: float) -> str:
    """The name of µm/px ``mpp`` as a magnification: 10 / mpp, e.g. 0.5 → "20x" (NaN or ≤ 0 → "primary")."""
    if not math.isfinite(mpp) or mpp <= 0:
        return "primary"
    return f"{10.0 / mpp:g}x"


def magnification(name: str) -> float:
    """The number of a magnification name: "20x" → 20.0."""
    try:
        return float(name.rstrip("x"))
    except ValueError:
        raise ValueError(f"magnification name '{name}' must look like '20x' (10/mpp)") from None


def mpp_of(name: str) -> float:
    """µm/px of a magnification name: "20x" → 0.5."""
    return 10.0 / magnification(name)
