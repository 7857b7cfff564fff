"""Aggregator registry and multi-scale bags: every model trains, ignores padding, round-trips; h5 bags link levels."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.cohort.bags import PRIMARY, PatientBag, load_patient_bags
from wsikt.core.model_facts import model_scales
from wsikt.formats.features_h5 import write_features
from wsikt.formats.patches_h5 import PatchLevel
from wsikt.mil import MODELS, build_model, pad_bags
from wsikt.training.experts import load_expert, predict, save_expert, train_expert
from wsikt.training.settings import TrainSettings

CPU = torch.device("cpu")
DIM = 6
FINE_PX = 256  # level-0 footprint of a 20x patch (level 0 = 20x); 10x = 512, 5x = 1024
LEVELS = {"20x": 1, "10x": 2, "5x": 4}  # footprint multiple of the 20x patch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Features h5 files following the shared contract
# ---------------------------------------------------------------------------------------------


def _features(coords: np.ndarray, level: str, slide_tag: float, rng: np.random.Generator) -> np.ndarray:
    """Columns 0-1: coords in 20x patch units, 2: slide tag, 3: level multiple, rest noise (lets tests check links)."""
    f = rng.normal(size=(len(coords), DIM)).astype(np.float32)
    f[:, :2] = coords / FINE_PX
    f[:, 2] = slide_tag
    f[:, 3] = LEVELS[level]
    return f


def write_features_h5(path: Path, cells_20x: np.ndarray, slide_tag: float, seed: int, levels=("20x", "10x", "5x"),
                      direct_parents: bool = True, extra_coarse: bool = False) -> dict[str, np.ndarray]:
    """A features h5 with ``levels``; 20x patches at the given grid cells, coarser levels = cells containing them.

    ``extra_coarse`` adds a 5x patch with no finer children; ``direct_parents`` False stores only
    adjacent-level parents (20x→10x, 10x→5x), so 20x→5x must be composed.
    """
    rng = np.random.default_rng(seed)
    coords = {}
    for name in levels:
        cells = np.unique(cells_20x // LEVELS[name], axis=0)
        if extra_coarse and name == levels[-1]:
            cells = np.vstack([cells, cells.max(0) + 3])
        coords[name] = (cells * LEVELS[name] * FINE_PX).astype(np.int64)[rng.permutation(len(cells))]
    with h5py.File(path, "w") as f:
        f.attrs["magnifications"] = list(levels)
        f.attrs["primary"] = levels[0]
        f.attrs.update(encoder="toy", dim=DIM, mpp=0.5)
        for i, name in enumerate(levels):
            g = f.create_group(f"mags/{name}")
            feats = _features(coords[name], name, slide_tag, rng)
            g.create_dataset("features", data=feats)
            c = g.create_dataset("coords", data=coords[name])
            c.attrs.update(patch_size_level0=FINE_PX * LEVELS[name], patch_size=256, patch_level=0)
            g.create_dataset("flagged", data=np.zeros(len(feats), bool))
            for j, coarse in enumerate(levels[i + 1:]):
                if not direct_parents and j > 0:
                    continue
                size = FINE_PX * LEVELS[coarse]
                lookup = {tuple(xy // size): k for k, xy in enumerate(coords[coarse])}
                g.create_dataset(f"parent_{coarse}", data=np.array([lookup[tuple(xy // size)] for xy in coords[name]], np.int64))
            if i == 0:
                f.create_dataset("features", data=feats)
                top = f.create_dataset("coords", data=coords[name])
                top.attrs.update(c.attrs)
                f.create_dataset("flagged", data=np.zeros(len(feats), bool))
    return coords


def _cells(rng: np.random.Generator, n: int, side: int = 12) -> np.ndarray:
    grid = np.array([(x, y) for x in range(side) for y in range(side)])
    return grid[rng.choice(len(grid), size=n, replace=False)]


@pytest.fixture(scope="module")
def h5_cohort(tmp_path_factory) -> tuple[list[str], pd.DataFrame, dict[str, Path]]:
    """6 patients, 1-2 slides each, 20x/10x/5x features; patient P0 has two slides."""
    out = tmp_path_factory.mktemp("feats")
    rng = np.random.default_rng(0)
    rows, paths = [], {}
    for p in range(6):
        for s in range(2 if p in (0, 3) else 1):
            sid = f"P{p}-S{s}"
            paths[sid] = out / f"{sid}.h5"
            write_features_h5(paths[sid], _cells(rng, int(rng.integers(4, 30))), slide_tag=10 * p + s, seed=100 * p + s,
                              direct_parents=(p != 3), extra_coarse=(p == 0 and s == 1))
            rows.append((sid, f"P{p}"))
    return [f"P{p}" for p in range(6)], pd.DataFrame(rows, columns=["slide_id", "patient_id"]), paths


# ---------------------------------------------------------------------------------------------
# Multi-scale bags
# ---------------------------------------------------------------------------------------------


def test_single_scale_bags_are_primary_arrays(h5_cohort):
    ids, slides, paths = h5_cohort
    bags = load_patient_bags(ids, slides, paths)
    assert all(isinstance(b, np.ndarray) and b.dtype == np.float32 for b in bags)
    with h5py.File(paths["P0-S0"]) as a, h5py.File(paths["P0-S1"]) as b:
        np.testing.assert_array_equal(bags[0], np.concatenate([a["features"][:], b["features"][:]]))


@pytest.mark.parametrize("pair", [("20x", "10x"), ("10x", "5x"), ("20x", "5x")])
def test_parent_links_point_at_the_containing_patch_across_slides(h5_cohort, pair):
    ids, slides, paths = h5_cohort
    fine, coarse = pair
    bags = load_patient_bags(ids, slides, paths, scales=("20x", "10x", "5x"))
    ratio = LEVELS[coarse] // LEVELS[fine]
    for bag in bags:
        assert isinstance(bag, PatientBag) and bag.primary == "20x"
        parents, slots, r = bag.link(fine, coarse)
        f, c = bag.scale(fine), bag.scale(coarse)
        assert r == ratio and len(parents) == len(f) and np.all(parents >= 0) and parents.max() < len(c)
        linked = c[parents]
        np.testing.assert_array_equal(f[:, 2], linked[:, 2])  # same slide (offsets right over slides)
        # the fine patch (20x units) lies inside its parent's footprint, in the cell the slot says
        rel = f[:, :2] - linked[:, :2]
        cell = rel / LEVELS[fine]
        assert np.all((cell >= 0) & (cell < ratio))
        np.testing.assert_array_equal(slots, (cell[:, 1] * ratio + cell[:, 0]).astype(int))
    two_slides = bags[0]
    with h5py.File(paths["P0-S0"]) as a:
        n_first = len(a[f"mags/{coarse}/features"])
    assert two_slides.link(fine, coarse)[0].max() >= n_first  # second slide's links are offset


def test_bags_carry_each_rows_coords_and_slide(h5_cohort):
    """Position-aware models (DSCA) read each row's level-0 coords and which of the patient's slides it is from."""
    ids, slides, paths = h5_cohort
    bags = load_patient_bags(ids, slides, paths, scales=("20x", "5x"))
    for bag in bags:
        for name in ("20x", "5x"):
            f = bag.scale(name)
            np.testing.assert_array_equal(bag.coords[name] / FINE_PX, f[:, :2])  # columns 0-1 hold the coords
            tags = np.unique(f[:, 2])  # slide tags in load (sorted slide id) order
            np.testing.assert_array_equal(bag.slide_index[name], np.searchsorted(tags, f[:, 2]))
    assert set(bags[0].slide_index["5x"]) == {0, 1}


def test_missing_magnification_names_the_file_and_the_config_key(tmp_path):
    path = tmp_path / "only20.h5"
    write_features_h5(path, _cells(np.random.default_rng(1), 5), 0.0, 0, levels=("20x",))
    slides = pd.DataFrame({"slide_id": ["s"], "patient_id": ["p"]})
    with pytest.raises(ValueError, match=r"only20\.h5.*5x.*preprocess\.context_mpp"):
        load_patient_bags(["p"], slides, {"s": path}, scales=model_scales("dsca"))


def test_single_magnification_file_is_one_level(tmp_path):
    path = tmp_path / "one.h5"
    feats = np.random.default_rng(0).normal(size=(7, DIM)).astype(np.float32)
    write_features(path, PatchLevel("20x", np.zeros((7, 2), np.int64), {}), feats, {"encoder": "x"}, 0.5)
    slides = pd.DataFrame({"slide_id": ["s"], "patient_id": ["p"]})
    (bag,) = load_patient_bags(["p"], slides, {"s": path}, scales=("20x",))
    np.testing.assert_array_equal(bag.scale("20x"), feats)
    np.testing.assert_array_equal(bag.scale(PRIMARY), feats)
    with pytest.raises(ValueError, match="preprocess.context_mpp"):
        load_patient_bags(["p"], slides, {"s": path}, scales=("20x", "5x"))


def test_model_scales():
    assert model_scales("abmil") == (PRIMARY,)
    assert model_scales("dsca") == ("20x", "5x")
    assert model_scales("crossfusion") == ("20x", "10x", "5x")
    assert model_scales("dsca", scales=["40x", "10x"]) == ("40x", "10x")
    assert build_model("dsca", DIM, 4, scales=["40x", "10x"]).scales == ("40x", "10x")
    with pytest.raises(KeyError, match=r"experts\.model"):
        model_scales("nope")


# ---------------------------------------------------------------------------------------------
# Every registry model: shapes, padding invariance, training, checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ms_bags(h5_cohort) -> list[PatientBag]:
    ids, slides, paths = h5_cohort
    return load_patient_bags(ids, slides, paths, scales=("20x", "10x", "5x"))


def _bags_for(name: str, ms_bags: list[PatientBag]) -> list:
    return ms_bags if model_scales(name) != (PRIMARY,) else [b.x for b in ms_bags]


@pytest.mark.parametrize("name", MODELS)
def test_bag_alone_equals_bag_padded_in_a_batch(name, ms_bags):
    torch.manual_seed(0)
    model = build_model(name, DIM, 5, dropout=0.25).eval()  # eval: dropout off
    s = len(model.scales)
    mean = torch.linspace(-1, 2, DIM).repeat(s, 1)
    model.set_normalisation(mean, torch.linspace(0.5, 3, DIM).repeat(s, 1))  # padding normalises to ≠ 0
    bags = _bags_for(name, ms_bags)
    with torch.no_grad():
        batch = model.collate(bags, CPU)
        assert batch["mask0"].shape[0] == len(bags) and not bool(batch["mask0"].all())  # some padding
        out = model(batch)
        assert out["logits"].shape == (len(bags), 5) and out["embedding"].shape == (len(bags), 512)
        for i, bag in enumerate(bags):
            alone = model(model.collate([bag], CPU))
            torch.testing.assert_close(out["logits"][i], alone["logits"][0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out["embedding"][i], alone["embedding"][0], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_and_round_trips(name, ms_bags, tmp_path):
    bags = _bags_for(name, ms_bags)
    bins = np.array([0, 3, 1, 2, 0, 3])
    events = np.array([1, 0, 1, 1, 0, 1])
    settings = TrainSettings(model=name, epochs=2, lr=1e-3, patients_per_step=4, feature_norm="standardize")
    model, history = train_expert(bags, bins, events, 4, settings, CPU)
    assert len(history) == 2 and all(np.isfinite(history))
    surv, emb = predict(model, bags, CPU)
    assert surv.shape == (6, 4) and emb.shape == (6, 512)
    assert np.all(np.diff(surv, axis=1) <= 1e-7)
    path = tmp_path / f"{name}.pt"
    save_expert(path, model, DIM, 4, np.array([365.0, 730.0, 1095.0]), settings)
    loaded = load_expert(path, CPU)
    surv2, emb2 = predict(loaded, bags, CPU)
    np.testing.assert_array_equal(surv, surv2)
    np.testing.assert_array_equal(emb, emb2)
    fresh, _ = predict(build_model(name, DIM, 4).eval(), bags, CPU)
    assert not np.allclose(fresh, surv)  # the checkpoint carried the trained weights


@pytest.mark.parametrize("name", MODELS)
def test_patch_attention_is_a_share_of_each_bag_or_a_clear_refusal(name, ms_bags):
    """Aggregator.patch_attention: per magnification, ≥ 0, zero on padding, each bag's row sums to 1,
    equal alone and padded; models without it raise AttentionUnavailable and are not in ATTENTION_MODELS."""
    from wsikt.core.model_facts import ATTENTION_MODELS
    from wsikt.mil import AttentionUnavailable

    torch.manual_seed(0)
    model = build_model(name, DIM, 5).eval()
    bags = _bags_for(name, ms_bags)
    batch = model.collate(bags, CPU)
    with torch.no_grad():
        if name not in ATTENTION_MODELS:
            with pytest.raises(AttentionUnavailable, match="report.heatmaps"):
                model.attend(batch)
            return
        out, maps = model.attend(batch)
        torch.testing.assert_close(out["logits"], model(batch)["logits"])
        assert set(maps) <= set(model.scales) and maps
        for scale, a in maps.items():
            s = model.scales.index(scale)
            mask = batch[f"mask{s}"]
            assert a.shape == mask.shape and bool((a >= 0).all()) and bool((a[~mask] == 0).all())
            torch.testing.assert_close(a.sum(1), torch.ones(len(bags)))
            for i, bag in enumerate(bags):
                alone = model.attend(model.collate([bag], CPU))[1][scale][0]
                torch.testing.assert_close(a[i, : len(alone)], alone, atol=1e-6, rtol=1e-5)


def test_max_pooling_attention_counts_the_features_a_patch_wins():
    model = build_model("max", 3, 2).eval()
    with torch.no_grad():
        for p in model.aggregator.fc[0].parameters():
            p.zero_()
        model.aggregator.fc[0].weight[:, 0] = 1.0  # every hidden feature = feature 0: patch with the largest wins all
        x = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0]]])
        _, maps = model.attend(model.collate([x[0].numpy()], CPU))
    torch.testing.assert_close(maps[PRIMARY][0], torch.tensor([0.0, 1.0, 0.0]))


def test_multi_scale_model_refuses_single_scale_bags(ms_bags):
    model = build_model("crossfusion", DIM, 4)
    with pytest.raises(KeyError, match="scales=model.scales"):
        model.collate([b.x for b in ms_bags], CPU)


def test_pad_bags_is_kept_for_single_scale_callers():
    bags = [torch.ones(2, 3), torch.ones(4, 3)]
    x, mask = pad_bags(bags)
    assert x.shape == (2, 4, 3) and mask.sum(1).tolist() == [2, 4]
    model = build_model("abmil", 3, 4, dropout=0.0).eval()
    out = model(x, mask)  # the (x, mask) call still works
    torch.testing.assert_close(out["logits"][0], out["logits"][1])  # identical rows, any count


def test_transmil_landmarks_cover_long_bags():
    """A bag longer than the 256 landmarks: padded in a batch with a short one, same output as alone."""
    torch.manual_seed(0)
    model = build_model("transmil", DIM, 3, dropout=0.0).eval()
    g = np.random.default_rng(3)
    bags = [g.normal(size=(700, DIM)).astype(np.float32), g.normal(size=(20, DIM)).astype(np.float32)]
    with torch.no_grad():
        out = model(model.collate(bags, CPU))
        for i, b in enumerate(bags):
            torch.testing.assert_close(out["embedding"][i], model(model.collate([b], CPU))["embedding"][0], atol=1e-5, rtol=1e-4)


def test_unknown_model_and_params_name_config_keys():
    with pytest.raises(KeyError, match=r"experts\.model"):
        build_model("clam", DIM, 4)
    with pytest.raises(ValueError, match=r"experts\.model_params"):
        build_model("abmil", DIM, 4, heads=3)
    with pytest.raises(ValueError, match=r"experts\.loss"):
        build_model("abmil", DIM, 4, loss="hinge")


def test_torch_free_model_facts_match_the_registries():
    """wsikt.core.model_facts (read while the workflow parses, without torch) names what the torch registries hold."""
    from wsikt.core import model_facts
    from wsikt.mil import REGISTRY
    from wsikt.survival import losses

    assert set(model_facts.MODEL_NAMES) == set(REGISTRY) == set(MODELS)
    assert set(model_facts.LOSS_NAMES) == set(losses.LOSSES)
    for name in model_facts.MODEL_NAMES:
        if name in model_facts.DEFAULT_SCALES:  # the built model reads the scales the config check assumes
            assert tuple(build_model(name, in_dim=8, n_bins=4).aggregator.scales) == model_scales(name)
