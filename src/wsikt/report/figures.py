"""Report figures rendered with matplotlib to PNG bytes (embedded as base64)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def transfer_heatmap(matrix: pd.DataFrame) -> bytes:
    """Source × target heatmap of mean C-index with values written in the cells."""
    pivot = matrix.pivot(index="source", columns="target", values="c_index_mean")
    fig, ax = plt.subplots(figsize=(1.1 * len(pivot.columns) + 2.5, 0.8 * len(pivot) + 1.8), dpi=110)
    im = ax.imshow(pivot.to_numpy(float), cmap="RdBu_r", vmin=0.2, vmax=0.8)
    ax.set_xticks(range(len(pivot.columns)), pivot.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(pivot.index)), pivot.index)
    ax.set_xlabel("target cancer (test folds)")
    ax.set_ylabel("source expert")
    for i in range(pivot.shape[0]):
        for j in range(pivot.shape[1]):
            v = pivot.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(v - 0.5) > 0.2 else "black",
                        fontweight="bold" if pivot.index[i] == pivot.columns[j] else "normal")
    fig.colorbar(im, ax=ax, label="Harrell's C")
    ax.set_title("Zero-shot transfer (diagonal: cancer-specific)")
    return _png(fig)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def km_panels(groups: dict, endpoint: str = "OS") -> bytes:
    """One small Kaplan–Meier panel per cancer: predicted low- vs high-risk test patients, log-rank p."""
    from lifelines import KaplanMeierFitter

    cancers = sorted(groups)
    ncols = min(3, max(1, len(cancers)))
    nrows = max(1, -(-len(cancers) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(cancers):]:
        ax.axis("off")
    if not cancers:
        axes.flat[0].text(0.5, 0.5, "no test predictions", ha="center", va="center")
    for ax, cancer in zip(axes.flat, cancers):
        g = groups[cancer]
        for mask, label, color in ((~g.high, "low risk", "#1f77b4"), (g.high, "high risk", "#d62728")):
            if mask.sum() == 0:
                continue
            kmf = KaplanMeierFitter(label=f"{label} (n={int(mask.sum())})")
            kmf.fit(g.time[mask] / 365.25, g.event[mask])
            kmf.plot_survival_function(ax=ax, ci_show=False, show_censors=True, color=color,
                                       censor_styles={"ms": 4, "marker": "|"})
        p = g.p_value
        ptxt = "= —" if not np.isfinite(p) else (f"= {p:.2g}" if p >= 1e-4 else "< 0.0001")
        ax.set_title(f"{cancer}   log-rank p {ptxt}", fontsize=10)
        ax.set_xlabel("years", fontsize=8)
        ax.set_ylabel(f"{endpoint} probability", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="best", frameon=True, framealpha=0.85)
    return _png(fig)
