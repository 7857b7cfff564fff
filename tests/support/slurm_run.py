"""The SLURM test run (tests/workflow/test_slurm.py): the cluster, a probe inside every job, and the two runs.

Kept apart from the tests so that tests/conftest.py can start the runs at the session's first test
(tests/support/background_runs.py); the tests then only wait for them. Two test-side mechanisms:

* a probe: a ``sitecustomize.py`` on PYTHONPATH (sbatch exports the environment, the plugin's
  job-step wrapper drops only SLURM_* variables) records, for every Python process that runs inside
  a SLURM job, its argv, SLURM job id and CUDA_VISIBLE_DEVICES. Snakemake runs a rule's ``script:``
  as ``python .snakemake/scripts/tmpXXXX.<script name>.py``, and the per-slide ``shell:`` rules run
  ``python -m wsikt.cli <rule> ...``, so each record names its rule.
* a transient failure: the same probe makes the first ``preprocess_slide`` process exit 3
  (an O_EXCL marker file makes it exactly once); ``retries: 1`` in the profile must resubmit it.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from support.background_runs import BackgroundRun
from support.workflow_helpers import copy_repo

REPO = Path(__file__).resolve().parents[2]
START = REPO / ".ci/slurm/start.sh"
STOP = REPO / ".ci/slurm/stop.sh"
CONFIG = str(Path(__file__).resolve().with_name("slurm_test.yaml"))  # the tiny demo for the CI cluster
FAIL_RULE = "preprocess_slide"
TIMEOUT_S = 1500  # each run, from its start

PROBE = textwrap.dedent(
    """
    # Test probe (tests/workflow/test_slurm.py), imported by every Python process via PYTHONPATH.
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


@pytest.fixture(scope="session")
def slurm_started(slurm_cluster, tmp_path_factory) -> dict:
    """The test config started on SLURM (ci-slurm profile) and, alongside, locally on 2 cores."""
    probe_dir = tmp_path_factory.mktemp("probe")
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe_dir), env.get("PYTHONPATH")]))
    env["WSIKT_CI_PROBE_DIR"] = str(probe_dir)
    env["WSIKT_CI_FAIL_ONCE"] = FAIL_RULE
    for key in [k for k in env if k.startswith("SLURM_")]:  # e.g. when pytest itself runs in a job
        del env[key]
    slurm = BackgroundRun.start(copy_repo(tmp_path_factory.mktemp("slurm") / "repo"),
                                ["--profile", "profiles/ci-slurm", "--configfile", CONFIG], env=env)
    local = BackgroundRun.start(copy_repo(tmp_path_factory.mktemp("local") / "repo"),
                                ["--cores", "2", "--configfile", CONFIG, "--quiet"])
    yield dict(slurm=slurm, local=local, probe=probe_dir)
    slurm.stop()
    local.stop()
