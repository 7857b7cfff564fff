"""Heatmaps against a planted truth: risk is set by a few key patches hidden among many neutral ones.

An expert trained by the project's own training code must attend to the key patches (attention
ROC-AUC key vs neutral ≥ 0.9 on held-out patients), and the written layers (h5 and QuPath GeoJSON)
must put each patch's attention at exactly that patch's level-0 coordinates.

ABMIL can also read the keys with its attention turned *away* from them (a key patch's features
are large enough that a small weight still carries them): over training seeds 1–8 on this cohort,
6 end attending to the keys (AUC 0.95–0.99) and 2 away from them (AUC 0.1–0.2, with a worse training
loss). The test fixes the seed; that ambiguity is why the demo's attention–density ρ is reported as
information, not as a target.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsikt.attention.maps import write_cancer_attention
from wsikt.formats.attention import read_attention_geojson, read_attention_h5
from wsikt.formats.features_h5 import write_features
from wsikt.formats.patches_h5 import PatchLevel
from wsikt.survival.bins import assign_bins, fit_time_bins, risk_from_survival
from wsikt.training.experts import predict, save_expert, train_expert
from wsikt.training.settings import TrainSettings

CPU = torch.device("cpu")
DIM, N_PATIENTS, N_PATCHES, SIDE = 8, 72, 30, 512  # SIDE: a 20x patch at 40x level 0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_cohort(tmp_path, seed: int = 0, strength: float = 6.0):
    """Patients with 0–3 key patches (a fixed direction in feature space) among neutral noise; survival
    falls with the number of key patches. Every third patient has two slides. Features h5 per slide."""
    rng = np.random.default_rng(seed)
    key_dir = rng.normal(size=DIM)
    key_dir *= strength / np.linalg.norm(key_dir)
    slides, paths, truth, n_keys = [], {}, {}, []
    for p in range(N_PATIENTS):
        pid = f"P{p:03d}"
        m = int(rng.integers(0, 4))
        n_keys.append(m)
        feats = rng.normal(size=(N_PATCHES, DIM)).astype(np.float32)
        key = np.zeros(N_PATCHES, bool)
        key[rng.choice(N_PATCHES, m, replace=False)] = True
        feats[key] += key_dir
        cells = rng.choice(100, N_PATCHES, replace=False)  # patches on a 10 × 10 grid, shuffled rows
        coords = np.stack([cells % 10, cells // 10], 1).astype(np.int64) * SIDE
        cut = N_PATCHES // 2 if p % 3 == 0 else N_PATCHES
        for s, rows in enumerate((slice(0, cut), slice(cut, N_PATCHES))):
            if rows.start == rows.stop:
                continue
            sid = f"{pid}-DX{s + 1}"
            path = tmp_path / f"{sid}.h5"
            level = PatchLevel("20x", coords[rows], {"patch_size_level0": SIDE, "patch_size": 256})
            write_features(path, level, feats[rows], {"encoder": "planted"}, 0.25)
            slides.append({"slide_id": sid, "patient_id": pid})
            paths[sid] = path
            truth[sid] = {tuple(c): bool(k) for c, k in zip(coords[rows].tolist(), key[rows])}
    n_keys = np.array(n_keys)
    t_event = np.exp(np.log(3000.0) - 0.9 * n_keys + 0.25 * rng.normal(size=N_PATIENTS))
    t_cens = rng.uniform(2000.0, 9000.0, N_PATIENTS)
    split = pd.DataFrame({"patient_id": [f"P{p:03d}" for p in range(N_PATIENTS)], "cancer": "PLNT",
                          "time": np.round(np.minimum(t_event, t_cens)), "event": (t_event <= t_cens).astype(int),
                          "fold": np.arange(N_PATIENTS) % 4})
    return split, pd.DataFrame(slides), paths, truth


def test_trained_expert_attends_to_the_planted_key_patches_at_their_coordinates(tmp_path):
    split, slides, paths, truth = planted_cohort(tmp_path)
    from wsikt.cohort.bags import load_patient_bags

    bags = load_patient_bags(list(split["patient_id"]), slides, paths)
    train = (split["fold"] != 0).to_numpy()
    times, events = split["time"].to_numpy(float), split["event"].to_numpy(int)
    edges = fit_time_bins(times[train], events[train], "quantile", 4, 365)
    settings = TrainSettings(model="abmil", epochs=30, lr=1e-3, patients_per_step=4, feature_norm="standardize", seed=2)
    idx = np.flatnonzero(train)
    model, _ = train_expert([bags[i] for i in idx], assign_bins(times, edges)[idx], events[idx], len(edges) + 1, settings, CPU)
    surv, _ = predict(model, bags, CPU)
    model_path, pred_path = tmp_path / "model.pt", tmp_path / "predictions.tsv"
    save_expert(model_path, model, DIM, len(edges) + 1, edges, settings, cancer="PLNT", fold=0)
    preds = split[["patient_id"]].assign(risk=risk_from_survival(surv))
    preds.to_csv(pred_path, sep="\t", index=False)

    layers = write_cancer_attention("expert", "PLNT", "abmil", split, slides, paths, [model_path], [pred_path],
                                    tmp_path / "attention.h5", tmp_path / "geojson", CPU)
    test_slides = set(slides.loc[slides["patient_id"].isin(split.loc[~train, "patient_id"]), "slide_id"])
    attrs, stored = read_attention_h5(tmp_path / "attention.h5")
    assert attrs["cancer"] == "PLNT" and {s.slide_id for s in stored} == test_slides == {s.slide_id for s in layers}

    labels, scores = [], []
    for s in stored:
        m = s.maps["20x"]
        # the h5 layer is at exactly the slide's patch coords, and the GeoJSON layer says the same
        assert {tuple(c) for c in m.coords.tolist()} == set(truth[s.slide_id]) and m.patch_size == SIDE
        geo = read_attention_geojson(tmp_path / "geojson" / f"{s.slide_id}.geojson")["20x"]
        np.testing.assert_array_equal(geo.coords, m.coords)
        np.testing.assert_allclose(geo.attention, m.attention, rtol=1e-6)
        assert s.risk == pytest.approx(float(preds.set_index("patient_id").at[s.patient_id, "risk"]))
        labels += [truth[s.slide_id][tuple(c)] for c in m.coords.tolist()]
        scores += m.attention.tolist()
    # a patient's attention over all its slides sums to 1 (the share of its bag)
    per_patient = pd.DataFrame({"p": [s.patient_id for s in stored], "a": [s.maps["20x"].attention.sum() for s in stored]})
    np.testing.assert_allclose(per_patient.groupby("p")["a"].sum(), 1.0, rtol=1e-5)
    auc = roc_auc_score(labels, scores)
    assert sum(labels) >= 10 and auc >= 0.9, auc


def test_geojson_tiles_are_quPath_objects_with_level0_squares(tmp_path):
    from wsikt.formats.attention import PatchAttention, SlideAttention, write_attention_geojson

    m = PatchAttention(np.array([[0, 512], [1024, 0]]), np.array([0.25, 0.75]), 512)
    (path,) = write_attention_geojson(tmp_path, [SlideAttention("S1", "P1", 2, 0.5, {"20x": m})], "abmil")
    obj = json.loads(path.read_text())
    assert obj["type"] == "FeatureCollection" and obj["properties"]["slide_id"] == "S1"
    f0 = obj["features"][0]
    assert f0["geometry"] == {"type": "Polygon", "coordinates": [[[0, 512], [512, 512], [512, 1024], [0, 1024], [0, 512]]]}
    assert f0["properties"]["objectType"] == "tile" and f0["properties"]["classification"] == {"name": "attention 20x"}
    assert f0["properties"]["measurements"] == {"attention": 0.25, "attention_percentile": 0.0}
    assert len({f["id"] for f in obj["features"]}) == 2
