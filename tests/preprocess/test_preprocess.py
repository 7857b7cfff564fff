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

from wsikt.acquire.demo_render import render_slide, write_pyramid_tiff
from wsikt.core.io import atomic_path
from wsikt.preprocess.pipeline import PatchSettings, preprocess_slide, read_status
from wsikt.preprocess.slide import MissingMppError, SlideError, open_slide, plan_read, slide_mpp

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1.svs"

CLAM_ATTRS = ("patch_level", "patch_size", "downsample", "level_dim", "downsampled_level_dim", "name")
TRIDENT_ATTRS = (
    "patch_size_level0", "level0_magnification", "target_magnification", "overlap", "level0_width", "level0_height",
)
# Physical (µm²) area filters, Otsu with a floor: what the demo config uses.
SEG = dict(seg_downsample=16, use_otsu=True, otsu_min=8, area_unit="um2", a_t=20000, a_h=2000)


def _run_preprocess(slide_path: Path, out_dir: Path, slide_id: str, mpp_override=None, on_error="fail", **settings) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    settings.setdefault("segmentation", SEG)
    paths = dict(
        geojson=out_dir / f"{slide_id}.geojson", h5=out_dir / f"{slide_id}.h5",
        qc_tissue=out_dir / f"{slide_id}.tissue.png", qc=out_dir / f"{slide_id}.patches.png",
    )
    result = preprocess_slide(
        slide_path, slide_id, paths["geojson"], paths["h5"], paths["qc_tissue"], paths["qc"],
        PatchSettings(**settings), mpp_override=mpp_override, on_error=on_error,
    )
    return dict(n=result.n_patches, result=result, slide=slide_path, **paths)


def _coords_and_attrs(h5_path: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(h5_path, "r") as f:
        return f["coords"][:], dict(f["coords"].attrs)


@pytest.fixture(scope="module")
def cmu_run(fixture_slides, tmp_path_factory) -> dict:
    return _run_preprocess(fixture_slides / CMU, tmp_path_factory.mktemp("cmu"), "CMU-1", context_mpp=(2.0,))


@pytest.fixture(scope="module")
def pair_runs(demo_slide_pair, tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("pair_pre")
    s40, s20 = demo_slide_pair
    # 64-px patches: a few hundred on this 1 mm² tissue, so ±1% is a real tolerance.
    return _run_preprocess(s40, out, "pair40", patch_size=64), _run_preprocess(s20, out, "pair20", patch_size=64)


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


def test_plan_read_native_level_reads_patch_size_without_resize():
    # CMU-1 is 0.499 µm/px: within tolerance of 0.5, so read 256 px natively (as CLAM and TRIDENT do);
    # the true µm/px of what the encoder sees is recorded.
    plan = plan_read((1.0,), mpp0=0.499, target_mpp=0.5, patch_size=256)
    assert (plan.level, plan.read_size, plan.footprint, plan.resized) == (0, 256, 256, False)
    assert plan.patch_mpp == pytest.approx(0.499)


def test_plan_read_honours_a_given_footprint():
    # A nested 5x level: footprint 4 × 512 on a 40x scan with levels 1, 4, 16 → read level 1 (1 µm/px), halve.
    plan = plan_read((1.0, 4.0, 16.0), mpp0=0.25, target_mpp=2.0, patch_size=256, footprint=2048)
    assert (plan.level, plan.read_size, plan.footprint, plan.resized) == (1, 512, 2048, True)
    assert plan.patch_mpp == pytest.approx(2.0)


def test_plan_read_target_finer_than_scan_raises():
    with pytest.raises(SlideError, match="finer than the scan"):
        plan_read((1.0, 4.0), mpp0=0.5, target_mpp=0.25, patch_size=256)


# ----------------------------------------------------------------------------- preprocess on CMU-1


def test_preprocess_cmu_geojson(cmu_run):
    obj = json.loads(cmu_run["geojson"].read_text())
    assert obj["type"] == "FeatureCollection"
    assert obj["properties"]["status"] == "ok" and obj["properties"]["seg_level"] == 0
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
    assert cmu_run["n"] == len(coords) > 20
    footprint = int(attrs["patch_size_level0"])
    assert footprint == 256  # 0.499 µm/px is within tolerance of 0.5: read natively
    assert (coords % footprint == 0).all()  # grid anchored at level-0 (0, 0)
    assert (coords >= 0).all()
    assert (coords[:, 0] + footprint <= 2220).all()
    assert (coords[:, 1] + footprint <= 2967).all()
    assert len(np.unique(coords, axis=0)) == len(coords)


@pytest.fixture(scope="module")
def cmu_nested(fixture_slides, tmp_path_factory) -> dict:
    # 128-px patches: CMU-1 is small, and 5x parents (512 px) must fit wholly inside its tissue.
    return _run_preprocess(fixture_slides / CMU, tmp_path_factory.mktemp("nest"), "CMU-1", patch_size=128, context_mpp=(2.0,))


def test_cmu_20x_and_5x_patches_nest_exactly(cmu_nested, cmu_run):
    with h5py.File(cmu_run["h5"], "r") as f:
        assert f["mags/5x/coords"].attrs["patch_size_level0"] == 1024  # 256 px at 5x on a 0.499 scan
    with h5py.File(cmu_nested["h5"], "r") as f:
        assert list(f.attrs["magnifications"]) == ["20x", "5x"] and f.attrs["primary"] == "20x"
        fine, coarse = f["mags/20x/coords"][:], f["mags/5x/coords"][:]
        parent = f["mags/20x/parent_5x"][:]
        fine_fp = int(f["mags/20x/coords"].attrs["patch_size_level0"])
        coarse_fp = int(f["mags/5x/coords"].attrs["patch_size_level0"])
        assert np.array_equal(fine, f["coords"][:])
        assert float(f["mags/5x/coords"].attrs["target_mpp"]) == 2.0
        assert float(f["mags/5x/coords"].attrs["target_magnification"]) == pytest.approx(5.0)
    assert coarse_fp == 4 * fine_fp == 512  # an exact integer multiple
    assert (coarse % coarse_fp == 0).all()  # the coarse grid is anchored at (0, 0) too
    # Every 20x patch lies inside its parent's footprint, in level-0 pixels.
    p = coarse[parent]
    assert ((fine >= p) & (fine + fine_fp <= p + coarse_fp)).all()
    # Parents hold at most 4×4 = 16 children, every parent has one, and a parent lying wholly in
    # tissue has all 16 (DSCA's 4×4 per 5x patch).
    counts = np.bincount(parent, minlength=len(coarse))
    assert counts.max() == 16 and counts.min() >= 1
    from wsikt.preprocess.grid import tissue_fraction
    from wsikt.preprocess.tissue import resolve_segmentation, segment_tissue

    slide = open_slide(cmu_nested["slide"])
    try:
        tissue = segment_tissue(slide, 0.499, resolve_segmentation(SEG))
    finally:
        slide.close()
    within_slide = (coarse[:, 0] + coarse_fp <= 2220) & (coarse[:, 1] + coarse_fp <= 2967)
    full = (tissue_fraction(tissue, coarse, coarse_fp) >= 0.95) & within_slide
    assert full.sum() >= 1 and (counts[full] == 16).all()
    # A parent's children are exactly the kept 20x cells inside it.
    for k in np.flatnonzero(counts == 16)[:3]:
        inside = (fine[:, 0] // coarse_fp == coarse[k, 0] // coarse_fp) & (fine[:, 1] // coarse_fp == coarse[k, 1] // coarse_fp)
        assert np.array_equal(np.flatnonzero(inside), np.flatnonzero(parent == k))


def test_preprocess_cmu_h5_attrs(cmu_run):
    _, attrs = _coords_and_attrs(cmu_run["h5"])
    missing = [k for k in CLAM_ATTRS + TRIDENT_ATTRS if k not in attrs]
    assert not missing, f"missing attrs {missing}"
    assert attrs["name"] == "CMU-1"
    assert int(attrs["patch_level"]) == 0  # single-level slide
    assert int(attrs["patch_size"]) == int(attrs["read_size"]) == int(attrs["target_patch_size"]) == 256
    assert not bool(attrs["resized"]) and float(attrs["patch_mpp"]) == pytest.approx(0.499)
    assert tuple(attrs["level_dim"]) == (2220, 2967)
    assert np.allclose(attrs["downsample"], (1.0, 1.0))
    assert int(attrs["level0_width"]) == 2220 and int(attrs["level0_height"]) == 2967
    assert float(attrs["level0_magnification"]) == pytest.approx(10 / 0.499)
    assert float(attrs["target_magnification"]) == pytest.approx(20.0)
    assert int(attrs["overlap"]) == 0
    status = read_status(cmu_run["h5"])
    assert (status.status, status.n_patches, status.mpp) == ("ok", cmu_run["n"], pytest.approx(0.499))


def test_preprocess_cmu_qc_pngs(cmu_run):
    scale = 1024 / max(2220, 2967)  # longest side capped at qc_max_side=1024, aspect kept
    tissue, grid = (cv2.imread(str(cmu_run[k]), cv2.IMREAD_COLOR) for k in ("qc_tissue", "qc"))
    for img in (tissue, grid):
        assert img is not None and img.shape == (int(2967 * scale), int(2220 * scale), 3)
    # Contours are drawn in green on the tissue image; the grid image draws dark patch outlines.
    green = (tissue[..., 1] == 160) & (tissue[..., 0] == 0) & (tissue[..., 2] == 0)
    assert green.sum() > 100
    assert ((grid == 30).all(-1)).sum() > cmu_run["n"] * 10


def test_preprocess_leaves_no_temp_files(cmu_run):
    out_dir = cmu_run["h5"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        p.name for p in (cmu_run["geojson"], cmu_run["h5"], cmu_run["qc"], cmu_run["qc_tissue"])
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
    assert arr.shape == (256, 256, 3) and arr.dtype == np.uint8
    # A kept patch is mostly tissue: not blank glass, and not uniform.
    assert arr.mean() < 230
    assert arr.std() > 10
    sat = cv2.cvtColor(arr, cv2.COLOR_RGB2HSV)[..., 1]
    assert np.median(sat) > 20


def test_trident_style_read_of_patch_h5(cmu_run):
    # TRIDENT reads patch_size_level0 at level 0 (or the best level) and resizes to the target size.
    with h5py.File(cmu_run["h5"], "r") as f:
        coords = f["coords"][:]
        a = f["coords"].attrs
        size0 = int(a["patch_size_level0"])
        target_mag, mag0 = float(a["target_magnification"]), float(a["level0_magnification"])
        w0, h0 = int(a["level0_width"]), int(a["level0_height"])
    assert size0 * mag0 / target_mag == pytest.approx(256, rel=0.01)
    assert (coords[:, 0] + size0 <= w0).all() and (coords[:, 1] + size0 <= h0).all()


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
    assert len(c20) > 100
    assert abs(len(c40) - len(c20)) <= 0.01 * len(c20)  # same number of patches ±1%
    # Same physical footprint: patch_size_level0 × level-0 mpp.
    um40 = int(a40["patch_size_level0"]) * float(a40["mpp"])
    um20 = int(a20["patch_size_level0"]) * float(a20["mpp"])
    assert um40 == pytest.approx(um20) == pytest.approx(64 * 0.5)
    # Both reach 20x natively (the 40x pyramid has a 2x level): no resize.
    assert int(a40["patch_level"]) == 1 and not bool(a40["resized"])
    assert int(a20["patch_level"]) == 0 and not bool(a20["resized"])
    # The grids are the same in µm: the patches coincide.
    um_c40 = {tuple(c) for c in (c40 * 0.25).round().astype(int)}
    um_c20 = {tuple(c) for c in (c20 * 0.5).round().astype(int)}
    assert len(um_c40 & um_c20) >= 0.99 * max(len(um_c40), len(um_c20))


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
    run = _run_preprocess(slide_path, tmp_path / "out", "a14", segmentation={**SEG, "seg_downsample": 4})
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
    with pytest.raises(MissingMppError) as exc:
        _run_preprocess(fixture_slides / TCGA, tmp_path, "tcga")
    msg = str(exc.value)
    assert "'mpp' column" in msg and "tcga" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_tcga_preprocess_with_override(fixture_slides, tmp_path):
    run = _run_preprocess(fixture_slides / TCGA, tmp_path, "tcga", mpp_override=0.25)
    coords, attrs = _coords_and_attrs(run["h5"])
    assert run["n"] == len(coords) > 0
    assert float(attrs["mpp"]) == 0.25
    assert int(attrs["patch_size_level0"]) == 512
    assert int(attrs["patch_level"]) == 1  # the 2x level is 0.5 µm/px with the override
    assert (coords % 512 == 0).all()
    assert (coords[:, 0] + 512 <= 4443).all() and (coords[:, 1] + 512 <= 3567).all()
    assert cv2.imread(str(run["qc"])) is not None


# ------------------------------------------------------------------- bad inputs: status, not a crash

BAD_INPUTS = [
    ("unreadable.svs", "failed to read tiles"),
    ("unopenable.tiff", "OpenSlide failed to open it"),
    ("broken.svs", "not a slide format OpenSlide can open"),
    (TCGA, "'mpp' column"),
]


@pytest.mark.parametrize(("name", "message"), BAD_INPUTS)
def test_bad_input_fails_with_one_line_naming_the_file(fixture_slides, tmp_path, name, message):
    path = fixture_slides / name
    with pytest.raises(SlideError) as exc:
        _run_preprocess(path, tmp_path, "bad", on_error="fail")
    msg = str(exc.value)
    assert message in msg and "\n" not in msg
    assert name in msg
    assert list(tmp_path.iterdir()) == []  # nothing that looks complete


@pytest.mark.parametrize(("name", "message"), BAD_INPUTS)
def test_bad_input_skipped_gives_status_and_empty_outputs(fixture_slides, tmp_path, caplog, name, message):
    run = _run_preprocess(fixture_slides / name, tmp_path, "bad", on_error="skip", context_mpp=(2.0,))
    assert run["result"].status == "failed" and message in run["result"].reason
    # One clear error line in the log.
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    status = read_status(run["h5"])
    assert (status.status, status.n_patches) == ("failed", 0) and message in status.reason
    with h5py.File(run["h5"], "r") as f:
        assert f["coords"].shape == (0, 2) and f["mags/5x/coords"].shape == (0, 2)
        assert f["mags/20x/parent_5x"].shape == (0,)
    gj = json.loads(run["geojson"].read_text())
    assert gj["features"] == [] and gj["properties"]["status"] == "failed"
    assert cv2.imread(str(run["qc"])) is not None


def test_mpp_override_rescues_the_tcga_slide_in_skip_mode(fixture_slides, tmp_path):
    run = _run_preprocess(fixture_slides / TCGA, tmp_path, "tcga", on_error="skip", mpp_override=0.25)
    assert run["result"].status == "ok" and run["n"] > 0


def test_bad_slides_are_excluded_downstream_with_their_reason(fixture_slides, tmp_path):
    import pandas as pd

    from wsikt.preprocess.pipeline import usable_patients

    bad = _run_preprocess(fixture_slides / "unreadable.svs", tmp_path, "bad", on_error="skip")
    good = _run_preprocess(fixture_slides / CMU, tmp_path, "good", on_error="skip")
    blank_path = tmp_path / "blank.tiff"
    write_pyramid_tiff(blank_path, np.full((512, 512, 3), 245, np.uint8), 0.5, aperio=False)
    blank = _run_preprocess(blank_path, tmp_path, "blank", on_error="skip")
    assert (bad["result"].status, good["result"].status, blank["result"].status) == ("failed", "ok", "no_tissue")
    slides = pd.DataFrame({"slide_id": ["bad", "good", "blank", "bad2"], "patient_id": ["P1", "P1", "P2", "P3"], "cancer": "X"})
    paths = {"bad": bad["h5"], "good": good["h5"], "blank": blank["h5"], "bad2": bad["h5"]}
    keep, excluded = usable_patients(slides, paths)
    assert keep == {"P1"}  # one usable slide is enough; the other is skipped
    reasons = dict(zip(excluded["patient_id"], excluded["reason"]))
    assert set(reasons) == {"P2", "P3"}
    assert "blank: no_tissue" in reasons["P2"]
    assert "bad2: failed" in reasons["P3"] and "failed to read tiles" in reasons["P3"]


# ----------------------------------------------------------------------------------- blank slide


def test_blank_slide_gives_empty_patch_h5_with_no_tissue_status(tmp_path):
    slide_path = tmp_path / "blank.tiff"
    write_pyramid_tiff(slide_path, np.full((1024, 1024, 3), 245, np.uint8), 0.5, aperio=False)
    run = _run_preprocess(slide_path, tmp_path / "out", "blank", context_mpp=(2.0,))
    assert run["n"] == 0 and run["result"].status == "no_tissue"
    coords, attrs = _coords_and_attrs(run["h5"])
    assert coords.shape == (0, 2) and coords.dtype == np.int64
    assert all(k in attrs for k in CLAM_ATTRS + TRIDENT_ATTRS)
    assert read_status(run["h5"]).status == "no_tissue"
    assert json.loads(run["geojson"].read_text())["features"] == []
    assert cv2.imread(str(run["qc"])) is not None


def test_nest_from_coarse_keeps_every_child_of_each_tissue_5x_patch(fixture_slides, cmu_nested, tmp_path):
    """nest_from coarse (DSCA's big-to-small patching): 5x cells tested for tissue, each with all 16 20x children."""
    run = _run_preprocess(fixture_slides / CMU, tmp_path, "CMU-1", patch_size=128, context_mpp=(2.0,), nest_from="coarse")
    with h5py.File(run["h5"], "r") as f:
        fine, coarse, parent = f["mags/20x/coords"][:], f["mags/5x/coords"][:], f["mags/20x/parent_5x"][:]
        fine_fp = int(f["mags/20x/coords"].attrs["patch_size_level0"])
    with h5py.File(cmu_nested["h5"], "r") as f:
        fine_first = f["mags/20x/coords"][:]
    assert len(coarse) > 0 and np.all(np.bincount(parent, minlength=len(coarse)) == 16)
    offset = fine - coarse[parent]
    assert np.all((offset % fine_fp == 0) & (offset >= 0) & (offset < 4 * fine_fp))  # level-0 steps of one child
    assert len(np.unique(np.concatenate([parent[:, None], offset], 1), axis=0)) == len(fine)  # 16 distinct cells
    kept_here, kept_fine_first = {tuple(c) for c in fine}, {tuple(c) for c in fine_first}
    assert kept_here - kept_fine_first  # children the 20x tissue test drops (background) are kept


# --------------------------------------------------------------------------- settings validation


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (dict(contour_fn="corners"), "preprocess.contour_fn"),
        (dict(grid="diagonal"), "preprocess.grid"),
        (dict(grid="clam", context_mpp=(2.0,)), "preprocess.grid"),
        (dict(nest_from="middle", context_mpp=(2.0,)), "preprocess.nest_from"),
        (dict(nest_from="coarse"), "preprocess.nest_from"),
    ],
)
def test_bad_patch_settings_name_the_key(settings, key):
    with pytest.raises(ValueError, match=key):
        PatchSettings(**settings)


def test_context_mpp_must_be_an_integer_multiple(fixture_slides, tmp_path):
    with pytest.raises(ValueError, match="preprocess.context_mpp"):
        _run_preprocess(fixture_slides / CMU, tmp_path, "cmu", context_mpp=(1.5 * 0.5 + 0.1,))


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
