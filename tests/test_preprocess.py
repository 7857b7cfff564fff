"""Slide access, read planning, tissue segmentation, patching and atomic writes on real slide files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import pytest
import tifffile

from wsikt.demo.render import render_slide, write_pyramid_tiff
from wsikt.io import atomic_path
from wsikt.preprocess import preprocess_slide
from wsikt.slide import MissingMppError, SlideError, open_slide, plan_read, slide_mpp

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1.svs"

CLAM_ATTRS = ("patch_level", "patch_size", "downsample", "level_dim", "downsampled_level_dim", "name")
TRIDENT_ATTRS = (
    "patch_size_level0", "level0_magnification", "target_magnification", "overlap", "level0_width", "level0_height",
)


def _run_preprocess(slide_path: Path, out_dir: Path, slide_id: str, **kwargs) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = dict(
        geojson=out_dir / f"{slide_id}.geojson", h5=out_dir / f"{slide_id}.h5", qc=out_dir / f"{slide_id}.png"
    )
    n = preprocess_slide(slide_path, slide_id, paths["geojson"], paths["h5"], paths["qc"], **kwargs)
    return dict(n=n, slide=slide_path, **paths)


def _coords_and_attrs(h5_path: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(h5_path, "r") as f:
        return f["coords"][:], dict(f["coords"].attrs)


@pytest.fixture(scope="module")
def cmu_run(fixture_slides, tmp_path_factory) -> dict:
    return _run_preprocess(
        fixture_slides / CMU, tmp_path_factory.mktemp("cmu"), "CMU-1", segmentation=dict(seg_downsample=16)
    )


@pytest.fixture(scope="module")
def pair_runs(demo_slide_pair, tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("pair_pre")
    s40, s20 = demo_slide_pair
    return _run_preprocess(s40, out, "pair40"), _run_preprocess(s20, out, "pair20")


# --------------------------------------------------------------------------------------- open_slide


@pytest.mark.parametrize("name", ["unopenable.tiff", "broken.svs"])
def test_open_slide_non_slide_raises_slide_error_naming_file(fixture_slides, name):
    path = fixture_slides / name
    assert path.exists()
    with pytest.raises(SlideError) as exc:
        open_slide(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "\n" not in msg
    # The original OpenSlide error is chained, not lost.
    assert isinstance(exc.value.__cause__, openslide.OpenSlideError)


def test_open_slide_missing_path_raises_slide_error(tmp_path):
    path = tmp_path / "no_such_slide.svs"
    with pytest.raises(SlideError) as exc:
        open_slide(path)
    msg = str(exc.value)
    assert str(path) in msg and "not found" in msg
    assert "\n" not in msg


def test_open_slide_real_slide(fixture_slides):
    slide = open_slide(fixture_slides / CMU)
    try:
        assert isinstance(slide, openslide.OpenSlide)
        assert slide.dimensions == (2220, 2967)
    finally:
        slide.close()


# ---------------------------------------------------------------------------------------- slide_mpp


def test_slide_mpp_from_aperio_metadata(fixture_slides):
    slide = open_slide(fixture_slides / CMU)
    try:
        assert slide_mpp(slide) == pytest.approx(0.499, abs=1e-6)
    finally:
        slide.close()


def test_slide_mpp_missing_names_mpp_column(fixture_slides):
    slide = open_slide(fixture_slides / TCGA)
    try:
        with pytest.raises(MissingMppError) as exc:
            slide_mpp(slide, name=TCGA)
    finally:
        slide.close()
    assert isinstance(exc.value, SlideError)  # callers catching SlideError also catch it
    msg = str(exc.value)
    assert "'mpp' column" in msg and TCGA in msg
    assert "\n" not in msg


def test_slide_mpp_override_wins(fixture_slides):
    for name in (CMU, TCGA):  # wins over metadata, and fills in where there is none
        slide = open_slide(fixture_slides / name)
        try:
            assert slide_mpp(slide, override=0.25) == 0.25
        finally:
            slide.close()


def test_slide_mpp_nan_override_is_ignored(fixture_slides):
    # An empty 'mpp' cell in the sample sheet reaches us as NaN: fall back to the metadata.
    slide = open_slide(fixture_slides / CMU)
    try:
        assert slide_mpp(slide, override=float("nan")) == pytest.approx(0.499, abs=1e-6)
    finally:
        slide.close()


@pytest.mark.parametrize("bad", [0.0, -0.25, 0])
def test_slide_mpp_non_positive_override_raises(fixture_slides, bad):
    slide = open_slide(fixture_slides / CMU)
    try:
        with pytest.raises(SlideError, match="mpp"):
            slide_mpp(slide, override=bad, name="x")
    finally:
        slide.close()


def test_slide_mpp_from_generic_tiff_resolution(demo_slide_pair):
    # The 20x demo slide is a generic TIFF: its mpp lives only in the resolution tags.
    slide = open_slide(demo_slide_pair[1])
    try:
        assert slide.properties.get("openslide.vendor") == "generic-tiff"
        assert slide_mpp(slide) == pytest.approx(0.5, rel=1e-6)
    finally:
        slide.close()


def test_slide_mpp_rejects_placeholder_tiff_resolution(fixture_slides):
    # boxes.tiff carries XResolution 28.35 px/cm (= 72 dpi, the TIFF default), not a scan resolution.
    slide = open_slide(fixture_slides / "boxes.tiff")
    try:
        assert float(slide.properties["tiff.XResolution"]) == pytest.approx(72 / 2.54, rel=1e-6)
        with pytest.raises(MissingMppError):
            slide_mpp(slide, name="boxes.tiff")
    finally:
        slide.close()


# ---------------------------------------------------------------------------------------- plan_read


def test_plan_read_native_level_within_tolerance():
    plan = plan_read((1.0, 2.0, 4.0), mpp0=0.25, target_mpp=0.5, patch_size=256)
    assert plan.level == 1
    assert plan.read_size == plan.patch_size == 256
    assert not plan.resized
    assert plan.footprint == 512  # level-0 pixels: 256 px × (0.5 / 0.25)
    assert plan.level_mpp == pytest.approx(0.5)


def test_plan_read_native_level_with_off_grid_downsample():
    # Real pyramids have downsamples like 2.0005 (TCGA-CR-7395): still the native level, no resize.
    plan = plan_read((1.0, 2.0005055500659967), mpp0=0.25, target_mpp=0.5, patch_size=256)
    assert (plan.level, plan.read_size, plan.resized) == (1, 256, False)


def test_plan_read_resizes_from_level0_when_no_level_matches():
    plan = plan_read((1.0, 4.0), mpp0=0.25, target_mpp=0.5, patch_size=256)
    assert plan.level == 0
    assert plan.read_size == 512
    assert plan.patch_size == 256
    assert plan.resized
    assert plan.footprint == 512
    assert plan.level_mpp == pytest.approx(0.25)


def test_plan_read_picks_coarsest_finer_level_to_resize():
    # 80x scan with levels 1, 2, 8: target 0.5 (= 4x) has no native level; read level 1 (0.25) and halve.
    plan = plan_read((1.0, 2.0, 8.0), mpp0=0.125, target_mpp=0.5, patch_size=256)
    assert (plan.level, plan.read_size, plan.footprint, plan.resized) == (1, 512, 1024, True)


def test_plan_read_footprint_in_level0_pixels_rounds():
    # CMU-1 is 0.499 µm/px: a 256-px patch at 0.5 µm/px spans 256 × 0.5 / 0.499 = 256.5 → 257 level-0 px.
    plan = plan_read((1.0,), mpp0=0.499, target_mpp=0.5, patch_size=256)
    assert plan.footprint == round(256 * 0.5 / 0.499) == 257
    assert plan.level == 0 and plan.read_size == 257 and plan.resized


def test_plan_read_target_finer_than_scan_raises():
    with pytest.raises(SlideError, match="finer than the scan"):
        plan_read((1.0, 4.0), mpp0=0.5, target_mpp=0.25, patch_size=256)


# ----------------------------------------------------------------------------- preprocess on CMU-1


def test_preprocess_cmu_geojson(cmu_run):
    obj = json.loads(cmu_run["geojson"].read_text())
    assert obj["type"] == "FeatureCollection"
    polys = [f for f in obj["features"] if f["geometry"]["type"] == "Polygon"]
    assert len(polys) >= 1
    w0, h0 = 2220, 2967
    for feat in polys:
        assert feat["type"] == "Feature"
        for ring in feat["geometry"]["coordinates"]:
            pts = np.asarray(ring, dtype=float)
            assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 4  # GeoJSON linear ring
            assert np.array_equal(pts[0], pts[-1])  # closed
            assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= w0).all()
            assert (pts[:, 1] >= 0).all() and (pts[:, 1] <= h0).all()


def test_preprocess_cmu_coords(cmu_run):
    coords, attrs = _coords_and_attrs(cmu_run["h5"])
    assert coords.dtype == np.int64
    assert coords.ndim == 2 and coords.shape[1] == 2
    assert len(coords) > 0
    assert cmu_run["n"] == len(coords)
    footprint = int(attrs["patch_size_level0"])
    assert footprint == round(256 * 0.5 / 0.499)  # default patch_size 256 at target 0.5 on a 0.499 scan
    assert (coords % footprint == 0).all()  # grid anchored at level-0 (0, 0)
    assert (coords >= 0).all()
    assert (coords[:, 0] + footprint <= 2220).all()
    assert (coords[:, 1] + footprint <= 2967).all()
    assert len(np.unique(coords, axis=0)) == len(coords)


def test_preprocess_cmu_h5_attrs(cmu_run):
    _, attrs = _coords_and_attrs(cmu_run["h5"])
    missing = [k for k in CLAM_ATTRS + TRIDENT_ATTRS if k not in attrs]
    assert not missing, f"missing attrs {missing}"
    assert attrs["name"] == "CMU-1"
    assert int(attrs["patch_level"]) == 0  # single-level slide
    # CLAM's meaning: pixels read at patch_level (128 µm at 0.499 µm/px = 257); the encoder sees 256.
    assert int(attrs["patch_size"]) == int(attrs["read_size"]) == 257
    assert int(attrs["target_patch_size"]) == 256
    assert tuple(attrs["level_dim"]) == (2220, 2967)
    assert np.allclose(attrs["downsample"], (1.0, 1.0))
    assert int(attrs["level0_width"]) == 2220 and int(attrs["level0_height"]) == 2967
    assert float(attrs["level0_magnification"]) == pytest.approx(10 / 0.499)
    assert float(attrs["target_magnification"]) == pytest.approx(20.0)
    assert int(attrs["overlap"]) == 0


def test_preprocess_cmu_qc_png(cmu_run):
    img = cv2.imread(str(cmu_run["qc"]), cv2.IMREAD_COLOR)
    assert img is not None
    # Whole slide thumbnail, longest side capped at qc_max_side=1024 (default), aspect kept.
    scale = 1024 / max(2220, 2967)
    assert img.shape == (int(2967 * scale), int(2220 * scale), 3)


def test_preprocess_leaves_no_temp_files(cmu_run):
    out_dir = cmu_run["h5"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        p.name for p in (cmu_run["geojson"], cmu_run["h5"], cmu_run["qc"])
    )


def test_clam_style_read_of_patch_h5(cmu_run):
    # Exactly what CLAM's Whole_Slide_Bag_FP does with a patch h5.
    with h5py.File(cmu_run["h5"], "r") as f:
        coords = f["coords"][:]
        patch_level = f["coords"].attrs["patch_level"]
        patch_size = f["coords"].attrs["patch_size"]
    wsi = openslide.OpenSlide(str(cmu_run["slide"]))
    try:
        x, y = coords[len(coords) // 2]
        img = wsi.read_region((int(x), int(y)), int(patch_level), (int(patch_size), int(patch_size))).convert("RGB")
    finally:
        wsi.close()
    arr = np.asarray(img)
    assert arr.shape == (257, 257, 3) and arr.dtype == np.uint8  # CLAM reads patch_size at patch_level
    # A kept patch is mostly tissue: not blank glass, and not uniform.
    assert arr.mean() < 230
    assert arr.std() > 10
    sat = cv2.cvtColor(arr, cv2.COLOR_RGB2HSV)[..., 1]
    assert np.median(sat) > 20


# ---------------------------------------------------------------------------- 40x vs 20x demo pair


def test_demo_pair_metadata(demo_slide_pair):
    s40, s20 = (open_slide(p) for p in demo_slide_pair)
    try:
        assert s40.properties.get("openslide.vendor") == "aperio"
        assert slide_mpp(s40) == pytest.approx(0.25)
        assert slide_mpp(s20) == pytest.approx(0.5)
        # Same physical size.
        assert s40.dimensions[0] * 0.25 == pytest.approx(s20.dimensions[0] * 0.5)
    finally:
        s40.close()
        s20.close()


def test_demo_pair_same_20x_grid(pair_runs):
    r40, r20 = pair_runs
    c40, a40 = _coords_and_attrs(r40["h5"])
    c20, a20 = _coords_and_attrs(r20["h5"])
    assert len(c20) > 0
    assert abs(len(c40) - len(c20)) <= 0.1 * len(c20)
    # Same physical footprint: patch_size_level0 × level-0 mpp.
    um40 = int(a40["patch_size_level0"]) * float(a40["mpp"])
    um20 = int(a20["patch_size_level0"]) * float(a20["mpp"])
    assert um40 == pytest.approx(um20) == pytest.approx(256 * 0.5)
    # Both reach 20x natively (the 40x pyramid has a 2x level): no resize.
    assert int(a40["patch_level"]) == 1 and not bool(a40["resized"])
    assert int(a20["patch_level"]) == 0 and not bool(a20["resized"])
    # The grids are the same in µm: most patches coincide.
    um_c40 = {tuple(c) for c in (c40 * 0.25).round().astype(int)}
    um_c20 = {tuple(c) for c in (c20 * 0.5).round().astype(int)}
    assert len(um_c40 & um_c20) >= 0.9 * max(len(um_c40), len(um_c20))


def test_downsampled_level_dim_matches_clam(pair_runs):
    # Not resized (20x slide read at level 0): CLAM's process_contour writes level_dim here.
    _, a20 = _coords_and_attrs(pair_runs[1]["h5"])
    assert int(a20["read_size"]) == int(a20["patch_size"])
    assert tuple(a20["downsampled_level_dim"]) == tuple(a20["level_dim"])


def _write_aperio_1_4(path: Path, rgb: np.ndarray, mpp: float) -> None:
    """An Aperio-style 40x pyramid with levels at downsample 1 and 4 only (the usual SVS layout)."""
    h, w = rgb.shape[:2]
    levels = [rgb, cv2.resize(rgb, (w // 4, h // 4), interpolation=cv2.INTER_AREA)]
    desc = f"Aperio Image Library test\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG Q=85|AppMag = 40|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 85},
                subfiletype=0 if i == 0 else 1, description=desc if i == 0 else None, metadata=None,
            )


def test_clam_loader_reads_patch_footprint_on_resized_slide(tmp_path):
    rgb = render_slide(np.random.default_rng(5), 0.25, 512.0, 15.0, (228, 150, 200), 3.0, 1)
    slide_path = tmp_path / "aperio_1_4.svs"
    _write_aperio_1_4(slide_path, rgb, 0.25)
    run = _run_preprocess(slide_path, tmp_path / "out", "a14", segmentation=dict(seg_downsample=4))
    with h5py.File(run["h5"], "r") as f:
        attrs = dict(f["coords"].attrs)
    assert bool(attrs["resized"])  # no 2x level: read at level 0 and halve
    wsi = openslide.OpenSlide(str(slide_path))
    try:
        assert wsi.level_downsamples == pytest.approx((1.0, 4.0))
        ds = wsi.level_downsamples[int(attrs["patch_level"])]
    finally:
        wsi.close()
    # CLAM (Whole_Slide_Bag_FP, StitchCoords) takes patch_size × level downsample as the level-0 footprint.
    assert int(attrs["patch_size"]) * ds == pytest.approx(int(attrs["patch_size_level0"]), abs=1)


# ------------------------------------------------------------------------------- TCGA, no mpp


def test_tcga_preprocess_without_mpp_raises_and_writes_nothing(fixture_slides, tmp_path):
    with pytest.raises(MissingMppError, match="'mpp' column"):
        _run_preprocess(fixture_slides / TCGA, tmp_path, "tcga", segmentation=dict(seg_downsample=64))
    assert list(tmp_path.iterdir()) == []


def test_tcga_preprocess_with_override(fixture_slides, tmp_path):
    run = _run_preprocess(
        fixture_slides / TCGA, tmp_path, "tcga", mpp_override=0.25, segmentation=dict(seg_downsample=64)
    )
    coords, attrs = _coords_and_attrs(run["h5"])
    assert run["n"] == len(coords) > 0
    assert float(attrs["mpp"]) == 0.25
    assert int(attrs["patch_size_level0"]) == 512
    assert int(attrs["patch_level"]) == 1  # the 2x level is 0.5 µm/px with the override
    assert (coords % 512 == 0).all()
    assert (coords[:, 0] + 512 <= 4443).all() and (coords[:, 1] + 512 <= 3567).all()
    assert cv2.imread(str(run["qc"])) is not None


def test_preprocess_unreadable_slide_raises_slide_error_naming_file(fixture_slides, tmp_path):
    path = fixture_slides / "unreadable.svs"
    with pytest.raises(SlideError) as exc:
        _run_preprocess(path, tmp_path, "unreadable", patch_size=8)
    assert str(path) in str(exc.value)


# ----------------------------------------------------------------------------------- blank slide


def test_blank_slide_gives_empty_patch_h5(tmp_path):
    slide_path = tmp_path / "blank.tiff"
    write_pyramid_tiff(slide_path, np.full((1024, 1024, 3), 245, np.uint8), 0.5, aperio=False)
    run = _run_preprocess(slide_path, tmp_path / "out", "blank")
    assert run["n"] == 0
    coords, attrs = _coords_and_attrs(run["h5"])
    assert coords.shape == (0, 2) and coords.dtype == np.int64
    assert all(k in attrs for k in CLAM_ATTRS + TRIDENT_ATTRS)
    assert json.loads(run["geojson"].read_text())["features"] == []
    assert cv2.imread(str(run["qc"])) is not None


# ------------------------------------------------------------------------------------- atomicity


def test_atomic_path_failure_leaves_nothing(tmp_path):
    final = tmp_path / "result.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent and tmp != final
            tmp.write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_previous_result(tmp_path):
    final = tmp_path / "result.tsv"
    final.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("new, incomplete")
            raise KeyboardInterrupt
    assert final.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_path_success_replaces_and_is_readable(tmp_path):
    final = tmp_path / "sub" / "result.json"
    with atomic_path(final) as tmp:
        tmp.write_text("{}")
        assert not final.exists()  # nothing at the final path until the block succeeds
    assert final.read_text() == "{}"
    assert list(final.parent.iterdir()) == [final]
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask
