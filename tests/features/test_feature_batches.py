"""Batch feature extraction on real slides (one encoder build, per-slide h5s, resume journal after a
failure or a kill), content-defined batch planning, and the one-process-per-GPU claim.

Byte-identical features in a batch, alone and after a resume need forwards that never span two
slides: torch's CPU kernels give other last bits for a forward of one row than for the same row
inside a larger one (measured with the demo encoder: up to 4e-8 in 4 of its 64 columns). The TCGA
slide has an odd number of patches (31 with batch 6: a last forward of one row) to hold us to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_features import CMU, write_patch_h5

import wsikt.features.extract as features
from wsikt.core.device import gpu_lock_dir
from wsikt.features.batches import is_cut, plan_batches
from wsikt.features.extract import (
    RESUME_DIR,
    ExtractionError,
    SlideJob,
    extract_features,
    extract_slides,
    journal_path,
    resume_key,
)
from wsikt.formats.patches_h5 import read_patch_file

TCGA = "TCGA-CR-7395-01A-01-TS1.svs"  # no mpp metadata: its patch h5 records target_mpp
SMALL = "small.svs"  # 16 x 16 px
SETTINGS = dict(device="cpu", num_workers=0)
ROWS = dict(small=2, tcga=31, cmu=100, cmu20=80)  # patches over all magnifications (tcga odd: see above)


# ------------------------------------------------------------------------------------------ helpers


def _single_level_h5(out: Path, coords: list[tuple[int, int]], read_size: int) -> Path:
    """A one-magnification patch h5 (wsikt attrs: read at level 0, resized to 256 px at 0.5 µm/px)."""
    with h5py.File(out, "w") as f:
        d = f.create_dataset("coords", data=np.array(coords, np.int64).reshape(-1, 2))
        d.attrs.update(read_level=0, read_size=read_size, patch_size=read_size, target_patch_size=256, target_mpp=0.5)
    return out


def _datasets(path: Path) -> dict[str, tuple[str, tuple, bytes, dict]]:
    """Every dataset of an h5 (by path, hard links included): dtype, shape, bytes and attrs."""
    found = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        for key in group:
            obj = group[key]
            if isinstance(obj, h5py.Group):
                walk(obj, f"{prefix}{key}/")
            else:
                data = obj[()]
                found[prefix + key] = (str(obj.dtype), obj.shape, np.asarray(data).tobytes(),
                                       {k: np.asarray(v).tolist() for k, v in obj.attrs.items()})

    with h5py.File(path, "r") as f:
        walk(f, "")
    return found


def _root_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v).tolist() for k, v in f.attrs.items()}


def _assert_same_h5(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db), (a, b)
    for key in da:
        assert da[key] == db[key], f"{a.name}: dataset '{key}' differs"
    assert _root_attrs(a) == _root_attrs(b)


def _complete(job: SlideJob) -> bool:
    """The output opens and has a row (and no NaN) for every patch of every magnification."""
    with h5py.File(job.patches, "r") as p, h5py.File(job.out, "r") as f:
        mags = [f"mags/{m}/" for m in p["mags"]] if "mags" in p else [""]
        for m in mags:
            n = len(p[f"{m}coords"])
            if f[f"{m}features"].shape != (n, 64) or f[f"{m}flagged"].shape != (n,):
                return False
            if not np.isfinite(f[f"{m}features"][:]).all():
                return False
    return True


def _key(job: SlideJob) -> str:
    return resume_key(job, "demo", None, "fp32", "cpu")  # as extract_slides keys a CPU run


def _jobs(names: list[str], patches: dict[str, tuple[Path, Path]], out_dir: Path) -> list[SlideJob]:
    return [SlideJob.of(*patches[n], out_dir / f"{n}.h5") for n in names]


class _Counting(torch.nn.Module):
    """The real encoder, counting the rows it embeds."""

    def __init__(self, inner: torch.nn.Module, probe: "_Probe") -> None:
        super().__init__()
        self.inner, self.probe = inner, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probe.rows += len(x)
        self.probe.forwards.append(len(x))
        return self.inner(x)


class _Probe:
    builds = rows = 0

    def __init__(self) -> None:
        self.forwards: list[int] = []

    def reset(self) -> None:
        self.builds = self.rows = 0
        self.forwards = []


@pytest.fixture
def probe(monkeypatch) -> _Probe:
    """``wsikt.features.extract.build_encoder`` wrapped: how often it is built and how many rows its model sees."""
    real = features.build_encoder
    p = _Probe()

    def counting_build(*args, **kwargs):
        p.builds += 1
        model, spec, whash = real(*args, **kwargs)
        return _Counting(model, p), spec, whash

    monkeypatch.setattr(features, "build_encoder", counting_build)
    return p


@pytest.fixture(scope="module")
def patches(fixture_slides, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Slide name → (slide, patch h5): a 2-magnification CMU-1, its 20x grid alone, 31 TCGA tiles and small.svs."""
    d = tmp_path_factory.mktemp("batch_patches")
    cmu = fixture_slides / CMU
    tcga_tiles = [(x, y) for y in range(0, 3567 - 256, 256) for x in range(0, 4443 - 256, 256)][:ROWS["tcga"]]
    out = dict(
        small=(fixture_slides / SMALL, _single_level_h5(d / "small.h5", [(0, 0), (8, 8)], read_size=8)),
        tcga=(fixture_slides / TCGA, _single_level_h5(d / "tcga.h5", tcga_tiles, read_size=256)),
        cmu=(cmu, write_patch_h5(cmu, d / "cmu.h5", with_mags=True)),
        cmu20=(cmu, write_patch_h5(cmu, d / "cmu20.h5", with_mags=False)),
    )
    for name, (_, h5) in out.items():
        pf = read_patch_file(h5)
        assert pf.n_patches == ROWS[name], name
    return out


@pytest.fixture(scope="module")
def clean(patches, tmp_path_factory) -> dict[str, Path]:
    """Every slide's features from one uninterrupted batch: the reference of the resume tests."""
    out = tmp_path_factory.mktemp("batch_clean")
    jobs = _jobs(list(ROWS), patches, out)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    finally:
        torch.set_num_threads(torch_threads)
    assert not (out / RESUME_DIR).exists()
    return {j.name: j.out for j in jobs}


# ------------------------------------------------------------------------------ one batch of slides


def test_batch_equals_slides_alone_with_one_encoder_build(patches, tmp_path, probe, one_torch_thread):
    names = ["cmu", "tcga", "small"]
    jobs = _jobs(names, patches, tmp_path / "batch")
    # Workers read the slides of the stream (several open handles, slides switching within a chunk).
    counts = extract_slides(jobs, "demo", batch_size=6, device="cpu", num_workers=2)
    assert probe.builds == 1
    assert probe.rows == sum(ROWS[n] for n in names) and max(probe.forwards) == 6
    assert counts == [80, 31, 2]  # primary magnification only
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["cmu.h5", "small.h5", "tcga.h5"]  # no journal

    probe.reset()
    for job in jobs:
        alone = tmp_path / "alone" / job.out.name
        n = extract_features(job.slide, job.patches, alone, "demo", batch_size=6, **SETTINGS)
        assert n == counts[names.index(job.name)]
    assert probe.builds == 3 and min(probe.forwards) == 1  # tcga alone ends in a one-row forward, as in the batch
    for job in jobs:
        assert _complete(job)
        alone = tmp_path / "alone" / job.out.name
        _assert_same_h5(job.out, alone)
    # The datasets compared include every magnification and the parent links.
    keys = set(_datasets(jobs[0].out))
    assert {"features", "flagged", "coords", "mags/20x/features", "mags/10x/features", "mags/10x/coords",
            "mags/10x/flagged", "mags/20x/parent_10x"} <= keys
    # Slides are not mixed up: each slide's features differ from the others'.
    with h5py.File(jobs[1].out) as a, h5py.File(jobs[0].out) as b:
        assert not np.allclose(a["features"][:2], b["features"][:2])


def test_unreadable_tiles_flag_their_slide_and_not_its_batch_mates(patches, fixture_slides, tmp_path, one_torch_thread):
    """unreadable.svs opens but every tile read fails: its tiles are flagged, the batch completes, and its
    batch-mates' features equal a batch without it (forwards never span two slides)."""
    bad = (fixture_slides / "unreadable.svs", _single_level_h5(tmp_path / "bad.h5", [(0, 0), (8, 8)], read_size=8))
    jobs = [SlideJob.of(*patches["cmu"], tmp_path / "with" / "cmu.h5"), SlideJob.of(*bad, tmp_path / "with" / "bad.h5"),
            SlideJob.of(*patches["tcga"], tmp_path / "with" / "tcga.h5")]
    assert extract_slides(jobs, "demo", batch_size=6, **SETTINGS) == [80, 2, 31]
    with h5py.File(tmp_path / "with" / "bad.h5") as f:
        assert f["flagged"][:].all() and np.isfinite(f["features"][:]).all()
    without = [SlideJob.of(*patches[n], tmp_path / "without" / f"{n}.h5") for n in ("cmu", "tcga")]
    extract_slides(without, "demo", batch_size=6, **SETTINGS)
    for name in ("cmu", "tcga"):
        with h5py.File(tmp_path / "with" / f"{name}.h5") as a, h5py.File(tmp_path / "without" / f"{name}.h5") as b:
            assert a["features"][:].tobytes() == b["features"][:].tobytes() and not a["flagged"][:].any()


def test_unreadable_patch_h5_fails_only_its_slide_and_rerun_embeds_only_it(
        patches, clean, tmp_path, probe, caplog, one_torch_thread):
    good = dict(patches)
    bad_h5 = tmp_path / "cmu20.h5"
    bad_h5.write_bytes(np.random.default_rng(0).bytes(4096))  # garbage: not an HDF5 file
    good["cmu20"] = (patches["cmu20"][0], bad_h5)
    out = tmp_path / "features"
    jobs = _jobs(["tcga", "cmu20", "small"], good, out)

    with pytest.raises(ExtractionError) as exc:
        extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    assert "cmu20" in str(exc.value) and "1 of 3 slides" in str(exc.value)
    assert "tcga" not in str(exc.value) and "small" not in str(exc.value)
    assert probe.builds == 1 and probe.rows == ROWS["tcga"] + ROWS["small"]
    assert not jobs[1].out.exists()
    for job in (jobs[0], jobs[2]):
        assert _complete(job)
        _assert_same_h5(job.out, clean[job.name])
        entry = journal_path(job.out, _key(job))
        assert entry.exists() and os.path.samefile(entry, job.out)  # journaled: a hard link of the output
    assert not list(out.glob(".*.partial"))

    # The patch h5 is rewritten and Snakemake removes the failed job's outputs before rerunning it.
    shutil.copyfile(patches["cmu20"][1], bad_h5)
    for job in jobs:
        job.out.unlink(missing_ok=True)
    probe.reset()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wsikt.features.extract"):
        counts = extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    assert counts == [31, 80, 2]
    assert probe.rows == ROWS["cmu20"]  # only the slide that failed is embedded again
    assert "2 of 3 slides were finished by an interrupted run" in caplog.text
    for job in jobs:
        assert _complete(job)
        _assert_same_h5(job.out, clean[job.name])
    assert not (out / RESUME_DIR).exists()
    assert sorted(p.name for p in out.iterdir()) == ["cmu20.h5", "small.h5", "tcga.h5"]


def test_journal_entry_of_changed_inputs_is_not_reused(patches, tmp_path, probe, caplog, one_torch_thread):
    small_h5, tcga_h5 = tmp_path / "small.h5", tmp_path / "tcga.h5"
    shutil.copyfile(patches["small"][1], small_h5)
    tcga_h5.write_bytes(b"not an hdf5 file" * 64)
    out = tmp_path / "features"
    jobs = [SlideJob.of(patches["small"][0], small_h5, out / "small.h5"),
            SlideJob.of(patches["tcga"][0], tcga_h5, out / "tcga.h5")]
    with pytest.raises(ExtractionError, match="tcga"):
        extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    old_entry = journal_path(jobs[0].out, _key(jobs[0]))
    assert old_entry.exists()

    # Before the rerun the slide is patched again (other tiles): its journaled features are stale.
    _single_level_h5(small_h5, [(4, 4), (8, 0)], read_size=8)
    shutil.copyfile(patches["tcga"][1], tcga_h5)
    for job in jobs:
        job.out.unlink(missing_ok=True)
    probe.reset()
    with caplog.at_level(logging.INFO, logger="wsikt.features.extract"):
        extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    assert probe.rows == 2 + ROWS["tcga"]  # both embedded: nothing taken from the journal
    assert "finished by an interrupted run" not in caplog.text
    fresh = tmp_path / "fresh.h5"
    extract_features(jobs[0].slide, small_h5, fresh, "demo", batch_size=4, **SETTINGS)
    _assert_same_h5(jobs[0].out, fresh)
    with h5py.File(jobs[0].out) as f:
        assert f["coords"][:].tolist() == [[4, 4], [8, 0]]
    assert not old_entry.exists() and not (out / RESUME_DIR).exists()


_KILLED_BATCH = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import wsikt.features.encoders as e
orig = e.DemoEncoder.forward
e.DemoEncoder.forward = lambda self, x: (time.sleep(0.15), orig(self, x))[1]
from wsikt.features.extract import SlideJob, extract_slides
args = sys.argv[1:]
jobs = [SlideJob.of(*args[i:i + 3]) for i in range(0, len(args), 3)]
extract_slides(jobs, 'demo', batch_size=4, device='cpu', num_workers=0)
"""


def test_kill_mid_batch_then_rerun_embeds_only_unfinished_slides(
        patches, clean, tmp_path, probe, caplog, one_torch_thread):
    out = tmp_path / "features"
    out.mkdir()
    names = ["small", "tcga", "cmu", "cmu20"]  # the first slide ends in the stream's first forward
    jobs = _jobs(names, patches, out)
    argv = [str(p) for j in jobs for p in (j.slide, j.patches, j.out)]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BATCH, *argv])
    try:
        deadline = time.monotonic() + 120
        while not any(j.out.exists() for j in jobs):
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "no slide finished within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    written = [j for j in jobs if j.out.exists()]
    journaled = [j for j in jobs if journal_path(j.out, _key(j)).exists()]
    assert written and {j.name for j in written} <= {j.name for j in journaled}  # journaled before renamed
    assert len(journaled) < len(jobs), "every slide finished before the kill: nothing left to resume"
    for job in written:  # an output exists only when it is complete
        assert _complete(job), job.name
        _assert_same_h5(job.out, clean[job.name])

    for job in written:  # Snakemake removes the outputs of a job that did not finish
        job.out.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wsikt.features.extract"):
        counts = extract_slides(jobs, "demo", batch_size=4, **SETTINGS)
    assert counts == [2, 31, 80, 80]
    unfinished = [j for j in jobs if j not in journaled]
    assert probe.builds == 1 and probe.rows == sum(ROWS[j.name] for j in unfinished)
    assert f"{len(journaled)} of {len(jobs)} slides were finished by an interrupted run" in caplog.text
    for job in jobs:
        assert _complete(job)
        _assert_same_h5(job.out, clean[job.name])
    assert not (out / RESUME_DIR).exists()  # the journal is cleared, and the stale partials removed
    assert sorted(p.name for p in out.iterdir()) == sorted(j.out.name for j in jobs)


# ----------------------------------------------------------------------------------------- planning


def _members(batches: dict[str, list[str]]) -> set[frozenset[str]]:
    return {frozenset(b) for b in batches.values()}


SLIDES = [f"TCGA-{i:04d}" for i in range(500)]


def test_plan_batches_deterministic_and_complete():
    plan = plan_batches({"BRCA": SLIDES, "LUAD": SLIDES[:40]}, 8)
    assert plan == plan_batches({"LUAD": list(reversed(SLIDES[:40])), "BRCA": SLIDES[::-1]}, 8)  # order-free
    for group, slides in (("BRCA", SLIDES), ("LUAD", SLIDES[:40])):
        mine = [s for name, b in plan.items() if name.startswith(f"{group}_") for s in b]
        assert sorted(mine) == sorted(slides) and len(mine) == len(set(mine))  # each slide exactly once
        names = [name for name in plan if name.startswith(f"{group}_")]
        assert all(re.fullmatch(rf"{group}_[0-9a-f]{{8}}", n) for n in names) and len(set(names)) == len(names)
    for batch in plan.values():
        assert batch == sorted(batch) and batch
        # A batch ends exactly after its cut slides: only its last slide may be a cut.
        assert not any(is_cut(s, 8) for s in batch[:-1])
    # The same cut points in another process (another hash seed): blake2b, not Python's hash().
    script = ("import json, sys\nfrom wsikt.features.batches import is_cut\n"
              "print(json.dumps([is_cut(s, 8) for s in sys.argv[1:]]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    res = subprocess.run([sys.executable, "-c", script, *SLIDES], capture_output=True, text=True, env=env, check=True)
    assert json.loads(res.stdout) == [is_cut(s, 8) for s in SLIDES]


def _expected_after(old: dict[str, list[str]], victim: str | None = None, added: str | None = None,
                    n: int = 8) -> set[frozenset[str]]:
    """What the batches should be after removing or adding one slide, derived from the old batches alone:
    only the batch the slide falls in changes (split in two by an added cut, merged with the next by a
    removed cut); every other batch keeps its slides."""
    ordered = [list(b) for b in old.values()]
    if victim is not None:
        k = next(i for i, b in enumerate(ordered) if victim in b)
        if is_cut(victim, n) and k + 1 < len(ordered):
            ordered[k:k + 2] = [ordered[k] + ordered[k + 1]]
        ordered[k].remove(victim)
    if added is not None:
        k = next((i for i, b in enumerate(ordered) if added < b[-1]), len(ordered) - 1)
        if added > ordered[k][-1]:  # after the last slide: ends the last batch, or opens one when that ended
            if is_cut(ordered[k][-1], n):
                ordered.append([])
            k = len(ordered) - 1
        merged = sorted(ordered[k] + [added])
        cut = merged.index(added) + 1
        ordered[k:k + 1] = [merged[:cut], merged[cut:]] if is_cut(added, n) else [merged]
    return {frozenset(b) for b in ordered if b}


@pytest.mark.parametrize("cut", [False, True])
def test_adding_a_slide_changes_only_its_batch(cut):
    old = plan_batches({"BRCA": SLIDES}, 8)
    new_id = next(f"TCGA-0250-{k}" for k in range(10_000) if is_cut(f"TCGA-0250-{k}", 8) == cut)
    new = plan_batches({"BRCA": SLIDES + [new_id]}, 8)
    gone, added = _members(old) - _members(new), _members(new) - _members(old)
    assert len(gone) == 1  # one batch changes; every other keeps its slides
    (home,) = gone
    if not cut:  # the batch it falls in gains it
        assert added == {home | {new_id}}
    else:  # it ends its batch: that batch splits in two, together its slides and the new one
        first, second = sorted(added, key=min)
        assert len(added) == 2 and max(first) == new_id and first | second == home | {new_id}
    assert len(new) == len(old) + cut
    assert _members(new) == _expected_after(old, added=new_id)
    # Names follow a batch's first slide: every batch whose slides did not change keeps its name (and rule).
    unchanged = {name for name, b in old.items() if frozenset(b) not in gone}
    assert all(old[name] == new[name] for name in unchanged)


def test_removing_a_slide_changes_only_its_batch():
    old = plan_batches({"BRCA": SLIDES}, 8)
    seen = set()
    for victim in SLIDES[100:400:7] + [SLIDES[0], SLIDES[-1]]:
        new = plan_batches({"BRCA": [s for s in SLIDES if s != victim]}, 8)
        gone, added = _members(old) - _members(new), _members(new) - _members(old)
        assert len(gone) <= 2 and len(added) <= 1  # its batch (merged with the next one when it was a cut)
        assert {s for b in gone for s in b} - {victim} == {s for b in added for s in b}
        assert _members(new) == _expected_after(old, victim=victim)
        seen.add(is_cut(victim, 8))
    assert seen == {False, True}  # both cases were exercised


def test_expected_after_agrees_with_plan_for_many_edits():
    """The reference above against plan_batches for slides added or removed anywhere, cuts or not."""
    old = plan_batches({"BRCA": SLIDES}, 8)
    for i in range(0, 500, 13):
        for extra in (f"TCGA-{i:04d}-x", f"TCGA-{i:04d}-y", "AAAA", "ZZZZ"):
            assert _members(plan_batches({"BRCA": SLIDES + [extra]}, 8)) == _expected_after(old, added=extra)
        victim = SLIDES[i]
        assert _members(plan_batches({"BRCA": [s for s in SLIDES if s != victim]}, 8)) == \
            _expected_after(old, victim=victim)


def test_batch_sizes():
    assert [len(b) for b in plan_batches({"BRCA": SLIDES[:50]}, 1).values()] == [1] * 50
    assert plan_batches({"BRCA": SLIDES[:50]}, 0) == plan_batches({"BRCA": SLIDES[:50]}, 1)
    with pytest.raises(ValueError, match="whole number"):
        plan_batches({"BRCA": SLIDES}, 2.5)
    many = [f"TCGA-{i:05d}-01Z" for i in range(5000)]
    for n in (4, 10, 25):
        sizes = [len(b) for b in plan_batches({"BRCA": many}, n).values()]
        assert sum(sizes) == len(many)
        assert 0.7 * n <= np.mean(sizes) <= 1.3 * n, (n, np.mean(sizes))
    assert plan_batches({"BRCA": []}, 8) == {}


def test_group_names_become_identifiers():
    plan = plan_batches({"TCGA-BRCA": SLIDES[:30], "lung adeno.(LUAD)": SLIDES[30:60]}, 4)
    assert {name.rsplit("_", 1)[0] for name in plan} == {"TCGA_BRCA", "lung_adeno__LUAD_"}
    for name in plan:
        assert name.isidentifier() and f"extract_features_{name}".isidentifier()
    for pair in (("TCGA-BRCA", "TCGA_BRCA"), ("TCGA.BRCA", "TCGA-BRCA")):
        with pytest.raises(ValueError, match="differ only in punctuation"):
            plan_batches({pair[0]: SLIDES[:5], pair[1]: SLIDES[5:10]}, 4)


# --------------------------------------------------------------------------------------- GPU claim

_CLAIMER = """
import sys
from pathlib import Path
from wsikt.core.device import claim_gpu
sys.stdin.readline()  # claim when told
print(claim_gpu(2, Path(sys.argv[1])), flush=True)
sys.stdin.readline()  # hold until told (or stdin closes)
"""


def _read_line(proc: subprocess.Popen, timeout: float = 60) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no answer from pid {proc.pid} within {timeout} s")
        return proc.stdout.readline().strip()
    finally:
        sel.close()


def test_claim_gpu_one_process_per_gpu(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    # Three processes import torch at once; then claim one after another.
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(locks)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        def claim(p: subprocess.Popen) -> int:
            p.stdin.write("claim\n")
            p.stdin.flush()
            return int(_read_line(p))

        first, second = claim(procs[0]), claim(procs[1])
        assert {first, second} == {0, 1}  # both alive: different GPUs
        procs[0].stdin.close()  # the first exits, its lock is released with it
        assert procs[0].wait(timeout=30) == 0
        assert claim(procs[2]) == first  # the freed GPU
        assert procs[1].poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(p.name for p in locks.iterdir()) == ["gpu0.lock", "gpu1.lock"]


def test_gpu_lock_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = gpu_lock_dir()
    assert path == tmp_path / "wsikt" and path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)  # an existing directory others can read is made private again
    assert stat.S_IMODE(gpu_lock_dir().stat().st_mode) == 0o700
