"""The house rules of src/wsikt: stage packages, one-way dependencies (import-linter), small modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "wsikt"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True)


def test_stage_packages_and_small_modules():
    entries = sorted(p.name for p in SRC.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 16, entries  # 14 stage packages (stats and attention: issue 21), __init__, cli
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_layers_contract_holds_and_catches_an_upward_import(tmp_path):
    ok = _lint_imports(REPO / "src")
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "KEPT" in ok.stdout and "BROKEN" not in ok.stdout
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    io = copy / "wsikt" / "core" / "io.py"
    io.write_text(io.read_text() + "\nimport wsikt.training.fit  # noqa: E402,F401  (planted: core must not import training)\n")
    bad = _lint_imports(copy)
    assert bad.returncode != 0 and "wsikt.core is not allowed to import wsikt.training" in bad.stdout, bad.stdout[-3000:]
