"""Run snakemake as a subprocess on a copy of the repository (sources only, no results)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIED = ("Snakefile", "workflow", "config", "profiles")  # jobs import the installed wsikt


def copy_repo(dest: Path) -> Path:
    """Copy the workflow sources into ``dest`` (no results, logs or demo slides)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the snakemake of this Python environment in ``workdir``; output captured as text."""
    exe = Path(sys.executable).with_name("snakemake")
    return subprocess.run(
        [str(exe), *args], cwd=workdir, capture_output=True, text=True, timeout=timeout
    )


def jobs_in_dry_run(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule → job count from the 'Job stats' table of a dry run.

    The feature batch rules (extract_features_<cancer>_<id>, one job each) count as 'extract_features'.
    """
    counts: dict[str, int] = {}
    for rule, n in rules_in_dry_run(result).items():
        key = "extract_features" if rule.startswith("extract_features_") else rule
        counts[key] = counts.get(key, 0) + n
    return counts


def rules_in_dry_run(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule → job count from the 'Job stats' table of a dry run, every rule by its own name."""
    counts: dict[str, int] = {}
    lines = result.stdout.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    except StopIteration:
        return counts
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def dry_run_with(workdir: Path, override: Path, yaml_text: str) -> tuple[subprocess.CompletedProcess, dict[str, int]]:
    """Dry run with config/config.yaml plus ``yaml_text`` written to ``override``; rule → job count."""
    override.write_text(yaml_text)
    result = snakemake(workdir, "-n", "--configfile", "config/config.yaml", str(override))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result, jobs_in_dry_run(result)
