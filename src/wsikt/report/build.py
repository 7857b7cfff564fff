"""Assemble the single self-contained HTML report: result files → tables → figures → page.

Every image is inlined as base64 PNG; the page has no script, stylesheet or font from elsewhere,
so it opens from disk with no server and no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from wsikt.cohort.groups import CancerGroups
from wsikt.cohort.split_settings import SplitSettings
from wsikt.core.io import atomic_path, write_text, write_tsv
from wsikt.core.model_facts import ATTENTION_MODELS
from wsikt.report.data import (
    b64,
    cohort_table,
    folds_covered,
    positive_transfer,
    read_exclusions,
    read_tsvs,
    roupkt_table,
    sample_qc,
)
from wsikt.report.facts import ENDPOINTS, STAGE_ORDER, data_release, device_facts, runtime_per_stage, software_versions
from wsikt.report.figures import km_panels, transfer_heatmap
from wsikt.report.heatmaps import attention_section
from wsikt.report.metrics import expert_metrics, load_fold_predictions
from wsikt.report.render import render_page
from wsikt.report.significance import matrix_intervals, read_stats, with_comparisons, with_expert_chance
from wsikt.stats.settings import StatsSettings
from wsikt.survival.metrics import BOOT_SEED, MIN_TEST_EVENTS, N_BOOT, N_EVAL_TIMES
from wsikt.transfer.finetuned_matrix import read_finetuned_matrix
from wsikt.transfer.matrix import POSITIVE_THRESHOLDS


@dataclass(frozen=True)
class ReportInputs:
    """The result files the report reads: the report rule's named inputs (plus the benchmark folder).

    ``predictions`` are ``.../{cancer}/fold{k}/predictions.tsv``; each sibling ``model.pt`` gives the
    expert's bin edges. ``matrix`` (and ``matrix_ci``) is None when the transfer matrix was not run
    (``transfer.matrix: false``). ``baselines`` maps a baseline method to its summary TSV. ``chance``,
    ``compare``, ``matrix_ci`` and ``retrained`` are the statistics stage's tables (``results/stats/``).
    """

    summary: Path
    matrix: Path | None
    splits: list[Path]
    samples: Path
    excluded: list[Path]
    qc: list[Path]
    predictions: list[Path]
    roupkt: Path | None = None
    baselines: dict[str, Path] = field(default_factory=dict)
    benchmarks: Path | None = None
    finetuned: Path | None = None  # HistoKT's fine-tuned matrix (transfer.finetuned), when it was run
    chance: Path | None = None
    compare: Path | None = None
    matrix_ci: Path | None = None
    retrained: list[Path] = field(default_factory=list)
    heatmaps: Path | None = None  # the heatmaps rule's index TSV; its PNGs are in the folder of the same name
    density: Path | None = None  # its attention–density table

    @classmethod
    def from_rule(cls, named: Any, baseline_methods: list[str], benchmarks: str | Path | None) -> ReportInputs:
        """From a rule's named inputs (any object with the attributes above; ``roupkt`` may be empty)."""
        return cls(
            summary=Path(named.summary), matrix=_one_path(named.matrix), splits=[Path(p) for p in named.splits],
            samples=Path(named.samples), excluded=[Path(p) for p in named.excluded], qc=[Path(p) for p in named.qc],
            predictions=[Path(p) for p in named.predictions], roupkt=Path(named.roupkt) if named.roupkt else None,
            baselines={m: Path(p) for m, p in zip(baseline_methods, named.baselines)},
            benchmarks=Path(benchmarks) if benchmarks else None,
            finetuned=_one_path(getattr(named, "finetuned", None)),
            **{k: Path(getattr(named, k)) if getattr(named, k, None) else None for k in ("chance", "compare", "matrix_ci")},
            retrained=[Path(p) for p in getattr(named, "retrained", [])],
            heatmaps=Path(named.heatmaps) if getattr(named, "heatmaps", None) else None,
            density=Path(named.density) if getattr(named, "density", None) else None,
        )


def _one_path(value: Any) -> Path | None:
    """An optional input given as a path, a one-path list, or nothing."""
    if isinstance(value, (list, tuple)) or (value is not None and not isinstance(value, (str, Path))):
        value = list(value)[0] if len(value) else None
    return Path(value) if value else None


@dataclass(frozen=True)
class ReportOutputs:
    """The page and, optionally, its figures and expert metrics table as files."""

    html: Path
    km: Path | None = None
    heatmap: Path | None = None
    metrics: Path | None = None


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows about the run (config keys endpoint, features.encoder, experts.model, report.*)."""

    config: dict
    endpoint: str
    encoder: str
    model: str
    max_qc: int = 12
    n_boot: int = N_BOOT
    seed: int = BOOT_SEED
    roupkt_topk: int = 5
    excluded_cancers: dict[str, str] = field(default_factory=dict)  # cancer → why the workflow left it out


@dataclass
class ReportData:
    """Every table the page shows, computed from the result files."""

    experts: pd.DataFrame
    groups: dict
    matrix: pd.DataFrame | None  # None: the transfer matrix was not run
    positives: pd.DataFrame | None
    cohort: pd.DataFrame
    exclusions: pd.DataFrame
    qc_groups: list[dict]
    n_qc: int
    roupkt: pd.DataFrame
    runtime: pd.DataFrame
    n_folds: int
    finetuned: pd.DataFrame | None = None
    matrix_ci: dict = field(default_factory=dict)  # source → target → (low, high, below chance)
    attention: dict = field(default_factory=dict)


def _expert_table(summary: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    metrics = metrics.drop(columns=[c for c in metrics.columns if c in summary.columns and c != "cancer"])  # folds: the summary's
    experts = summary.merge(metrics, on="cancer", how="left") if len(metrics) else summary.assign(ci_low=np.nan, ci_high=np.nan)
    if "null_folds" not in experts:  # a summary written before the null gate
        experts["null_folds"] = 0
    experts["c_index_n"] = experts["c_index_folds"].map(folds_covered)  # folds with a comparable pair
    return experts


def report_data(inputs: ReportInputs, settings: ReportSettings) -> ReportData:
    """Read the result files and compute the report's tables (bootstrap CIs, risk groups, cohort)."""
    summary = pd.read_csv(inputs.summary, sep="\t")
    matrix = pd.read_csv(inputs.matrix, sep="\t") if inputs.matrix else None
    samples = pd.read_csv(inputs.samples, sep="\t", dtype={"slide_id": str, "patient_id": str, "cancer": str})
    samples = CancerGroups.from_config(settings.config.get("cancer_groups")).apply(samples, str(inputs.samples))
    exclusions = read_exclusions(inputs.excluded)
    metrics, groups = expert_metrics(load_fold_predictions(inputs.predictions), n_boot=settings.n_boot, seed=settings.seed)
    qc_groups, n_qc = sample_qc(inputs.qc, samples, settings.max_qc)
    runtime = (runtime_per_stage(inputs.benchmarks) if inputs.benchmarks
               else pd.DataFrame(columns=["stage", "jobs", "total_s", "longest_s"]))
    stats = read_stats(inputs.chance, inputs.compare, inputs.matrix_ci, inputs.retrained)
    return ReportData(
        experts=with_expert_chance(_expert_table(summary, metrics), stats), groups=groups, matrix=matrix,
        positives=positive_transfer(matrix) if matrix is not None else None, cohort=cohort_table(read_tsvs(inputs.splits), samples, exclusions),
        exclusions=exclusions, qc_groups=qc_groups, n_qc=n_qc,
        roupkt=with_comparisons(roupkt_table(summary, inputs.roupkt, inputs.baselines), stats, sorted(inputs.baselines)),
        runtime=runtime, n_folds=int(summary["folds"].max()) if len(summary) else 0, matrix_ci=matrix_intervals(stats),
        finetuned=read_finetuned_matrix(inputs.finetuned) if inputs.finetuned else None,
        attention=attention_section(inputs.heatmaps, inputs.density),
    )


def split_text(config: dict) -> str:
    """How the test folds were made (config section splits), in one phrase for the page."""
    folds = int(config.get("experts", {}).get("folds", 5))
    return SplitSettings.from_config(config.get("splits") or {}).describe(folds)


def _stats_facts(config: dict, experts: pd.DataFrame) -> dict[str, Any]:
    """The stats settings the page's captions cite: config section stats (schema defaults), the shuffles as run."""
    s = StatsSettings.from_config(config.get("stats", {}))
    run = experts["perm_n"].dropna() if "perm_n" in experts else pd.Series(dtype=float)
    return {"n_perm": int(run.max()) if len(run) else s.chance_permutations, "n_boot": s.n_boot, "level": s.level, "below_p": s.below_chance_p,
            "permutations": s.permutations, "level_pct": f"{100 * s.level:g}"}


def report_figures(data: ReportData, endpoint: str) -> dict[str, bytes | None]:
    """The page's figures as PNG bytes: Kaplan–Meier risk groups and the transfer heatmap (None without a matrix)."""
    heatmap = transfer_heatmap(data.matrix) if data.matrix is not None else None
    return {"km": km_panels(data.groups, endpoint), "heatmap": heatmap}


def matrix_context(data: ReportData) -> dict[str, Any]:
    """The transfer table's names: sources, targets and per cell (mean, sd, CI low, CI high, below chance);
    empty without a matrix."""
    if data.matrix is None:
        return {"targets": [], "sources": [], "matrix": {}}
    pivot = data.matrix.pivot(index="source", columns="target", values="c_index_mean")
    sd = data.matrix.pivot(index="source", columns="target", values="c_index_sd")
    return {"targets": list(pivot.columns), "sources": list(pivot.index),
            "matrix": {s: {t: (pivot.at[s, t], sd.at[s, t], *data.matrix_ci.get(s, {}).get(t, (np.nan, np.nan, False)))
                           for t in pivot.columns} for s in pivot.index}}


def page_context(data: ReportData, figures: dict[str, bytes], inputs: ReportInputs, settings: ReportSettings) -> dict[str, Any]:
    """Every name the template uses, from the tables, figures and settings."""
    has_matrix = data.matrix is not None
    cohort, exclusions, runtime = data.cohort, data.exclusions, data.runtime
    return dict(
        endpoint=settings.endpoint, endpoint_name=ENDPOINTS.get(settings.endpoint, settings.endpoint),
        encoder=settings.encoder, model=settings.model, release=data_release(settings.config), n_folds=data.n_folds,
        splits=split_text(settings.config), cancer_groups=CancerGroups.from_config(settings.config.get("cancer_groups")).groups,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        totals={"patients": int(cohort["patients"].sum()) if len(cohort) else 0,
                "slides": int(cohort["slides"].sum()) if len(cohort) else 0, "cancers": len(cohort)},
        cohort=cohort.to_dict("records"), exclusions=exclusions.to_dict("records"),
        excluded_cancers=dict(sorted(settings.excluded_cancers.items())),
        exclusion_reasons=exclusions.groupby(["stage", "reason"]).size().reset_index(name="n").to_dict("records") if len(exclusions) else [],
        experts=data.experts.to_dict("records"), km=b64(figures["km"]) if data.groups else None,
        n_boot=settings.n_boot, seed=settings.seed, n_eval_times=N_EVAL_TIMES, min_test_events=MIN_TEST_EVENTS,
        has_matrix=has_matrix, **matrix_context(data),
        stats=_stats_facts(settings.config, data.experts), has_stats=inputs.chance is not None,
        has_matrix_ci=bool(data.matrix_ci), has_retrained=bool(inputs.retrained),
        heatmap=b64(figures["heatmap"]) if has_matrix else None,
        positives=data.positives.to_dict("records") if has_matrix else [], thresholds=POSITIVE_THRESHOLDS,
        roupkt=data.roupkt.to_dict("records"), roupkt_topk=settings.roupkt_topk, baseline_methods=sorted(inputs.baselines),
        baselines=bool(inputs.baselines), finetuned=finetuned_context(data.finetuned, data.matrix),
        qc_groups=data.qc_groups, n_qc_shown=sum(len(g["shown"]) for g in data.qc_groups), n_qc=data.n_qc, max_qc=settings.max_qc,
        runtime=runtime.to_dict("records"), runtime_total=float(runtime["total_s"].sum()) if len(runtime) else 0.0,
        missing_stages=[s for s in STAGE_ORDER if s not in {"report", *(() if has_matrix else ("transfer",))}
                        and s not in set(runtime["stage"])],
        versions=software_versions(), device=device_facts(), attention=data.attention,
        model_has_attention=settings.model in ATTENTION_MODELS,
        config_yaml=yaml.safe_dump(settings.config, sort_keys=False, allow_unicode=True),
    )


def finetuned_context(finetuned: pd.DataFrame | None, zero_shot: pd.DataFrame | None) -> list[dict]:
    """Per fine-tuning method: the (source × target) cells as (mean, sd, zero-shot mean, NaN without a
    zero-shot matrix); [] when not run."""
    if finetuned is None or not len(finetuned):
        return []
    zs = zero_shot.set_index(["source", "target"])["c_index_mean"] if zero_shot is not None else pd.Series(dtype=float)
    out = []
    for method, g in finetuned.groupby("method", sort=True):
        sources, targets = sorted(g["source"].unique()), sorted(g["target"].unique())
        cells = {(r.source, r.target): (r.c_index_mean, r.c_index_sd, zs.get((r.source, r.target), float("nan")))
                 for r in g.itertuples()}
        out.append({"method": method, "sources": sources, "targets": targets,
                    "cells": {s: {t: cells.get((s, t)) for t in targets} for s in sources}})
    return out


def build_report(inputs: ReportInputs, outputs: ReportOutputs, settings: ReportSettings) -> dict:
    """Render the page (data → figures → page); optionally also write its figures and expert metrics table.

    Returns the numbers shown (for tests).
    """
    if outputs.heatmap and inputs.matrix is None:
        raise ValueError(f"report: heatmap file {outputs.heatmap} asked for, but no transfer matrix was given "
                         "(transfer.matrix false): ask for no heatmap")
    data = report_data(inputs, settings)
    figures = report_figures(data, settings.endpoint)
    write_text(render_page(page_context(data, figures, inputs, settings)), outputs.html)
    for path, png in ((outputs.km, figures["km"]), (outputs.heatmap, figures["heatmap"])):
        if path and png is not None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
    if outputs.metrics:
        write_tsv(data.experts, outputs.metrics)
    return {"experts": data.experts, "groups": data.groups, "positives": data.positives, "cohort": data.cohort,
            "runtime": data.runtime, "matrix": data.matrix, "qc_groups": data.qc_groups, "roupkt": data.roupkt,
            "finetuned": data.finetuned, "attention": data.attention}
