"""The workflow on a real (single-node) SLURM cluster: profiles/ci-slurm + tests/support/slurm_test.yaml.

The cluster comes from .ci/slurm/start.sh (slurmctld + slurmd + munged on localhost, one fake GPU,
no accounting). The test needs no change to the library or the rules; the run, its probe inside
every job and its injected transient failure are in tests/support/slurm_run.py, started at the session's
first test (tests/conftest.py). The outputs are then compared with a local ``--cores 2`` run of
the same config.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.slurm_run import CONFIG, FAIL_RULE, TIMEOUT_S

pytestmark = pytest.mark.slurm

GPU_RULES = ("train_expert", "embed_cohort", "train_roupkt")  # tests/support/slurm_test.yaml: experts.gpus 1

if shutil.which("sbatch") is None:
    pytest.skip(
        "sbatch not found: no SLURM client here (run `bash .ci/slurm/start.sh` as root to install "
        "and start a single-node cluster)",
        allow_module_level=True,
    )
pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")


def _probe_records(probe_dir) -> list[dict]:
    path = probe_dir / "probe.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rule_of(record: dict) -> str | None:
    return record.get("rule")


@pytest.fixture(scope="module")
def runs(slurm_started) -> dict:
    """Both runs finished: the SLURM one's output and exit code, and both working directories."""
    slurm_rc, slurm_out, wall = slurm_started["slurm"].wait(TIMEOUT_S)
    local_rc, local_out, _ = slurm_started["local"].wait(TIMEOUT_S)
    print(f"SLURM run wall time (local run and the rest of the suite alongside): {wall:.0f} s")
    assert local_rc == 0, local_out[-4000:]
    return dict(slurm=slurm_started["slurm"].workdir, local=slurm_started["local"].workdir,
                probe=slurm_started["probe"], out=slurm_out, rc=slurm_rc, wall=wall)


def test_slurm_run_succeeds(runs):
    assert runs["rc"] == 0, runs["out"][-8000:]
    assert (runs["slurm"] / "results/report/index.html").stat().st_size > 0


def test_jobs_went_through_sbatch(runs):
    ids = set(re.findall(r"has been submitted with SLURM jobid (\d+)", runs["out"]))
    assert ids, runs["out"][-4000:]
    logs = list((runs["slurm"] / ".snakemake/slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= ids, (sorted(ids), sorted(p.name for p in logs))
    # The probe saw each of those jobs from inside (SLURM_JOB_ID in the job's environment).
    assert {r["job"] for r in _probe_records(runs["probe"])} >= ids
    # preprocess_slide is grouped: fewer sbatch calls than slides (6 per group in ci-slurm).
    group_logs = list((runs["slurm"] / ".snakemake/slurm_logs").glob("group_preprocess*/**/*.log"))
    n_slides = len(list((runs["slurm"] / "results/patches").glob("*.h5")))
    assert group_logs and len(group_logs) < n_slides, (len(group_logs), n_slides)


def test_gpu_rules_see_a_gpu(runs):
    by_rule: dict[str, set] = {}
    for rec in _probe_records(runs["probe"]):
        rule = _rule_of(rec)
        if rule:
            by_rule.setdefault(rule, set()).add(rec["cuda"])
    for rule in GPU_RULES:
        assert by_rule.get(rule) == {"0"}, (rule, by_rule)
    # ... and CPU rules get none.
    assert by_rule.get("preprocess_slide") == {None}, by_rule
    assert by_rule.get("extract_features") == {None}, by_rule  # features.gpus 0 in the test config


def test_features_are_embedded_in_one_sbatch_job_per_batch(runs):
    """Each feature batch (content-defined, ~slides_per_job slides) is one SLURM job that builds the encoder once."""
    import yaml

    from wsikt.features.batches import plan_batches

    workdir = runs["slurm"]
    sheet = pd.read_csv(workdir / "resources/demo/samples.tsv", sep="\t")
    spj = yaml.safe_load(Path(CONFIG).read_text())["features"]["slides_per_job"]
    batches = plan_batches(sheet.groupby("cancer")["slide_id"].apply(list).to_dict(), spj)
    jobs = {r["job"] for r in _probe_records(runs["probe"]) if _rule_of(r) == "extract_features"}
    assert len(jobs) == len(batches) <= -(-len(sheet) // spj) + sheet["cancer"].nunique(), (jobs, batches)
    assert len(jobs) < len(sheet)
    logs = {p.stem: p.read_text() for p in (workdir / "logs/features/demo").glob("*.log")}
    assert set(logs) == set(batches), (sorted(logs), sorted(batches))
    for name, text in logs.items():
        assert text.count("built once") == 1, (name, text[-2000:])
        assert f"built once for {len(batches[name])} slides" in text, text[-2000:]
        for slide in batches[name]:
            assert (workdir / f"results/features/demo/{slide}.h5").exists()


def test_transient_failure_is_retried(runs):
    marker = runs["probe"] / f"failed-once.{FAIL_RULE}"
    assert marker.exists(), "the injected failure did not fire"
    failed_job = json.loads(marker.read_text())["job"]
    out = runs["out"]
    assert "Trying to restart job" in out, out[-6000:]
    assert runs["rc"] == 0
    # The failed SLURM job is not among the jobs that produced the final outputs' later attempt:
    later = {r["job"] for r in _probe_records(runs["probe"]) if _rule_of(r) == FAIL_RULE}
    assert later - {failed_job}, later


def test_outputs_equal_local_run(runs):
    import h5py

    s, loc = runs["slurm"], runs["local"]
    splits = sorted(p.relative_to(loc) for p in (loc / "results/splits").rglob("*.tsv"))
    assert splits
    for rel in splits:
        pd.testing.assert_frame_equal(pd.read_csv(s / rel, sep="\t"), pd.read_csv(loc / rel, sep="\t"))

    patches = sorted(p.relative_to(loc) for p in (loc / "results/patches").glob("*.h5"))
    assert patches and len(patches) == len(list((s / "results/patches").glob("*.h5")))
    for rel in patches:
        with h5py.File(s / rel) as a, h5py.File(loc / rel) as b:
            np.testing.assert_array_equal(a["coords"][:], b["coords"][:])

    feats = sorted(p.relative_to(loc) for p in (loc / "results/features").rglob("*.h5"))
    assert feats
    for rel in feats:
        with h5py.File(s / rel) as a, h5py.File(loc / rel) as b:
            np.testing.assert_allclose(a["features"][:], b["features"][:], rtol=0, atol=1e-6)

    metrics = sorted(p.relative_to(loc) for p in (loc / "results/experts").rglob("metrics.json"))
    assert metrics
    for rel in metrics:
        a, b = json.loads((s / rel).read_text()), json.loads((loc / rel).read_text())
        keys = [k for k, v in b.items() if "c_index" in k.lower() and isinstance(v, (int, float))]
        assert keys, b
        for k in keys:
            assert a[k] == pytest.approx(b[k], abs=1e-6), (rel, k)
