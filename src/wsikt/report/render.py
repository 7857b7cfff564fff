"""The report page rendered from its tables and figures with the package's Jinja template."""

from __future__ import annotations

import math
from typing import Any

import jinja2
import numpy as np

from wsikt.report.facts import format_seconds


def fmt(v, digits=3, dash="—") -> str:
    """A number with ``digits`` decimals, or ``dash`` for a missing or non-finite value."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return dash
    return dash if not math.isfinite(v) else f"{v:.{digits}f}"


def pval(p) -> str:
    """A p-value as journals print it (<0.0001, two significant digits below 0.01)."""
    if p is None or not np.isfinite(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wsikt.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
    )
    env.filters["f"] = fmt
    env.filters["p"] = pval
    env.filters["secs"] = format_seconds
    env.filters["folds"] = lambda v: " ".join(fmt(x, 2) for x in str(v).split(",")) if isinstance(v, str) else "—"
    return env


def render_page(context: dict[str, Any]) -> str:
    """The HTML of ``templates/report.html`` for ``context`` (every name the template uses; missing → error)."""
    return _environment().get_template("report.html").render(**context)
