"""Assemble the single self-contained HTML report: cohort, QC, experts, transfer, run facts.

Every image is inlined as base64 PNG; the page has no script, stylesheet or font from elsewhere,
so it opens from disk with no server and no network.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml

from wsikt.core.io import atomic_path, write_text, write_tsv
from wsikt.report.facts import (
    ENDPOINTS,
    STAGE_ORDER,
    data_release,
    device_facts,
    format_seconds,
    runtime_per_stage,
    software_versions,
)
from wsikt.report.figures import km_panels, transfer_heatmap
from wsikt.report.metrics import expert_metrics, load_fold_predictions
from wsikt.survival.metrics import BOOT_SEED, MIN_TEST_EVENTS, N_BOOT, N_EVAL_TIMES
from wsikt.transfer.matrix import POSITIVE_THRESHOLDS, positive_table

_EXCLUSION_COLUMNS = ["patient_id", "cancer", "reason", "stage"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_tsvs(paths, **kw) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t", dtype={"patient_id": str, "slide_id": str}, **kw) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_exclusions(paths: list[str | Path]) -> pd.DataFrame:
    """Exclusion TSVs ``results/{stage}/{endpoint}/{cancer}.excluded.tsv`` with their stage."""
    frames = []
    for p in paths:
        df = pd.read_csv(p, sep="\t", dtype={"patient_id": str})
        df["stage"] = Path(p).parts[-3] if len(Path(p).parts) >= 3 else "?"
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_EXCLUSION_COLUMNS)
    return out.reindex(columns=_EXCLUSION_COLUMNS).sort_values(["cancer", "stage", "patient_id"]).reset_index(drop=True)


def reverse_km_median(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan–Meier method (censoring as the event); NaN if not reached."""
    from lifelines import KaplanMeierFitter

    if len(time) == 0 or np.all(event):
        return float("nan")
    m = KaplanMeierFitter().fit(time, 1 - np.asarray(event, int)).median_survival_time_
    return float(m) if np.isfinite(m) else float("nan")


def cohort_table(analysed: pd.DataFrame, samples: pd.DataFrame, exclusions: pd.DataFrame) -> pd.DataFrame:
    """Per cancer: analysed patients and slides, events, censoring, follow-up, exclusions by stage."""
    rows = []
    cancers = sorted(set(analysed.get("cancer", [])) | set(exclusions["cancer"].dropna()))
    for cancer in cancers:
        g = analysed[analysed["cancer"] == cancer] if len(analysed) else analysed
        ex = exclusions[exclusions["cancer"] == cancer]
        t, e = g["time"].to_numpy(float), g["event"].to_numpy(int)
        rows.append({
            "cancer": cancer,
            "patients": int(len(g)),
            "slides": int(samples["patient_id"].isin(g["patient_id"]).sum()),
            "events": int(e.sum()),
            "censored_pct": 100.0 * (1 - e.mean()) if len(e) else float("nan"),
            "followup_median_days": reverse_km_median(t, e),
            "time_max_days": float(t.max()) if len(t) else float("nan"),
            "excluded_labels": int((ex["stage"] == "labels").sum()),
            "excluded_splits": int((ex["stage"] == "splits").sum()),
        })
    return pd.DataFrame(rows)


def sample_qc(qc_pngs: list[str | Path], samples: pd.DataFrame, max_qc: int) -> tuple[list[dict], int]:
    """At most ``max_qc`` QC images, spread over cancers (round robin) and evenly over each cancer's slides.

    Returns [{cancer, n, shown: [{slide, patient, png}]}] and the number of QC images available.
    """
    by_slide = samples.set_index("slide_id")
    per_cancer: dict[str, list[Path]] = {}
    for p in sorted(map(Path, qc_pngs)):
        cancer = str(by_slide.at[p.stem, "cancer"]) if p.stem in by_slide.index else "unknown"
        per_cancer.setdefault(cancer, []).append(p)
    quota = {c: 0 for c in per_cancer}
    while sum(quota.values()) < max_qc and any(quota[c] < len(per_cancer[c]) for c in quota):
        for c in sorted(quota):
            if quota[c] < len(per_cancer[c]) and sum(quota.values()) < max_qc:
                quota[c] += 1
    groups = []
    for c in sorted(per_cancer):
        paths, k = per_cancer[c], quota[c]
        idx = sorted(set(np.linspace(0, len(paths) - 1, k).round().astype(int))) if k else []
        shown = [{"slide": paths[i].stem,
                  "patient": str(by_slide.at[paths[i].stem, "patient_id"]) if paths[i].stem in by_slide.index else "",
                  "png": _b64(paths[i].read_bytes())} for i in idx]
        groups.append({"cancer": c, "n": len(paths), "shown": shown})
    return groups, sum(len(v) for v in per_cancer.values())


def positive_transfer(matrix: pd.DataFrame, thresholds=POSITIVE_THRESHOLDS) -> pd.DataFrame:
    """Per target: sources (diagonal excluded) whose mean C is above each threshold, and how many there are."""
    table = positive_table(matrix, thresholds)
    others = matrix[matrix["source"] != matrix["target"]].groupby("target").size()
    table.insert(1, "n_sources", table["target"].map(others).fillna(0).astype(int))
    for thr in thresholds:
        table[f"sources_above_{thr}"] = table[f"sources_above_{thr}"].str.replace(",", ", ")
    return table


def _fmt(v, digits=3, dash="—") -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return dash
    return dash if not math.isfinite(v) else f"{v:.{digits}f}"


def _pval(p) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def roupkt_table(experts: pd.DataFrame, roupkt_tsv, baseline_tsvs: dict) -> pd.DataFrame:
    """Per target: own expert's mean test C, ROUPKT's, their difference, and each baseline's."""
    if roupkt_tsv is None:
        return pd.DataFrame(columns=["cancer", "expert", "roupkt", "delta"])
    r = pd.read_csv(roupkt_tsv, sep="\t")[["cancer", "c_index_mean"]].rename(columns={"c_index_mean": "roupkt"})
    out = experts[["cancer", "c_index_mean"]].rename(columns={"c_index_mean": "expert"}).merge(r, on="cancer")
    out["delta"] = out["roupkt"] - out["expert"]
    for method, path in sorted(baseline_tsvs.items()):
        b = pd.read_csv(path, sep="\t")[["cancer", "c_index_mean"]].rename(columns={"c_index_mean": method})
        out = out.merge(b, on="cancer", how="left")
    return out


def build_report(
    out_html: str | Path,
    *,
    summary_tsv: str | Path,
    matrix_tsv: str | Path,
    split_tsvs: list[str | Path],
    samples_tsv: str | Path,
    exclusion_tsvs: list[str | Path],
    qc_pngs: list[str | Path],
    prediction_tsvs: list[str | Path],
    benchmark_dir: str | Path | None,
    config: dict,
    endpoint: str,
    encoder: str,
    model: str,
    max_qc: int = 12,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    out_km_png: str | Path | None = None,
    out_heatmap_png: str | Path | None = None,
    out_metrics_tsv: str | Path | None = None,
    roupkt_summary_tsv: str | Path | None = None,
    baseline_summary_tsvs: dict[str, str | Path] | None = None,
    roupkt_topk: int = 5,
) -> dict:
    """Render the page; optionally also write its figures and the expert metrics table as files.

    ``prediction_tsvs`` are ``.../{cancer}/fold{k}/predictions.tsv``; each sibling ``model.pt``
    gives the expert's bin edges. Returns the numbers shown (for tests).
    """
    summary = pd.read_csv(summary_tsv, sep="\t")
    matrix = pd.read_csv(matrix_tsv, sep="\t")
    analysed = _read_tsvs(split_tsvs)
    samples = pd.read_csv(samples_tsv, sep="\t", dtype={"slide_id": str, "patient_id": str})
    exclusions = read_exclusions(exclusion_tsvs)
    cohort = cohort_table(analysed, samples, exclusions)

    folds = load_fold_predictions(prediction_tsvs)
    metrics, groups = expert_metrics(folds, n_boot=n_boot, seed=seed)
    experts = summary.merge(metrics, on="cancer", how="left") if len(metrics) else summary.assign(ci_low=np.nan, ci_high=np.nan)
    if "null_folds" not in experts:  # a summary written before the null gate
        experts["null_folds"] = 0
    km_png = km_panels(groups, endpoint)

    pivot = matrix.pivot(index="source", columns="target", values="c_index_mean")
    sd = matrix.pivot(index="source", columns="target", values="c_index_sd")
    heatmap_png = transfer_heatmap(matrix)
    positives = positive_transfer(matrix)
    qc_groups, n_qc = sample_qc(qc_pngs, samples, max_qc)
    roupkt = roupkt_table(summary, roupkt_summary_tsv, baseline_summary_tsvs or {})
    runtime = runtime_per_stage(benchmark_dir) if benchmark_dir else pd.DataFrame(columns=["stage", "jobs", "total_s", "longest_s"])
    missing_stages = [s for s in STAGE_ORDER if s != "report" and s not in set(runtime["stage"])]

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wsikt.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
    )
    env.filters["f"] = _fmt
    env.filters["p"] = _pval
    env.filters["secs"] = format_seconds
    env.filters["folds"] = lambda v: " ".join(_fmt(x, 2) for x in str(v).split(",")) if isinstance(v, str) else "—"
    html = env.get_template("report.html").render(
        endpoint=endpoint, endpoint_name=ENDPOINTS.get(endpoint, endpoint), encoder=encoder, model=model,
        release=data_release(config), n_folds=int(summary["folds"].max()) if len(summary) else 0,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        totals={"patients": int(cohort["patients"].sum()) if len(cohort) else 0,
                "slides": int(cohort["slides"].sum()) if len(cohort) else 0, "cancers": len(cohort)},
        cohort=cohort.to_dict("records"), exclusions=exclusions.to_dict("records"),
        exclusion_reasons=exclusions.groupby(["stage", "reason"]).size().reset_index(name="n").to_dict("records") if len(exclusions) else [],
        experts=experts.to_dict("records"), km=_b64(km_png) if groups else None,
        n_boot=n_boot, seed=seed, n_eval_times=N_EVAL_TIMES, min_test_events=MIN_TEST_EVENTS,
        targets=list(pivot.columns), sources=list(pivot.index),
        matrix={s: {t: (pivot.at[s, t], sd.at[s, t]) for t in pivot.columns} for s in pivot.index},
        heatmap=_b64(heatmap_png), positives=positives.to_dict("records"), thresholds=POSITIVE_THRESHOLDS,
        roupkt=roupkt.to_dict("records"), roupkt_topk=roupkt_topk, baseline_methods=sorted(baseline_summary_tsvs or {}),
        baselines=bool(baseline_summary_tsvs),
        qc_groups=qc_groups, n_qc_shown=sum(len(g["shown"]) for g in qc_groups), n_qc=n_qc, max_qc=max_qc,
        runtime=runtime.to_dict("records"), runtime_total=float(runtime["total_s"].sum()) if len(runtime) else 0.0,
        missing_stages=missing_stages, versions=software_versions(), device=device_facts(),
        config_yaml=yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
    )
    write_text(html, out_html)
    for path, png in ((out_km_png, km_png), (out_heatmap_png, heatmap_png)):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
    if out_metrics_tsv:
        write_tsv(experts, out_metrics_tsv)
    return {"experts": experts, "groups": groups, "positives": positives, "cohort": cohort, "runtime": runtime,
            "matrix": matrix, "qc_groups": qc_groups, "roupkt": roupkt}
