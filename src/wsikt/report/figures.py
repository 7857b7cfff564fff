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
