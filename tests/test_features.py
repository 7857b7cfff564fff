"""Encoder registry and patch feature extraction on real slides."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch

from wsikt.encoders import build_encoder, get_encoder_spec, weights_hash
from wsikt.features import PatchDataset, extract_features
from wsikt.preprocess import preprocess_slide

CMU = "CMU-1-Small-Region.svs"


def _attrs_equal(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def cmu_patches(fixture_slides, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("cmu_feat")
    h5 = out / "CMU-1.h5"
    n = preprocess_slide(
        fixture_slides / CMU, "CMU-1", out / "CMU-1.geojson", h5, out / "CMU-1.png",
        segmentation=dict(seg_downsample=16),
    )
    assert n > 0
    return fixture_slides / CMU, h5


@pytest.fixture(scope="module")
def cmu_features(cmu_patches, tmp_path_factory) -> Path:
    slide, patches = cmu_patches
    out = tmp_path_factory.mktemp("cmu_feat_out") / "CMU-1.features.h5"
    n = extract_features(slide, patches, out, "demo", batch_size=7, num_workers=0, device="cpu")
    with h5py.File(patches, "r") as f:
        assert n == len(f["coords"])
    return out


# -------------------------------------------------------------------------------------- encoders


def test_build_encoder_demo_output_dim():
    model, spec, _ = build_encoder("demo")
    assert spec.name == "demo"
    assert not model.training
    with torch.inference_mode():
        out = model(torch.rand(3, 3, spec.input_size, spec.input_size))
    assert out.shape == (3, spec.dim)
    assert torch.isfinite(out).all()


def test_weights_hash_stable_and_sensitive():
    m1, _, h1 = build_encoder("demo")
    m2, _, h2 = build_encoder("demo")
    assert h1 == h2
    assert len(h1) == 16 and int(h1, 16) >= 0
    assert weights_hash(m1) == h1
    # The hash must change with the weights, or it proves nothing.
    with torch.no_grad():
        m2.random_bias[0] += 1.0
    assert weights_hash(m2) != h1


def test_get_encoder_spec_unknown_names_config_key():
    with pytest.raises(KeyError) as exc:
        get_encoder_spec("nope")
    msg = exc.value.args[0]
    assert "features.encoder" in msg and "'nope'" in msg and "demo" in msg


def test_demo_encoder_is_deterministic_per_input():
    model, spec, _ = build_encoder("demo")
    x = torch.rand(2, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = model(x), model(x.clone())
        single = model(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], single, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different patches, different features


# -------------------------------------------------------------------------------- extract_features


def test_extract_features_cmu(cmu_patches, cmu_features):
    _, patches = cmu_patches
    with h5py.File(patches, "r") as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    _, spec, whash = build_encoder("demo")
    with h5py.File(cmu_features, "r") as f:
        feats = f["features"][:]
        fcoords = f["coords"][:]
        fattrs = dict(f["coords"].attrs)
        flagged = f["flagged"][:]
        file_attrs = dict(f.attrs)
    n = len(coords)
    assert feats.shape == (n, 64) == (n, spec.dim)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert np.array_equal(fcoords, coords) and fcoords.dtype == coords.dtype
    assert _attrs_equal(fattrs, attrs)
    assert flagged.shape == (n,) and flagged.dtype == bool and not flagged.any()
    assert file_attrs["encoder"] == "demo"
    assert int(file_attrs["dim"]) == 64
    assert file_attrs["weights_hash"] == whash
    assert float(file_attrs["mpp"]) == pytest.approx(float(attrs["target_mpp"]))
    # Patches differ, so rows differ: features are not a constant (e.g. all-white) fill.
    assert np.unique(feats.round(5), axis=0).shape[0] == n


def test_extract_features_batch_size_invariant(cmu_patches, cmu_features, tmp_path):
    slide, patches = cmu_patches
    out = tmp_path / "bs1.h5"
    extract_features(slide, patches, out, "demo", batch_size=1, num_workers=0, device="cpu")
    with h5py.File(out, "r") as f1, h5py.File(cmu_features, "r") as f7:
        assert np.array_equal(f1["coords"][:], f7["coords"][:])
        assert np.allclose(f1["features"][:], f7["features"][:], atol=1e-5)


def test_patch_dataset_matches_openslide_read(fixture_slides):
    # Control for the corrupt-tile test: a readable slide gives ok=True and exactly the OpenSlide pixels.
    path = fixture_slides / "small.svs"
    ds = PatchDataset(path, np.array([[0, 0]], dtype=np.int64), level=0, read_size=16, patch_size=16)
    x, ok = ds[0]
    assert ok is True
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8
    with openslide.OpenSlide(str(path)) as slide:
        ref = np.asarray(slide.read_region((0, 0), 0, (16, 16)))[..., :3]
    assert np.array_equal(x.permute(1, 2, 0).numpy(), ref)


def test_patch_dataset_flags_unreadable_tile(fixture_slides):
    # unreadable.svs opens (OpenSlide reads only the header) but every tile decode fails.
    path = fixture_slides / "unreadable.svs"
    ds = PatchDataset(path, np.array([[0, 0]], dtype=np.int64), level=0, read_size=16, patch_size=16)
    x, ok = ds[0]
    assert ok is False
    assert x.shape == (3, 16, 16)
    assert (x == 255).all()  # a white placeholder, flagged, never silently passed as tissue
    # OpenSlide errors are sticky; the dataset drops the handle, so a second read reopens and flags again.
    _, ok2 = ds[0]
    assert ok2 is False


def test_extract_features_flags_unreadable_tiles(fixture_slides, tmp_path):
    patches = tmp_path / "unreadable.h5"
    with h5py.File(patches, "w") as f:
        d = f.create_dataset("coords", data=np.array([[0, 0]], dtype=np.int64))
        d.attrs.update(read_level=0, read_size=16, patch_size=16, target_patch_size=16, target_mpp=0.5)
    out = tmp_path / "unreadable.features.h5"
    n = extract_features(fixture_slides / "unreadable.svs", patches, out, "demo", batch_size=4, device="cpu")
    assert n == 1
    with h5py.File(out, "r") as f:
        assert f["flagged"][:].tolist() == [True]
        assert np.isfinite(f["features"][:]).all()


def test_extract_features_empty_patch_h5(tmp_path, fixture_slides):
    # A slide with no tissue has 0 patches: features (0, dim), not a crash.
    patches = tmp_path / "empty.h5"
    with h5py.File(patches, "w") as f:
        d = f.create_dataset("coords", data=np.zeros((0, 2), dtype=np.int64))
        d.attrs.update(read_level=0, read_size=256, patch_size=256, target_patch_size=256, target_mpp=0.5)
    out = tmp_path / "empty.features.h5"
    assert extract_features(fixture_slides / "small.svs", patches, out, "demo", device="cpu") == 0
    with h5py.File(out, "r") as f:
        assert f["features"].shape == (0, 64)
        assert f["coords"].shape == (0, 2)
        assert f["flagged"].shape == (0,)
