"""Macenko colour normalisation (features.color_norm) on real H&E: restained tissue comes back, the fit is stored."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pytest
import torch
from torchstain.torch.normalizers import TorchMacenkoNormalizer

from wsikt.features.extract import extract_features
from wsikt.features.settings import FeatureSettings, feature_params
from wsikt.features.stain import DEFAULT_REFERENCE, MacenkoStain, build_stain
from wsikt.formats.features_h5 import load_features

CMU = "CMU-1-Small-Region.svs"
TISSUE = [(1280, 896), (1152, 896), (1280, 768), (1024, 1024)]  # 256-px tiles of dense tissue on the CMU slide


def _tile(fixture_slides: Path, xy: tuple[int, int]) -> np.ndarray:
    with openslide.OpenSlide(str(fixture_slides / CMU)) as s:
        return np.asarray(s.read_region(xy, 0, (256, 256)).convert("RGB"))


def _restain(rgb: np.ndarray) -> np.ndarray:
    """The same tissue under another stain: its optical density mixed by a fixed 3 × 3 matrix (Beer–Lambert)."""
    od = -np.log((rgb.astype(np.float64) + 1) / 240)
    mix = np.array([[1.3, 0.2, 0.0], [0.0, 0.7, 0.2], [0.2, 0.0, 1.3]])
    return np.clip(240 * np.exp(-(od @ mix.T)) - 1, 0, 255).astype(np.uint8)


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def test_restained_tissue_is_brought_back_to_one_appearance(fixture_slides):
    rgb = _tile(fixture_slides, TISSUE[0])
    raw = torch.stack([_chw(rgb), _chw(_restain(rgb))]).float()
    norm = MacenkoStain()(raw.to(torch.uint8)).float()
    before = (raw[0] - raw[1]).abs().mean()
    after = (norm[0] - norm[1]).abs().mean()
    assert before > 20  # the restain is a large colour change
    assert after < 0.2 * before


def test_each_patch_equals_torchstain_on_its_own(fixture_slides):
    batch = torch.stack([_chw(_tile(fixture_slides, xy)) for xy in TISSUE[:2]])
    ours = MacenkoStain()(batch)
    for i in range(len(batch)):
        theirs, _, _ = TorchMacenkoNormalizer().normalize(batch[i], Io=240, alpha=1, beta=0.15, stains=False)
        assert torch.equal(ours[i], theirs.clamp(0, 255).to(torch.uint8).permute(2, 0, 1))


def test_background_patch_is_kept_as_read_and_counted():
    stain = MacenkoStain()
    white = torch.full((2, 3, 64, 64), 250, dtype=torch.uint8)
    out = stain(white)
    assert torch.equal(out, white)
    assert stain.fallbacks == 2


def test_reference_image_sets_the_fit(fixture_slides, tmp_path):
    ref = _restain(_tile(fixture_slides, TISSUE[1]))
    path = tmp_path / "reference.png"
    cv2.imwrite(str(path), ref[..., ::-1])
    stain = MacenkoStain(path)
    theirs = TorchMacenkoNormalizer()
    theirs.fit(_chw(ref), Io=240, alpha=1, beta=0.15)
    np.testing.assert_allclose(stain.he_ref, theirs.HERef.numpy(), rtol=1e-6)
    np.testing.assert_allclose(stain.max_c_ref, theirs.maxCRef.numpy(), rtol=1e-6)
    assert stain.attrs()["color_norm_reference"] == str(path)
    assert not np.allclose(stain.he_ref, MacenkoStain().he_ref)


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="features.color_norm_reference: cannot read image"):
        build_stain("macenko", str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="features.color_norm 'reinhard' must be one of none, macenko"):
        FeatureSettings.from_config({"color_norm": "reinhard"})
    with pytest.raises(ValueError, match="color_norm is 'none'"):
        FeatureSettings.from_config({"color_norm": "none", "color_norm_reference": "ref.png"})


def test_unset_colour_normalisation_leaves_job_params_unchanged():
    base = {"batch_size": 64, "device": "auto"}
    assert feature_params({**base, "color_norm": "none", "color_norm_reference": None}) == base
    assert feature_params({**base, "color_norm": "macenko"}) == {**base, "color_norm": "macenko"}


def test_extraction_stores_the_fit_and_embeds_normalised_patches(fixture_slides, tmp_path):
    patches = tmp_path / "patches.h5"
    with h5py.File(patches, "w") as f:  # CLAM's single-level layout: four tissue tiles at level 0
        f.create_dataset("coords", data=np.array(TISSUE, np.int64)).attrs.update(patch_level=0, patch_size=256)
    plain, normed = tmp_path / "plain.h5", tmp_path / "macenko.h5"
    extract_features(fixture_slides / CMU, patches, plain, "demo", batch_size=4, device="cpu")
    extract_features(fixture_slides / CMU, patches, normed, "demo", batch_size=4, device="cpu", color_norm="macenko")
    with h5py.File(normed) as f:
        attrs = dict(f.attrs)
    assert attrs["color_norm"] == "macenko" and attrs["color_norm_reference"] == DEFAULT_REFERENCE
    np.testing.assert_allclose(attrs["color_norm_he_ref"], MacenkoStain().he_ref)
    with h5py.File(plain) as f:
        assert "color_norm" not in f.attrs
    with h5py.File(plain) as f, h5py.File(normed) as g:
        np.testing.assert_array_equal(f["coords"][:], g["coords"][:])
    assert not np.allclose(load_features(plain), load_features(normed))
