"""Shared fixtures: the real slide fixtures on disk and a tiny synthetic 40x/20x slide pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.background_runs import BackgroundRun
from support.slurm_run import slurm_cluster, slurm_started  # noqa: F401  (fixtures, used by tests/workflow/test_slurm.py)
from support.transfer_cohort import cohort  # noqa: F401  (session fixture of tests/transfer)
from support.workflow_helpers import copy_repo

FIXTURE_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "slides"

# One tissue, scanned twice: same seed, so the tissue layout (drawn on a coarse µm grid) is identical.
DEMO_SEED = 20240611
DEMO_SIDE_UM = 1024.0
DEMO_TISSUE = dict(nuclei_per_10k_um2=15.0, eosin_rgb=(228, 150, 200), nucleus_um=3.0, n_pieces=2)


@pytest.fixture(scope="session")
def demo_started(tmp_path_factory) -> BackgroundRun:
    """The demo workflow, started on 2 cores in a fresh copy of the repo (tests/workflow/test_workflow.py waits)."""
    run = BackgroundRun.start(copy_repo(tmp_path_factory.mktemp("demo") / "repo"), ["--cores", "2", "--quiet"])
    yield run
    run.stop()


@pytest.fixture(scope="session", autouse=True)
def _long_runs_start_first(request) -> None:
    """Start the demo and SLURM runs at the session's first test when any selected test needs them,
    so their waits (job start-up, the SLURM queue) overlap the unit tests instead of following them."""
    needed = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for fixture in ("demo_started", "slurm_started"):
        if fixture in needed:
            try:
                request.getfixturevalue(fixture)
            except pytest.skip.Exception:
                pass  # e.g. no SLURM cluster: the tests that need the run are skipped with the reason, not this one


@pytest.fixture(scope="session")
def fixture_slides() -> Path:
    """Folder of the real read-only slide fixtures (CMU-1, TCGA, broken files)."""
    if not FIXTURE_SLIDES.is_dir():
        pytest.skip(f"slide fixtures not found at {FIXTURE_SLIDES} (expected <repo>/../shared/fixtures/slides)")
    return FIXTURE_SLIDES


@pytest.fixture(scope="session")
def demo_slide_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same synthetic tissue at 0.25 µm/px (40x, Aperio SVS) and 0.5 µm/px (20x, generic TIFF)."""
    from wsikt.acquire.demo_render import render_slide, write_pyramid_tiff

    out = tmp_path_factory.mktemp("demo_pair")
    paths = []
    for mpp, aperio, name in ((0.25, True, "pair_40x.svs"), (0.5, False, "pair_20x.tiff")):
        rgb = render_slide(
            np.random.default_rng(DEMO_SEED), mpp, DEMO_SIDE_UM, DEMO_TISSUE["nuclei_per_10k_um2"],
            DEMO_TISSUE["eosin_rgb"], DEMO_TISSUE["nucleus_um"], DEMO_TISSUE["n_pieces"],
        )
        path = out / name
        write_pyramid_tiff(path, rgb, mpp, aperio=aperio)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def one_torch_thread():
    """Torch on 1 thread (restored afterwards) for tiny models: beside the background demo run, more
    threads only oversubscribe the 2 cores (measured: 2× slower test_experts/test_models/test_survival)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
