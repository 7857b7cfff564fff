"""Feature extraction on a real slide: coords kept exactly, all magnifications, corrupt tiles flagged, kill-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch

from wsikt.features import encoders
from wsikt.features.encoders import EncoderSpec, build_encoder, get_encoder_spec, weights_hash
from wsikt.features.extract import ExtractionError, extract_features
from wsikt.features.patch_stream import LOADER_CHUNK, PatchDataset, loader_chunk
from wsikt.formats.features_h5 import load_features
from wsikt.formats.patches_h5 import read_patch_file
from wsikt.preprocess.slide import slide_mpp

CMU = "CMU-1-Small-Region.svs"


def _attrs_equal(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _level_attrs(slide: openslide.OpenSlide, mpp0: float, footprint: int, target_mpp: float) -> dict:
    """The patch-h5 contract's attrs for a level-0 read of ``footprint`` px resized to 256."""
    w, h = slide.dimensions
    return dict(
        patch_level=0, patch_size=footprint, downsample=np.array([1.0, 1.0]), level_dim=np.array([w, h]),
        downsampled_level_dim=np.array([w, h]), name="CMU-1", patch_size_level0=footprint,
        level0_magnification=10 / mpp0, target_magnification=10 / target_mpp, overlap=0, level0_width=w,
        level0_height=h, mpp=mpp0, target_mpp=target_mpp, read_level=0, read_size=footprint,
        target_patch_size=256, level_mpp=mpp0, resized=footprint != 256,
    )


def write_patch_h5(slide_path: Path, out: Path, with_mags: bool) -> Path:
    """A patch h5 as preprocessing writes it: a 20x grid and (with_mags) a nested 10x grid with parents."""
    with openslide.OpenSlide(str(slide_path)) as slide:
        mpp0 = slide_mpp(slide)
        fine = int(round(256 * 0.5 / mpp0))
        coarse = 2 * fine  # the coarse footprint is an integer multiple of the fine one
        w, h = slide.dimensions
        cc = np.array([(x, y) for y in range(0, h - coarse + 1, coarse) for x in range(0, w - coarse + 1, coarse)], np.int64)
        fc = np.array([(x, y) for y in range(0, h - fine + 1, fine) for x in range(0, w - fine + 1, fine)], np.int64)
        row = {tuple(c): i for i, c in enumerate(cc)}
        parent = np.array([row.get((x // coarse * coarse, y // coarse * coarse), -1) for x, y in fc])
        fc, parent = fc[parent >= 0], parent[parent >= 0]
        fine_attrs = _level_attrs(slide, mpp0, fine, 0.5)
        coarse_attrs = _level_attrs(slide, mpp0, coarse, 1.0)
    with h5py.File(out, "w") as f:
        d = f.create_dataset("coords", data=fc)
        d.attrs.update(fine_attrs)
        if with_mags:
            f.attrs["magnifications"] = ["20x", "10x"]
            f.attrs["primary"] = "20x"
            for name, coords, attrs in (("20x", fc, fine_attrs), ("10x", cc, coarse_attrs)):
                g = f.create_group(f"mags/{name}")
                g.create_dataset("coords", data=coords).attrs.update(attrs)
            f["mags/20x"].create_dataset("parent_10x", data=parent.astype(np.int64))
    return out


@pytest.fixture(scope="module")
def cmu(fixture_slides, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cmu_feat")
    slide = fixture_slides / CMU
    single = write_patch_h5(slide, out / "single.h5", with_mags=False)
    multi = write_patch_h5(slide, out / "multi.h5", with_mags=True)
    feats = out / "multi.features.h5"
    extract_features(slide, multi, feats, "demo", batch_size=7, num_workers=0, device="cpu")
    return dict(slide=slide, single=single, multi=multi, features=feats, dir=out)


# -------------------------------------------------------------------------------------- encoders


def test_build_encoder_demo_output_dim():
    model, spec, _ = build_encoder("demo")
    assert spec.name == "demo" and not model.training
    with torch.inference_mode():
        out = model(torch.rand(3, 3, spec.input_size, spec.input_size))
    assert out.shape == (3, spec.dim) and torch.isfinite(out).all()


def test_weights_hash_stable_and_sensitive():
    m1, _, h1 = build_encoder("demo")
    m2, _, h2 = build_encoder("demo")
    assert h1 == h2 and len(h1) == 16 and weights_hash(m1) == h1
    with torch.no_grad():
        m2.random_bias[0] += 1.0
    assert weights_hash(m2) != h1


def test_get_encoder_spec_unknown_names_config_key():
    with pytest.raises(KeyError) as exc:
        get_encoder_spec("nope")
    msg = exc.value.args[0]
    assert "features.encoder" in msg and "'nope'" in msg and "demo" in msg


# -------------------------------------------------------------------------------- extract_features


def test_single_level_features_keep_coords_exactly(cmu, tmp_path):
    out = tmp_path / "single.features.h5"
    n = extract_features(cmu["slide"], cmu["single"], out, "demo", batch_size=16, device="cpu")
    with h5py.File(cmu["single"], "r") as p, h5py.File(out, "r") as f:
        assert n == len(p["coords"]) == f["features"].shape[0] > 50
        assert np.array_equal(f["coords"][:], p["coords"][:]) and f["coords"].dtype == p["coords"].dtype
        assert _attrs_equal(dict(f["coords"].attrs), dict(p["coords"].attrs))
        assert f["features"].dtype == np.float32 and f["features"].shape[1] == 64
        assert f["flagged"].shape == (n,) and f["flagged"].dtype == bool and not f["flagged"][:].any()
        assert "mags" not in f
        assert f.attrs["encoder"] == "demo" and int(f.attrs["dim"]) == 64
        assert f.attrs["weights_hash"] == build_encoder("demo")[2]
        assert float(f.attrs["mpp"]) == pytest.approx(0.5) and f.attrs["primary"] == "20x"
        feats = f["features"][:]
    assert np.isfinite(feats).all()
    assert np.unique(feats.round(5), axis=0).shape[0] == n  # patches differ, features differ


def test_all_magnifications_written(cmu):
    pf = read_patch_file(cmu["multi"])
    mags, names = pf.mags, pf.names
    assert names == ["20x", "10x"] and [m.name for m in mags] == ["20x", "10x"]
    with h5py.File(cmu["multi"], "r") as p, h5py.File(cmu["features"], "r") as f:
        assert list(f.attrs["magnifications"]) == ["20x", "10x"] and f.attrs["primary"] == "20x"
        for name in ("20x", "10x"):
            g, pg = f[f"mags/{name}"], p[f"mags/{name}"]
            assert np.array_equal(g["coords"][:], pg["coords"][:])
            assert _attrs_equal(dict(g["coords"].attrs), dict(pg["coords"].attrs))
            assert g["features"].shape == (len(pg["coords"]), 64) and not g["flagged"][:].any()
        assert np.array_equal(f["mags/20x/parent_10x"][:], p["mags/20x/parent_10x"][:])
        # The primary is stored once: top-level and mags/20x are the same dataset (a hard link).
        assert f["features"].id == f["mags/20x/features"].id
        assert np.array_equal(f["coords"][:], p["coords"][:])
        assert float(f["mags/10x"].attrs["mpp"]) == pytest.approx(1.0)
        coarse = f["mags/10x/features"][:]
        fine = f["features"][:]
    assert np.isfinite(coarse).all() and coarse.shape[0] < fine.shape[0]
    assert np.array_equal(load_features(cmu["features"], "10x"), coarse)
    with pytest.raises(KeyError, match="5x"):
        load_features(cmu["features"], "5x")


def test_coarse_level_reads_its_own_footprint(cmu, tmp_path):
    # The 10x features are those of a single-level extraction of the 10x grid (read 2x the pixels, resized).
    only10 = tmp_path / "only10x.h5"
    with h5py.File(cmu["multi"], "r") as p, h5py.File(only10, "w") as f:
        d = f.create_dataset("coords", data=p["mags/10x/coords"][:])
        d.attrs.update(dict(p["mags/10x/coords"].attrs))
    out = tmp_path / "only10x.features.h5"
    extract_features(cmu["slide"], only10, out, "demo", batch_size=5, device="cpu")
    assert np.allclose(load_features(out), load_features(cmu["features"], "10x"), atol=1e-5)
    # ...and differ from the 20x features of the patch at the same top-left corner.
    with h5py.File(cmu["features"], "r") as f:
        fine_rows = {tuple(c): i for i, c in enumerate(f["coords"][:])}
        c0 = tuple(f["mags/10x/coords"][1])
        assert not np.allclose(f["features"][fine_rows[c0]], f["mags/10x/features"][1], atol=1e-3)


def test_loader_chunk_divides_the_batch():
    assert loader_chunk(256, 15) == 64 and loader_chunk(100, 2) == 50 and loader_chunk(7, 2) == 7
    assert loader_chunk(256, 0) == 256  # no workers: nothing to overlap, one read per forward batch
    for bs in range(1, 300):
        c = loader_chunk(bs, 4)
        assert bs % c == 0 and c <= LOADER_CHUNK


@pytest.mark.parametrize("batch_size", [3, 100])  # 100: worker chunks of 50 regrouped into forwards of 100
def test_batch_size_and_workers_do_not_change_features(cmu, tmp_path, batch_size):
    out = tmp_path / "bs1.h5"
    extract_features(cmu["slide"], cmu["multi"], out, "demo", batch_size=batch_size, num_workers=2, device="cpu")
    with h5py.File(out, "r") as a, h5py.File(cmu["features"], "r") as b:
        for key in ("features", "mags/10x/features"):
            assert np.allclose(a[key][:], b[key][:], atol=1e-5)
        assert np.array_equal(a["coords"][:], b["coords"][:])


def test_kill_mid_slide_then_rerun_equals_clean_run(cmu, tmp_path):
    out = tmp_path / "killed" / "CMU-1.h5"
    out.parent.mkdir()
    script = (
        "import sys, time\n"
        "import wsikt.features.encoders as e\n"
        "orig = e.DemoEncoder.forward\n"
        "e.DemoEncoder.forward = lambda self, x: (time.sleep(0.1), orig(self, x))[1]\n"
        "from wsikt.features.extract import extract_features\n"
        "extract_features(sys.argv[1], sys.argv[2], sys.argv[3], 'demo', batch_size=4, device='cpu')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(cmu["slide"]), str(cmu["multi"]), str(out)])
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".*.partial")):
            assert proc.poll() is None, "extraction ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.8)  # some batches are written into the temporary file
        assert proc.poll() is None, "extraction ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # only the temporary file is left
    assert len(list(out.parent.glob(".*.partial"))) == 1
    extract_features(cmu["slide"], cmu["multi"], out, "demo", batch_size=4, device="cpu")
    clean = tmp_path / "clean.h5"
    extract_features(cmu["slide"], cmu["multi"], clean, "demo", batch_size=4, device="cpu")
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the stale partial was removed
    with h5py.File(out, "r") as a, h5py.File(clean, "r") as b:
        for key in ("features", "flagged", "coords", "mags/10x/features", "mags/10x/flagged", "mags/20x/parent_10x"):
            assert a[key][:].tobytes() == b[key][:].tobytes(), key
        assert dict(a.attrs).keys() == dict(b.attrs).keys()


def test_workers_start_after_the_parent_used_opencv_threads(cmu, tmp_path):
    # Regression: workers once hung when the parent had used OpenCV's thread pool before forking.
    script = (
        "import sys, cv2, numpy as np\n"
        "cv2.GaussianBlur(np.random.rand(3000, 3000).astype(np.float32), (31, 31), 5)\n"
        "from wsikt.features.extract import extract_features\n"
        "extract_features(sys.argv[1], sys.argv[2], sys.argv[3], 'demo', batch_size=8, num_workers=2, device='cpu')\n"
    )
    out = tmp_path / "w.h5"
    proc = subprocess.Popen([sys.executable, "-c", script, str(cmu["slide"]), str(cmu["single"]), str(out)],
                            start_new_session=True)
    try:
        assert proc.wait(timeout=90) == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.wait()
        pytest.fail("DataLoader workers hung after the parent used OpenCV's thread pool")
    assert np.array_equal(load_features(out).shape, (len(read_patch_file(cmu["single"]).mags[0].coords), 64))


def test_nan_features_fail_and_leave_no_file(cmu, tmp_path, monkeypatch):
    class NaNEncoder(torch.nn.Module):
        def forward(self, x):
            out = x.mean((2, 3)).repeat(1, 2)
            if len(x) > 1:  # the one-patch check forward of build_encoder passes
                out[-1, 0] = float("nan")
            return out

    spec = EncoderSpec(name="nan", dim=6, input_size=32, mean=(0, 0, 0), std=(1, 1, 1), mpp=0.5, patch_size=256,
                       precision="fp32", weights="test", build=NaNEncoder, needs_weights=False)
    monkeypatch.setitem(encoders.REGISTRY, "nan", spec)
    out = tmp_path / "nan.h5"
    with pytest.raises(ExtractionError, match=r"encoder 'nan' produced NaN/inf for 1 patches"):
        extract_features(cmu["slide"], cmu["single"], out, "nan", batch_size=200, device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))


# --------------------------------------------------------------------------- reading and bad tiles


def test_patch_dataset_matches_openslide_read(fixture_slides):
    path = fixture_slides / "small.svs"
    ds = PatchDataset(path, np.array([[0, 0]], dtype=np.int64), level=0, read_size=16, patch_size=16)
    x, ok = ds[0]
    assert ok is True and x.shape == (3, 16, 16) and x.dtype == torch.uint8
    with openslide.OpenSlide(str(path)) as slide:
        ref = np.asarray(slide.read_region((0, 0), 0, (16, 16)))[..., :3]
    assert np.array_equal(x.permute(1, 2, 0).numpy(), ref)


def test_patch_dataset_flags_unreadable_tile(fixture_slides):
    # unreadable.svs opens (OpenSlide reads only the header) but every tile decode fails.
    ds = PatchDataset(fixture_slides / "unreadable.svs", np.array([[0, 0]], dtype=np.int64), level=0, read_size=16, patch_size=16)
    x, ok = ds[0]
    assert ok is False and x.shape == (3, 16, 16) and (x == 255).all()
    _, ok2 = ds[0]  # the handle was dropped; a second read reopens and flags again
    assert ok2 is False


def test_transient_read_error_reopens_and_retries_once(fixture_slides):
    class FlakyOnce(PatchDataset):
        opened = failures = 0

        def _read(self, k, x, y, level, size):
            if k not in self._handles:
                FlakyOnce.opened += 1
            if FlakyOnce.failures == 0:
                FlakyOnce.failures += 1
                self._handles[k] = object()  # a handle in a sticky error state
                raise openslide.OpenSlideError("transient")
            return super()._read(k, x, y, level, size)

    ds = FlakyOnce(fixture_slides / "small.svs", np.array([[0, 0]]), level=0, read_size=16, patch_size=16)
    x, ok = ds[0]
    assert ok is True and FlakyOnce.failures == 1 and FlakyOnce.opened == 2  # reopened, then read
    assert not (x == 255).all()


def test_extract_features_flags_unreadable_tiles(fixture_slides, tmp_path):
    patches = tmp_path / "unreadable.h5"
    with h5py.File(patches, "w") as f:
        d = f.create_dataset("coords", data=np.array([[0, 0]], dtype=np.int64))
        d.attrs.update(read_level=0, read_size=16, patch_size=16, target_patch_size=16, target_mpp=0.5)
    out = tmp_path / "unreadable.features.h5"
    assert extract_features(fixture_slides / "unreadable.svs", patches, out, "demo", batch_size=4, device="cpu") == 1
    with h5py.File(out, "r") as f:
        assert f["flagged"][:].tolist() == [True]
        assert np.isfinite(f["features"][:]).all()


def test_extract_features_empty_patch_h5(tmp_path, fixture_slides):
    patches = tmp_path / "empty.h5"
    with h5py.File(patches, "w") as f:
        d = f.create_dataset("coords", data=np.zeros((0, 2), dtype=np.int64))
        d.attrs.update(read_level=0, read_size=256, patch_size=256, target_patch_size=256, target_mpp=0.5)
    out = tmp_path / "empty.features.h5"
    assert extract_features(fixture_slides / "small.svs", patches, out, "demo", device="cpu") == 0
    with h5py.File(out, "r") as f:
        assert f["features"].shape == (0, 64) and f["coords"].shape == (0, 2) and f["flagged"].shape == (0,)
