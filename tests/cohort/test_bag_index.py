"""The per-cancer bag index: built from real feature files, refuses mixed encoders or magnifications."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsikt.cohort.bag_index import build_bag_index, read_bag_index, write_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.features.extract import extract_features
from wsikt.formats.features_h5 import load_features
from wsikt.preprocess.pipeline import PatchSettings, preprocess_slide

CMU = "CMU-1-Small-Region.svs"
SEG = dict(seg_downsample=16, use_otsu=True, otsu_min=8, area_unit="um2", a_t=20000, a_h=2000)


@pytest.fixture(scope="module")
def features(fixture_slides, tmp_path_factory) -> Path:
    """One real features h5 (CMU-1, demo encoder, 20x + 5x)."""
    d = tmp_path_factory.mktemp("bagidx")
    preprocess_slide(fixture_slides / CMU, "S1", d / "t.geojson", d / "p.h5", d / "qt.png", d / "q.png",
                     PatchSettings(patch_size=128, context_mpp=(2.0,), segmentation=SEG), on_error="fail")
    n = extract_features(fixture_slides / CMU, d / "p.h5", d / "S1.h5", "demo", batch_size=32, device="cpu")
    assert n > 0
    return d / "S1.h5"


def _copy(src: Path, dst: Path, **attrs) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        f.attrs.update(attrs)
    return dst


def test_index_rows_describe_the_files(features, tmp_path):
    s2 = _copy(features, tmp_path / "S2.h5")
    out = tmp_path / "idx.tsv"
    df = write_bag_index([features, s2], {"S1": "P1", "S2": "P1"}, out)
    n = len(load_features(features))
    assert list(df["slide_id"]) == ["S1", "S2"] and set(df["n_patches"]) == {n}
    assert set(df["encoder"]) == {"demo"} and set(df["dim"]) == {64} and set(df["magnifications"]) == {"20x,5x"}
    slides, paths = read_bag_index(out)
    assert paths == {"S1": str(features), "S2": str(s2)}
    (bag,) = load_patient_bags(["P1"], slides, paths)  # the patient's two slides, concatenated
    assert bag.shape == (2 * n, 64)
    (capped,) = load_patient_bags(["P1"], slides, paths, max_tiles_per_slide=3)  # HistoSSLscaling: first k of each slide
    np.testing.assert_array_equal(capped, np.concatenate([bag[:3], bag[n:n + 3]]))
    with pytest.raises(ValueError, match="experts.max_tiles_per_slide"):
        load_patient_bags(["P1"], slides, paths, ("20x", "5x"), max_tiles_per_slide=3)


@pytest.mark.parametrize("attr, value", [("encoder", "uni_v1"), ("weights_hash", "other"), ("primary", "40x")])
def test_mixed_features_name_the_odd_slide(features, tmp_path, attr, value):
    a, b = _copy(features, tmp_path / "S2.h5"), _copy(features, tmp_path / "S3.h5", **{attr: value})
    with pytest.raises(ValueError, match=rf"S3\.h5: {attr} is '{value}' but 2 of 3 slides.*rerun feature extraction"):
        build_bag_index([features, a, b], {"S1": "P1", "S2": "P2", "S3": "P3"})


def test_empty_slide_does_not_count_against_the_cohort(features, tmp_path):
    empty = tmp_path / "S2.h5"
    with h5py.File(empty, "w") as f:  # a failed slide's features: no rows, attrs of another run
        f.create_dataset("features", shape=(0, 64), dtype=np.float32)
        f.attrs.update(encoder="demo", dim=64, primary="20x", magnifications=["20x"])
    df = build_bag_index([features, empty], {"S1": "P1", "S2": "P2"})
    assert df.set_index("slide_id").loc["S2", "n_patches"] == 0


def test_missing_or_broken_files_are_named(features, tmp_path, fixture_slides):
    with pytest.raises(ValueError, match="no features file for slide.*S9"):
        build_bag_index([features], {"S1": "P1", "S9": "P9"})
    bad = shutil.copy(fixture_slides / "broken.svs", tmp_path / "S2.h5")
    with pytest.raises(ValueError, match=r"S2\.h5: not a readable h5 file"):
        build_bag_index([features, bad], {"S1": "P1", "S2": "P2"})
    (tmp_path / "idx.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a bag index"):
        read_bag_index(tmp_path / "idx.tsv")
