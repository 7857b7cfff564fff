"""The workflow on a real (single-node) SLURM cluster: profiles/ci-slurm + config/slurm_test.yaml.

The cluster comes from .ci/slurm/start.sh (slurmctld + slurmd + munged on localhost, one fake GPU,
no accounting). The test needs no change to the library or the rules; two test-side mechanisms:

* a probe: a ``sitecustomize.py`` on PYTHONPATH (sbatch exports the environment, the plugin's
  job-step wrapper drops only SLURM_* variables) records, for every Python process that runs inside
  a SLURM job, its argv, SLURM job id and CUDA_VISIBLE_DEVICES. Snakemake runs a rule's ``script:``
  as ``python .snakemake/scripts/tmpXXXX.<script name>.py``, and the per-slide ``shell:`` rules run
  ``python -m wsikt.cli <rule> ...``, so each record names its rule.
* a transient failure: the same probe makes the first ``preprocess_slide`` process exit 3
  (an O_EXCL marker file makes it exactly once); ``retries: 1`` in the profile must resubmit it.

The outputs are then compared with a local ``--cores 2`` run of the same config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_helpers import copy_repo

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
START = REPO / ".ci/slurm/start.sh"
STOP = REPO / ".ci/slurm/stop.sh"
CONFIG = "config/slurm_test.yaml"
GPU_RULES = ("train_expert", "embed_cohort", "train_roupkt")  # config/slurm_test.yaml: experts.gpus 1
FAIL_RULE = "preprocess_slide"

if shutil.which("sbatch") is None:
    pytest.skip(
        "sbatch not found: no SLURM client here (run `bash .ci/slurm/start.sh` as root to install "
        "and start a single-node cluster)",
        allow_module_level=True,
    )
pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")

PROBE = textwrap.dedent(
    """
    # Test probe (tests/test_slurm.py), imported by every Python process via PYTHONPATH.
    import json, os, re, sys
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("WSIKT_CI_PROBE_DIR"):
        _d = os.environ["WSIKT_CI_PROBE_DIR"]
        _argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        _m = re.match(r"tmp[^.]*\\.(\\w+)\\.py$", _argv0)  # script: rules
        _rule = _m.group(1) if _m else None
        if _argv0 == "-m" and len(sys.argv) > 1 and re.fullmatch(r"[a-z_]+", sys.argv[1]):
            _rule = sys.argv[1]  # `python -m wsikt.cli <rule>`: at this point argv[0] is still '-m'
        _rec = dict(pid=os.getpid(), argv0=_argv0, argv=sys.argv[:40], rule=_rule,
                    job=os.environ.get("SLURM_JOB_ID"), step=os.environ.get("SLURM_STEP_ID"),
                    cuda=os.environ.get("CUDA_VISIBLE_DEVICES"))
        with open(os.path.join(_d, "probe.jsonl"), "a") as _f:
            _f.write(json.dumps(_rec) + "\\n")
        _fail = os.environ.get("WSIKT_CI_FAIL_ONCE")
        if _fail and _rule == _fail:
            try:
                _fd = os.open(os.path.join(_d, "failed-once." + _fail), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(_fd, json.dumps(_rec).encode()); os.close(_fd)
                sys.stderr.write("wsikt CI probe: injected transient failure in " + _fail + "\\n")
                sys.stderr.flush()
                os._exit(3)
    """
)


def _snakemake_exe() -> str:
    return str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local single-node cluster, started for this session and stopped after it."""
    if os.geteuid() != 0:
        ok = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
        if ok.returncode != 0 or not ok.stdout.strip():
            pytest.skip("not root and no running SLURM cluster: start one with `sudo bash .ci/slurm/start.sh`")
        yield
        return
    started = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, f".ci/slurm/start.sh failed:\n{started.stdout}\n{started.stderr}"
    yield
    # Stop only a cluster this session started: one started by .ci/run stays up for the later
    # tests (with slurm installed but no slurmctld, every snakemake start waits ~9 s: the SLURM
    # plugin runs `scontrol show config` at import).
    if "already up" not in started.stderr:
        subprocess.run(["bash", str(STOP)], capture_output=True, text=True, timeout=120)


def _probe_records(probe_dir: Path) -> list[dict]:
    path = probe_dir / "probe.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rule_of(record: dict) -> str | None:
    return record.get("rule")


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The test config run on SLURM (ci-slurm profile) and, concurrently, locally on 2 cores."""
    slurm_dir = copy_repo(tmp_path_factory.mktemp("slurm") / "repo")
    local_dir = copy_repo(tmp_path_factory.mktemp("local") / "repo")
    probe_dir = tmp_path_factory.mktemp("probe")
    (probe_dir / "sitecustomize.py").write_text(PROBE)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe_dir), env.get("PYTHONPATH")]))
    env["WSIKT_CI_PROBE_DIR"] = str(probe_dir)
    env["WSIKT_CI_FAIL_ONCE"] = FAIL_RULE
    for key in [k for k in env if k.startswith("SLURM_")]:  # e.g. when pytest itself runs in a job
        del env[key]

    t0 = time.monotonic()
    slurm = subprocess.Popen(
        [_snakemake_exe(), "--profile", "profiles/ci-slurm", "--configfile", CONFIG],
        cwd=slurm_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    local = subprocess.run(
        [_snakemake_exe(), "--cores", "2", "--configfile", CONFIG, "--quiet"],
        cwd=local_dir, capture_output=True, text=True, timeout=1200,
    )
    try:
        slurm_out, _ = slurm.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        slurm.kill()
        slurm_out, _ = slurm.communicate()
        pytest.fail(f"SLURM run timed out:\n{slurm_out[-6000:]}")
    wall = time.monotonic() - t0
    print(f"SLURM run wall time (local run alongside): {wall:.0f} s")
    assert local.returncode == 0, local.stderr[-4000:]
    return dict(slurm=slurm_dir, local=local_dir, probe=probe_dir, out=slurm_out, rc=slurm.returncode, wall=wall)


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
