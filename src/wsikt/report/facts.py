"""Run facts for the report: software versions, data release, device, runtime per stage."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

PACKAGES = (
    "wsikt", "snakemake", "torch", "openslide-python", "openslide-bin", "numpy", "pandas",
    "scikit-survival", "lifelines", "matplotlib", "jinja2",
)
# Pipeline order of the stages (first path component under results/benchmarks/); others follow.
STAGE_ORDER = ("acquire", "preprocess", "features", "labels", "splits", "experts", "transfer", "report")
ENDPOINTS = {
    "OS": "overall survival", "DSS": "disease-specific survival",
    "DFI": "disease-free interval", "PFI": "progression-free interval",
}


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def data_release(config: dict) -> str:
    """'synthetic demo cohort' for the demo config, else the sample sheet and clinical table used."""
    demo = config.get("demo", {})
    if demo.get("enabled"):
        return f"synthetic demo cohort (wsikt.demo, seed {demo.get('seed', '?')})"
    gdc = config.get("gdc") or {}
    if gdc.get("projects"):
        return (f"GDC {', '.join(gdc['projects'])} via {gdc.get('base_url', 'https://api.gdc.cancer.gov')}; "
                f"clinical table {config.get('clinical', '?')}")
    return f"sample sheet {config.get('samples', '?')}, clinical table {config.get('clinical', '?')}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_facts() -> dict[str, str]:
    """CPU model and cores, GPU name(s) via torch.cuda, of the machine that rendered the report."""
    out = {"CPU": f"{cpu_model()} ({os.cpu_count()} logical cores)"}
    try:
        import torch

        if torch.cuda.is_available():
            out["GPU"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        else:
            out["GPU"] = "none visible to torch (CPU run)"
    except Exception as err:  # noqa: BLE001 - a broken CUDA install must not stop the report
        out["GPU"] = f"unknown ({type(err).__name__})"
    return out


def runtime_per_stage(benchmark_dir: str | Path, exclude: tuple[str, ...] = ("report",)) -> pd.DataFrame:
    """Wall-clock seconds (column 's') summed per stage over Snakemake benchmark TSVs.

    The stage is the first path component under ``benchmark_dir``. The directory is globbed, not
    passed as inputs: every upstream job has finished (and written its benchmark) before the report
    runs, and a 12k-slide cohort would otherwise add 12k inputs to the report job. The report's own
    benchmark (written after it finishes) is excluded.
    """
    root = Path(benchmark_dir)
    rows = []
    for p in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        stage = p.relative_to(root).parts[0]
        if stage in exclude or len(p.relative_to(root).parts) < 2:
            continue
        try:
            s = pd.read_csv(p, sep="\t")["s"].astype(float)
        except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        rows.append({"stage": stage, "s": float(s.sum()), "max": float(s.max()) if len(s) else 0.0})
    if not rows:
        return pd.DataFrame(columns=["stage", "jobs", "total_s", "longest_s"])
    df = pd.DataFrame(rows).groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), longest_s=("max", "max")).reset_index()
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    df["_o"] = df["stage"].map(lambda s: order.get(s, len(order)))
    return df.sort_values(["_o", "stage"]).drop(columns="_o").reset_index(drop=True)


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:02.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
