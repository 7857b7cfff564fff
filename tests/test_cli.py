"""`python -m wsikt.cli`: the per-slide rules' commands give what the library calls give, on real slides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsikt.features.extract import extract_features
from wsikt.formats.features_h5 import load_features
from wsikt.preprocess.pipeline import PatchSettings, preprocess_slide

CMU = "CMU-1-Small-Region.svs"
SEG = dict(seg_downsample=16, use_otsu=True, otsu_min=8, area_unit="um2", a_t=20000, a_h=2000)
SETTINGS = dict(target_mpp=0.5, patch_size=128, context_mpp=[2.0], segmentation=SEG)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsikt.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def _preprocess_args(slide: Path, out: Path, settings: dict, **extra: str) -> list[str]:
    args = ["preprocess_slide", "--slide", slide, "--slide-id", "cmu", "--tissue", out / "t.geojson",
            "--patches", out / "p.h5", "--qc-tissue", out / "qt.png", "--qc", out / "q.png",
            "--settings", json.dumps(settings)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


@pytest.fixture(scope="module")
def cli_run(fixture_slides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    res = _cli(*_preprocess_args(fixture_slides / CMU, out, SETTINGS, mpp_override="None", on_error="fail", log=out / "pre.log"))
    assert res.returncode == 0, res.stderr
    res = _cli("extract_features", "--slide", fixture_slides / CMU, "--patches", out / "p.h5", "--out", out / "f.h5",
               "--encoder", "demo", "--settings", json.dumps({"batch_size": 16, "device": "cpu"}), "--threads", 1,
               "--log", out / "feat.log")
    assert res.returncode == 0, res.stderr
    return out


def test_preprocess_command_equals_library_call(cli_run, fixture_slides, tmp_path):
    lib = preprocess_slide(fixture_slides / CMU, "cmu", tmp_path / "t.geojson", tmp_path / "p.h5", tmp_path / "qt.png",
                           tmp_path / "q.png", PatchSettings(**SETTINGS), on_error="fail")
    assert lib.n_patches > 0
    with h5py.File(cli_run / "p.h5") as a, h5py.File(tmp_path / "p.h5") as b:
        np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
        np.testing.assert_array_equal(a["mags/5x/coords"][:], b["mags/5x/coords"][:])  # context_mpp reached it
        assert a.attrs["status"] == b.attrs["status"]
    assert json.loads((cli_run / "t.geojson").read_text()) == json.loads((tmp_path / "t.geojson").read_text())
    assert "cmu: mpp" in (cli_run / "pre.log").read_text()  # the job's log got the library's records


def test_extract_features_command_equals_library_call(cli_run, fixture_slides, tmp_path):
    n = extract_features(fixture_slides / CMU, cli_run / "p.h5", tmp_path / "f.h5", "demo", batch_size=16, device="cpu")
    assert n > 0
    np.testing.assert_allclose(load_features(cli_run / "f.h5"), load_features(tmp_path / "f.h5"), rtol=0, atol=1e-6)
    assert "tiles/s" in (cli_run / "feat.log").read_text()


def test_mpp_override_reaches_preprocessing(fixture_slides, tmp_path):
    res = _cli(*_preprocess_args(fixture_slides / CMU, tmp_path, SETTINGS, mpp_override="0.25", on_error="fail"))
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "p.h5") as f:
        assert float(f.attrs["mpp"]) == pytest.approx(0.25)


def test_bad_input_is_one_clear_line_and_leaves_no_output(fixture_slides, tmp_path):
    res = _cli(*_preprocess_args(fixture_slides / CMU, tmp_path, SETTINGS) [:-1], "[1]")
    assert res.returncode == 2 and "argument --settings: expected a JSON object" in res.stderr
    res = _cli("extract_features", "--slide", fixture_slides / CMU, "--patches", tmp_path / "p.h5", "--out",
               tmp_path / "f.h5", "--encoder", "demo", "--settings", '{"allow_hub": true}')
    assert res.returncode == 1 and "unknown key(s) ['allow_hub']; allowed:" in res.stderr
    res = _cli(*_preprocess_args(fixture_slides / "broken.svs", tmp_path, SETTINGS, on_error="fail", log=tmp_path / "x.log"))
    assert res.returncode != 0
    assert "broken.svs" in (tmp_path / "x.log").read_text()  # the traceback and its cause are in the job's log
    assert not (tmp_path / "p.h5").exists()


def test_a_slide_given_as_nothing_is_recorded_as_failed(tmp_path):
    """The workflow renders a missing sample-sheet path (on_error: skip) as a bare --slide: empty outputs, status failed."""
    args = _preprocess_args(Path("x"), tmp_path, SETTINGS, on_error="skip", log=tmp_path / "x.log")
    args[args.index("--slide") + 1: args.index("--slide") + 2] = []  # `--slide --slide-id cmu`
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    from wsikt.preprocess.pipeline import read_status

    status = read_status(tmp_path / "p.h5")
    assert (status.status, status.n_patches) == ("failed", 0) and status.reason.startswith("no slide file:")
    assert "no slide file" in (tmp_path / "x.log").read_text()
