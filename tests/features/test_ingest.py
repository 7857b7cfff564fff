"""Bring-your-own features: CLAM, TRIDENT and per-slide .pt directories → wsikt's features h5."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsikt.features.ingest import detect_layout, ingest_features, ingest_slide, list_slides, write_clam_layout
from wsikt.formats.features_h5 import load_features


def _our_features(path: Path, n: int, dim: int, seed: int) -> Path:
    """A wsikt features h5 as extraction writes it (random values, distinct coords, CLAM/wsikt attrs)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        c = f.create_dataset("coords", data=(rng.permutation(1000)[:n, None] * np.array([[256, 512]])).astype(np.int64))
        c.attrs.update(patch_level=0, patch_size=256, target_mpp=0.5, name=path.stem)
        f.create_dataset("flagged", data=np.zeros(n, bool))
        f.attrs.update(encoder="uni_v1", dim=dim, mpp=0.5, weights_hash="abc")
    return path


@pytest.fixture
def ours(tmp_path) -> list[Path]:
    d = tmp_path / "ours"
    d.mkdir()
    return [_our_features(d / f"TCGA-{i}.h5", n, 12, i) for i, n in enumerate((5, 17, 1))]


def test_clam_layout_round_trips(ours, tmp_path):
    clam = tmp_path / "clam"
    assert write_clam_layout(ours, clam) == [p.stem for p in ours]
    assert sorted(p.name for p in (clam / "pt_files").iterdir()) == sorted(f"{p.stem}.pt" for p in ours)
    assert detect_layout(clam) == ("clam", clam)
    back = ingest_features(clam, tmp_path / "back", encoder="uni_v1")
    assert [p.stem for p in back] == sorted(p.stem for p in ours)
    for src in ours:
        got = tmp_path / "back" / src.name
        with h5py.File(src, "r") as a, h5py.File(got, "r") as b:
            assert a["features"][:].tobytes() == b["features"][:].tobytes()
            assert np.array_equal(a["coords"][:], b["coords"][:]) and b["coords"].dtype == np.int64
            assert b["coords"].attrs["patch_size"] == 256 and bool(b["coords"].attrs["known"])
            assert b.attrs["encoder"] == "uni_v1" and int(b.attrs["dim"]) == 12
            assert b.attrs["weights_hash"] == "external:clam" and float(b.attrs["mpp"]) == 0.5
            assert b["flagged"].shape == (len(a["features"]),) and not b["flagged"][:].any()
        assert torch.equal(torch.load(clam / "pt_files" / f"{src.stem}.pt"), torch.from_numpy(load_features(src)))


def test_clam_pt_files_only_gives_features_without_coords(ours, tmp_path):
    clam = tmp_path / "clam"
    write_clam_layout(ours, clam)
    for p in (clam / "h5_files").iterdir():
        p.unlink()
    out = tmp_path / "x.h5"
    assert ingest_slide(clam, "TCGA-1", out, "resnet50") == 17
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["features"][:], load_features(ours[1]))
        assert (f["coords"][:] == -1).all() and not f["coords"].attrs["known"]
        assert np.isnan(f.attrs["mpp"])


def test_trident_layout(ours, tmp_path):
    job = tmp_path / "trident_job" / "20x_256px_0px_overlap"
    folder = job / "features_conch_v15"
    folder.mkdir(parents=True)
    for src in ours:
        with h5py.File(src, "r") as a, h5py.File(folder / src.name, "w") as b:
            b.create_dataset("features", data=a["features"][:].astype(np.float16))
            c = b.create_dataset("coords", data=a["coords"][:])
            c.attrs.update(patch_size=256, patch_size_level0=512, target_magnification=20, level0_magnification=40)
    (job / "features_uni_v1").mkdir()
    with pytest.raises(ValueError, match="several TRIDENT folders"):
        detect_layout(job)
    assert detect_layout(job, "conch_v15") == ("trident", folder)
    assert list_slides(folder) == sorted(p.stem for p in ours)
    out = tmp_path / "t.h5"
    ingest_slide(folder, "TCGA-0", out, "conch_v15")
    with h5py.File(out, "r") as f, h5py.File(ours[0], "r") as a:
        assert f["features"].dtype == np.float32
        assert np.array_equal(f["features"][:], a["features"][:].astype(np.float16).astype(np.float32))
        assert np.array_equal(f["coords"][:], a["coords"][:])
        assert float(f.attrs["mpp"]) == pytest.approx(0.5) and f.attrs["weights_hash"] == "external:trident"


def test_per_slide_pt_directory(tmp_path):
    d = tmp_path / "uni2_dss"
    d.mkdir()
    feats = {f"S{i}": torch.randn(n, 1536) for i, n in enumerate((3, 8))}
    for k, v in feats.items():
        torch.save(v, d / f"{k}.pt")
    paths = ingest_features(d, tmp_path / "out", encoder="uni_v2", slides=["S1"], mpp=0.5)
    assert [p.name for p in paths] == ["S1.h5"]
    with h5py.File(paths[0], "r") as f:
        assert np.array_equal(f["features"][:], feats["S1"].numpy())
        assert f["coords"].shape == (8, 2) and f.attrs["weights_hash"] == "external:pt"
        assert f.attrs["primary"] == "20x"


def test_clear_errors(tmp_path, ours):
    with pytest.raises(FileNotFoundError, match=r"absent: features directory not found .*h5_files"):
        list_slides(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no feature files found; expected a CLAM directory"):
        list_slides(tmp_path / "empty")
    clam = tmp_path / "clam"
    (clam / "h5_files").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"h5_files.*empty|clam: empty"):
        list_slides(clam)
    with h5py.File(clam / "h5_files" / "bad.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((4, 3), np.float32))
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"bad\.h5: 4 feature rows but coords of shape \(3, 2\)"):
        ingest_slide(clam, "bad", tmp_path / "o.h5", "x")
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(FileNotFoundError, match=r"no features for 1 slides \(e.g. \['nope'\]\)"):
        ingest_features(clam, tmp_path / "o", "x", slides=["nope"])


def test_mixed_dims_are_refused(tmp_path):
    d = tmp_path / "pts"
    d.mkdir()
    torch.save(torch.zeros(2, 4), d / "a.pt")
    torch.save(torch.zeros(2, 5), d / "b.pt")
    with pytest.raises(ValueError, match="different feature dims"):
        ingest_features(d, tmp_path / "o", "x")
