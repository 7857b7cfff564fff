"""DSCA conformance: wsikt's DSCA and NLL against the outputs of DSCA's own code (liupei101/DSCA).

The numbers in tests/reference/papers/dsca/reference.npz come from DSCA's ``WSIHierNet``
(model/HierNet.py, config_hier.yaml's settings), ``rearrange_coord``, ``SurvMLE`` and
tools/big_to_small_patching.py at commit a749074cb3415c3a6eb83bee39191bdb69968dcc, run outside this
repository by tests/reference/papers/dsca/make_reference.py with our weights copied into theirs
(see README.md there). DSCA's code is not needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.cohort.bags import PatientBag, load_patient_bags
from wsikt.formats.features_h5 import FeatureWriter
from wsikt.formats.patches_h5 import PatchLevel
from wsikt.mil import build_model
from wsikt.mil.dsca import DSCA, grid_positions
from wsikt.preprocess.grid import nest_levels
from wsikt.survival.losses import nll_loss

REF = Path(__file__).parents[1] / "reference" / "papers" / "dsca" / "reference.npz"
D, H, T = 16, 32, 4  # the reference's small dims (DSCA: 1024 → 384, 4 bins)
PAIR = ("20x", "5x")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


def _patient(ref: dict[str, np.ndarray]) -> PatientBag:
    p = {k[len("input/"):]: v for k, v in ref.items() if k.startswith("input/")}
    return PatientBag(
        features={"20x": p["fine"], "5x": p["coarse"]}, primary="20x", parents={PAIR: p["parents"]},
        slots={PAIR: p["slots"]}, ratios={PAIR: 4}, coords={"20x": p["fine_xy"], "5x": p["coarse_xy"]},
        slide_index={"20x": p["slide"][p["parents"]], "5x": p["slide"]},
    )


def _ours(ref: dict[str, np.ndarray]) -> DSCA:
    model = DSCA(D, T, hidden=H).eval()
    model.load_state_dict({k[len("state/"):]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("state/")})
    return model


def test_forward_equals_dscas_hiernet(ref):
    """Hazards and the pooled representation of a two-slide patient, eval mode, same weights: 1e-5."""
    model = _ours(ref)
    with torch.no_grad():
        out = model(model.collate([_patient(ref)], torch.device("cpu")))
    np.testing.assert_allclose(torch.sigmoid(out["logits"]).numpy(), ref["paper/hazards"], atol=1e-5, rtol=0)
    emb = out["embedding"].numpy()
    assert emb.shape == (1, 512)
    np.testing.assert_allclose(emb[:, :H], ref["paper/rep"], atol=1e-5, rtol=0)
    assert not emb[:, H:].any()  # the 384-d (here H-d) representation, zero-padded to the 512-d contract


def test_row_order_does_not_matter(ref):
    """DSCA needs 20x rows grouped 16 per 5x patch and 5x rows in CLAM's grid order; wsikt takes both in any order."""
    bag = _patient(ref)
    rng = np.random.default_rng(1)
    fine, coarse = rng.permutation(len(bag.features["20x"])), rng.permutation(len(bag.features["5x"]))
    place = np.argsort(coarse)  # new row of each old coarse row
    shuffled = PatientBag(
        features={"20x": bag.features["20x"][fine], "5x": bag.features["5x"][coarse]}, primary="20x",
        parents={PAIR: place[bag.parents[PAIR][fine]]}, slots={PAIR: bag.slots[PAIR][fine]}, ratios={PAIR: 4},
        coords={"20x": bag.coords["20x"][fine], "5x": bag.coords["5x"][coarse]},
        slide_index={"20x": bag.slide_index["20x"][fine], "5x": bag.slide_index["5x"][coarse]},
    )
    model = _ours(ref)
    with torch.no_grad():
        a = model(model.collate([bag], torch.device("cpu")))
        b = model(model.collate([shuffled], torch.device("cpu")))
    torch.testing.assert_close(a["logits"], b["logits"], atol=1e-6, rtol=0)
    torch.testing.assert_close(a["attention"][0, coarse], b["attention"][0], atol=1e-6, rtol=0)


def test_position_grid_equals_dscas_rearranged_coords(ref):
    """Per-slide rank discretisation, slides side by side (DSCA's rearrange_coord)."""
    np.testing.assert_array_equal(grid_positions(ref["input/coarse_xy"], ref["input/slide"]), ref["paper/positions"])


def test_nll_equals_dscas_survmle(ref):
    """DSCA trains with SurvMLE, α = 0.1: our nll_loss with α = 0.1."""
    loss = nll_loss(torch.from_numpy(ref["loss/hazards"]), torch.from_numpy(ref["loss/bins"]),
                    torch.from_numpy(ref["loss/events"]), alpha=float(ref["loss/alpha"]))
    assert abs(loss.item() - float(ref["loss/value"])) < 1e-6


def test_build_model_gives_the_papers_dsca():
    """experts.model dsca: 384 hidden, 8-head Transformer per stream, 4-head square pooling, 5-wide Conv1d."""
    agg = build_model("dsca", 1024, 4, dropout=0.6).aggregator
    assert agg.hidden == 384 and agg.square_pool.num_heads == 4 and agg.coarse_conv.kernel_size == (5,)
    layer = agg.fine_encoder.layers[0]
    assert len(agg.fine_encoder.layers) == 1 and layer.self_attn.num_heads == 8 and layer.linear1.out_features == 384
    assert layer.dropout.p == 0.6 and agg.attention.v[2].p == 0.25 and agg.fine_conv.groups == 1


def test_child_layout_is_dscas_with_its_offset_bug_fixed(tmp_path, ref):
    """Each 5x patch's 4×4 children: DSCA's cell order (k = 4·row + col), spaced by the child's level-0 footprint.

    DSCA's tools/big_to_small_patching.py steps children by the patch size in pixels of the level it
    read (256), but CLAM's coords are level-0 pixels: on a 40x scan a 20x child spans 512 level-0
    pixels, so DSCA's children overlap and cover only part of their parent. wsikt's preprocessing
    nests the grids in level-0 pixels and derives slots from coords; this checks the files it writes.
    """
    footprint = 512  # a 256-px 20x patch on a 40x scan (level 0 = 0.25 µm/px)
    rng = np.random.default_rng(0)
    cells = np.array([(x, y) for x in range(16) for y in range(12)])[rng.choice(192, 80, replace=False)]
    levels = nest_levels((cells * footprint).astype(np.int64), 0.5, footprint, [2.0])
    path = tmp_path / "s.h5"
    written = [PatchLevel(lv.name, lv.coords, {"patch_size_level0": lv.footprint}, lv.parents) for lv in levels]
    writer = FeatureWriter(path, written, 3, multi=True)
    n = sum(len(lv.coords) for lv in levels)
    writer.write(0, rng.normal(size=(n, 3)).astype(np.float32), np.ones(n, bool))
    writer.close({"encoder": "toy", "dim": 3}, [0.5, 2.0])
    (bag,) = load_patient_bags(["p"], pd.DataFrame({"slide_id": ["s"], "patient_id": ["p"]}), {"s": path}, scales=PAIR)

    parents, slots, r = bag.link(*PAIR)
    assert r == 4 and np.all(parents >= 0) and np.all((slots >= 0) & (slots < 16))
    offset = bag.coords["20x"] - bag.coords["5x"][parents]
    dsca_cells = ref["patching/offsets_as_written"] / 256  # DSCA's (col, row) of cell k, in units of its step
    np.testing.assert_array_equal(offset, dsca_cells[slots] * footprint)  # DSCA's order, level-0 step
    assert len(np.unique(np.stack([parents, slots], 1), axis=0)) == len(parents)  # no two children share a cell
    assert not np.array_equal(offset, ref["patching/offsets_as_written"][slots])  # DSCA's step as written is wrong here


ROOT = Path(__file__).resolve().parents[2]
PENDING_KEYS: set[str] = set()  # every preset key is in the schema


def _drop_unknown(node: dict, schema: dict, prefix: str = "") -> set[str]:
    """Remove (in place) keys the schema does not define yet; return their dotted names."""
    dropped = set()
    props = schema.get("properties", {})
    for key in list(node):
        name = f"{prefix}{key}"
        if key not in props:
            dropped.add(name)
            del node[key]
        elif isinstance(node[key], dict) and props[key].get("type") == "object" and "properties" in props[key]:
            dropped |= _drop_unknown(node[key], props[key], name + ".")
    return dropped


def test_preset_is_the_papers_setup():
    """config/papers/dsca.yaml validates against the schema and builds the paper's model and training."""
    import yaml

    from wsikt.config.validate import validate_config
    from wsikt.training.settings import TrainSettings

    schema_path = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    cfg = yaml.safe_load((ROOT / "config" / "papers" / "dsca.yaml").read_text())
    assert cfg["features"]["color_norm"] == "macenko"
    dropped = _drop_unknown(cfg, yaml.safe_load(schema_path.read_text()))
    assert dropped <= PENDING_KEYS, f"preset keys the schema does not know: {sorted(dropped - PENDING_KEYS)}"
    validate_config(cfg, schema_path, source="config/papers/dsca.yaml")
    assert cfg["gdc"]["projects"] == ["TCGA-BRCA", "TCGA-LGG"] and cfg["endpoint"] == "OS"
    assert cfg["preprocess"]["target_mpp"] == 0.5 and cfg["preprocess"]["context_mpp"] == [2.0]
    assert cfg["preprocess"]["patch_size"] == 256 and cfg["features"]["encoder"] == "resnet50"
    from wsikt.preprocess.settings import PatchSettings

    assert PatchSettings.from_config(cfg["preprocess"]).nest_from == "coarse"  # big-to-small: all 16 children
    exp = cfg["experts"]
    settings = TrainSettings.from_config(exp)
    assert (settings.model, settings.loss, settings.alpha, settings.bins_kind, settings.n_bins) == ("dsca", "nll", 0.1, "quantile", 4)
    assert (settings.lr, settings.weight_decay, settings.patients_per_step, settings.epochs) == (8e-5, 5e-4, 16, 150)
    assert exp["feature_norm"] == "none" and exp["null_gate"]["inner_folds"] == 0 and cfg["roupkt"]["targets"] == []
    assert cfg["transfer"]["matrix"] is False  # one model per cancer: no zero-shot transfer matrix
    agg = build_model("dsca", 1024, 4, dropout=exp["dropout"], **exp["model_params"]).aggregator
    assert agg.scales == ("20x", "5x") and agg.hidden == 384 and agg.fine_encoder.layers[0].dropout.p == 0.6
