"""Slides as users bring them: Aperio pyramids with non-integer level downsamples, 20x and 40x scans
of one tissue, single-level TIFFs, and context patches that run past the slide edge."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from support.slide_factory import tissue_rgb, write_aperio, write_single_level

from wsikt.preprocess.pipeline import PatchSettings, preprocess_slide
from wsikt.preprocess.slide import SlideError, open_slide, read_level_rgb, read_level_scaled
from wsikt.preprocess.tissue import resolve_segmentation, segment_tissue

MPP_SEG = dict(seg_downsample=16, seg_level_by="mpp", area_unit="um2", a_t=20000, a_h=2000)


def _preprocess(slide: Path, out: Path, segmentation: dict, **settings) -> tuple[dict, Path]:
    out.mkdir(parents=True, exist_ok=True)
    h5 = out / "s.h5"
    preprocess_slide(slide, "s", out / "s.geojson", h5, out / "t.png", out / "p.png",
                     PatchSettings(segmentation=segmentation, **settings), on_error="fail")
    return json.loads((out / "s.geojson").read_text()), h5


@pytest.fixture(scope="module")
def aperio(tmp_path_factory) -> Path:
    """A 40x Aperio SVS, 6000 × 4400 px, levels at OpenSlide downsamples ≈ 4.003 and 16.05 (not 4 and 16)."""
    path = tmp_path_factory.mktemp("aperio") / "aperio.svs"
    write_aperio(path, tissue_rgb(6000, 4400, [(0.4, 0.5, 0.2), (0.75, 0.4, 0.1)]), 0.25)
    return path


def test_aperio_levels_are_chosen_by_mpp_not_by_openslides_best_level(aperio, tmp_path):
    slide = open_slide(aperio)
    try:
        ds = slide.level_downsamples
        assert 4 < ds[1] < 4.01 and 16 < ds[2] < 16.1  # as on real TCGA SVS files
        assert slide.get_best_level_for_downsample(16) == 1  # CLAM's choice skips the 16× level
        clam = segment_tissue(slide, 0.25, resolve_segmentation({**MPP_SEG, "seg_level_by": "clam"}))
        ours = segment_tissue(slide, 0.25, resolve_segmentation(MPP_SEG))
        level2 = slide.level_dimensions[2]
    finally:
        slide.close()
    assert clam.level == 1
    assert ours.level == 2 and ours.mask.shape == level2[::-1]  # read natively, no resize
    assert ours.downsample[0] * 0.25 == pytest.approx(4.0, rel=0.01)
    assert len(ours.contours) == 2
    geo, h5 = _preprocess(aperio, tmp_path, MPP_SEG)
    assert geo["properties"]["seg_level"] == 2 and geo["properties"]["status"] == "ok"


def test_20x_and_40x_scans_of_one_tissue_are_segmented_at_the_same_mpp(demo_slide_pair):
    masks = []
    for path, mpp in zip(demo_slide_pair, (0.25, 0.5)):
        slide = open_slide(path)
        try:
            tissue = segment_tissue(slide, mpp, resolve_segmentation(MPP_SEG))
            size = slide.dimensions
        finally:
            slide.close()
        assert tissue.downsample[0] * mpp == pytest.approx(4.0, rel=0.02)  # 4 µm/px on both scans
        masks.append((tissue.mask, size))
    (m40, _), (m20, _) = masks
    assert abs(m40.shape[0] - m20.shape[0]) <= 1 and abs(m40.shape[1] - m20.shape[1]) <= 1
    h, w = min(m40.shape[0], m20.shape[0]), min(m40.shape[1], m20.shape[1])
    a, b = m40[:h, :w] > 0, m20[:h, :w] > 0
    assert a.any() and (a & b).sum() / (a | b).sum() >= 0.95


def test_a_scan_coarser_than_the_segmentation_mpp_is_segmented_at_level_0_not_enlarged(demo_slide_pair):
    slide = open_slide(demo_slide_pair[1])  # 0.5 µm/px; seg_downsample 1 asks for 0.25 µm/px
    try:
        tissue = segment_tissue(slide, 0.5, resolve_segmentation({**MPP_SEG, "seg_downsample": 1}))
        size = slide.dimensions
    finally:
        slide.close()
    assert tissue.level == 0 and tissue.mask.shape == size[::-1] and tissue.downsample == (1.0, 1.0)


def _strips_and_one_read(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    slide = open_slide(path)
    try:
        strips = read_level_scaled(slide, 0, size, strip_pixels=1000)  # a strip per 512 level rows
        one_read = cv2.resize(read_level_rgb(slide, 0), size, interpolation=cv2.INTER_AREA)
    finally:
        slide.close()
    return strips, one_read


def test_strip_reading_equals_one_read_shrunk(tmp_path, fixture_slides):
    path = tmp_path / "s.tiff"
    write_single_level(path, 2048, 3072, 0.25, (256, 512, 1536, 2560))
    strips, one_read = _strips_and_one_read(path, (256, 384))  # 8×: strips of whole output rows
    assert np.array_equal(strips, one_read)
    # CMU-1 (2220 × 2967) to 555 × 741 is 4.004× vertically: strip edges move by < 0.5 level px.
    strips, one_read = _strips_and_one_read(fixture_slides / "CMU-1-Small-Region.svs", (555, 741))
    assert strips.shape == one_read.shape and np.abs(strips.astype(int) - one_read).mean() < 1.0


@pytest.fixture(scope="module")
def single_level(tmp_path_factory) -> Path:
    """A one-level 12,000 × 10,000 px tiled TIFF at 0.25 µm/px with a tissue block (1.2e8 px: above
    what the old code would read whole)."""
    path = tmp_path_factory.mktemp("single") / "single.tiff"
    write_single_level(path, 12000, 10000, 0.25, (2048, 2048, 7168, 6144))
    return path


def test_single_level_slide_is_segmented_from_strips(single_level, tmp_path):
    geo, h5 = _preprocess(single_level, tmp_path, {**MPP_SEG, "seg_downsample": 64})
    assert geo["properties"]["status"] == "ok" and geo["properties"]["seg_level"] == 0
    assert geo["properties"]["downsample"] == pytest.approx([64, 64], rel=0.01)  # 16 µm/px from level 0
    with h5py.File(h5, "r") as f:
        coords = f["coords"][:]
    # The tissue block is 5120 × 4096 level-0 px: 10 × 8 patches of 512 px (20x), ± the blurred rim.
    assert 70 <= len(coords) <= 110
    assert coords[:, 0].min() >= 1536 and coords[:, 0].max() <= 7168


def test_single_level_slide_too_large_for_clams_level_choice_names_the_slide_and_the_fix(single_level):
    slide = open_slide(single_level)
    try:
        with pytest.raises(SlideError) as err:
            segment_tissue(slide, 0.25, resolve_segmentation({**MPP_SEG, "seg_level_by": "clam"}), name=str(single_level))
    finally:
        slide.close()
    message = str(err.value)
    assert "\n" not in message and str(single_level) in message and "seg_level_by: mpp" in message


def test_context_patches_past_the_slide_edge_record_their_overhang(tmp_path):
    # Tissue up to the right and bottom edges of a 5000 × 3000 px 40x slide: 5x cells (2048 level-0 px)
    # at x = 4096 and y = 2048 run past the edge.
    path = tmp_path / "edge.svs"
    write_aperio(path, tissue_rgb(5000, 3000, [(0.8, 0.7, 0.4)]), 0.25)
    _, h5 = _preprocess(path, tmp_path / "out", MPP_SEG, context_mpp=(2.0,))
    with h5py.File(h5, "r") as f:
        fine, fine_over = f["mags/20x/coords"][:], f["mags/20x/overhang"][:]
        coarse, over = f["mags/5x/coords"][:], f["mags/5x/overhang"][:]
        policy = str(f.attrs["edge_policy"])
    assert "dropped" in policy and "overhang" in policy
    # Finest level: whole cells only.
    assert (fine[:, 0] + 512 <= 5000).all() and (fine[:, 1] + 512 <= 3000).all() and (fine_over == 0).all()
    assert fine[:, 0].max() == 4096  # the last whole cell (4096 + 512 ≤ 5000 < 4608 + 512)
    # Coarse level: the edge cells are kept, with the fraction outside the slide.
    inside = (np.minimum(coarse + 2048, (5000, 3000)) - coarse).prod(1) / 2048**2
    assert np.allclose(over, 1 - inside)
    corner = np.flatnonzero((coarse[:, 0] == 4096) & (coarse[:, 1] == 2048))
    assert len(corner) == 1 and over[corner[0]] == pytest.approx(1 - (904 * 952) / 2048**2)
