"""Assemble the HTML report from result tables: cohort, expert C-index, transfer matrix, QC, run facts."""

from __future__ import annotations

import base64
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml

from wsikt.io import write_text
from wsikt.report.figures import transfer_heatmap

_PACKAGES = ("wsikt", "snakemake", "torch", "openslide-python", "openslide-bin", "numpy", "pandas", "scikit-survival")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cohort_table(labels: pd.DataFrame, samples: pd.DataFrame, exclusions: pd.DataFrame) -> pd.DataFrame:
    """Patients, slides, events, censoring and follow-up per cancer."""
    rows = []
    for cancer, g in labels.groupby("cancer", sort=True):
        rows.append({
            "cancer": cancer,
            "patients": int(len(g)),
            "slides": int(samples["patient_id"].isin(g["patient_id"]).sum()),
            "events": int(g["event"].sum()),
            "censored_pct": round(100.0 * (1 - g["event"].mean()), 1),
            "median_followup_days": int(np.median(g["time"])),
            "excluded": int((exclusions["cancer"] == cancer).sum()),
        })
    return pd.DataFrame(rows)


def build_report(
    out_html: str | Path,
    summary_tsv: str | Path,
    matrix_tsv: str | Path,
    labels_tsv: str | Path,
    samples_tsv: str | Path,
    exclusion_tsvs: list[str | Path],
    qc_pngs: list[str | Path],
    config: dict,
    endpoint: str,
    encoder: str,
    model: str,
    max_qc: int = 12,
) -> None:
    """Render the single self-contained HTML page (images inlined; opens from disk)."""
    summary = pd.read_csv(summary_tsv, sep="\t")
    matrix = pd.read_csv(matrix_tsv, sep="\t")
    labels = pd.read_csv(labels_tsv, sep="\t")
    samples = pd.read_csv(samples_tsv, sep="\t")
    excl = [pd.read_csv(p, sep="\t") for p in exclusion_tsvs]
    exclusions = pd.concat(excl, ignore_index=True) if excl else pd.DataFrame(columns=["patient_id", "cancer", "reason"])
    pivot = matrix.pivot(index="source", columns="target", values="c_index_mean")
    sd = matrix.pivot(index="source", columns="target", values="c_index_sd")
    step = max(1, len(qc_pngs) // max_qc)
    qc = [{"name": Path(p).stem, "png": _b64(Path(p).read_bytes())} for p in sorted(qc_pngs)[::step][:max_qc]]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wsikt.report", "templates"), autoescape=jinja2.select_autoescape(["html"])
    )
    html = env.get_template("report.html").render(
        endpoint=endpoint, encoder=encoder, model=model,
        cohort=cohort_table(labels, samples, exclusions).to_dict("records"),
        exclusions=exclusions.to_dict("records"),
        summary=summary.to_dict("records"),
        targets=list(pivot.columns), sources=list(pivot.index),
        matrix={s: {t: (pivot.at[s, t], sd.at[s, t]) for t in pivot.columns} for s in pivot.index},
        heatmap=_b64(transfer_heatmap(matrix)),
        qc=qc, n_qc=len(qc_pngs),
        versions=_versions(), config_yaml=yaml.safe_dump(config, sort_keys=False),
    )
    write_text(html, out_html)
