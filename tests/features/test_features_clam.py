"""Features from a patch h5 written by CLAM itself (shared/reference/clam): its coords and attrs are used as is."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsikt.features.extract import extract_features

SHARED = Path(__file__).resolve().parents[3] / "shared"
CLAM_H5 = SHARED / "reference/clam/CMU-1-Small-Region.bwh_biopsy.patches.h5"
SLIDE = SHARED / "fixtures/slides/CMU-1-Small-Region.svs"


@pytest.mark.skipif(not CLAM_H5.exists() or not SLIDE.exists(), reason=f"CLAM reference not found under {SHARED}")
def test_features_from_clam_patch_h5(tmp_path):
    out = tmp_path / "features.h5"
    n = extract_features(SLIDE, CLAM_H5, out, "demo", batch_size=16)
    with h5py.File(CLAM_H5, "r") as ref, h5py.File(out, "r") as f:
        assert n == ref["coords"].shape[0] == f["features"].shape[0] == 50
        assert np.array_equal(f["coords"][:], ref["coords"][:])
        assert f["coords"].attrs["patch_size"] == ref["coords"].attrs["patch_size"]
        assert np.isfinite(f["features"][:]).all() and not f["flagged"][:].any()
        assert f.attrs["mpp"] == pytest.approx(0.499, abs=1e-3)  # CMU-1 level 0, read as is
