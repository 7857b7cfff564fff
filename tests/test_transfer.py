"""Zero-shot transfer matrix and embedding cache on a synthetic cohort with planted shared/reversed/no signal.

The ``cohort`` fixture (feature h5s, splits, quickly trained experts, embedding caches) is reused
by test_roupkt.py and test_baselines.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.cohort.bags import load_patient_bags
from wsikt.cohort.splits import make_splits
from wsikt.mil import pad_bags
from wsikt.survival.bins import risk_from_survival
from wsikt.survival.metrics import harrell_c
from wsikt.training.experts import load_expert, predict, run_expert_fold
from wsikt.training.settings import TrainSettings
from wsikt.transfer.embedding_cache import cache_keys, embed_target, read_embeddings, read_risks
from wsikt.transfer.matrix import (
    positive_sources,
    positive_table,
    selection_matrix,
    training_rows,
    transfer_matrix,
    zero_shot_rows,
)

CPU = torch.device("cpu")
DIM = 8
FOLDS = 3
# name → (patients, mechanism): risk rises with feature 0 ('shared'), falls ('reversed'), or is noise ('none')
CANCERS = {"SHA": (30, "shared"), "SHB": (30, "shared"), "REV": (30, "reversed"), "NOI": (48, "none")}
SETTINGS = TrainSettings(epochs=6, lr=2e-3, patients_per_step=8, warmup_epochs=1, n_bins=4, bin_width_days=400.0,
                         feature_norm="standardize", seed=3)


def write_features(path: Path, feats: np.ndarray) -> None:
    """A minimal features h5 of the shared contract: features, coords, flagged, root attrs."""
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats.astype(np.float32))
        f.create_dataset("coords", data=np.zeros((len(feats), 2), np.int64))
        f.create_dataset("flagged", data=np.zeros(len(feats), bool))
        f.attrs.update(encoder="synthetic", dim=feats.shape[1], mpp=0.5)


def synthetic_cancer(root: Path, name: str, n: int, mechanism: str, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Patients whose patch feature 0 is shifted by a latent z; survival depends on z per ``mechanism``."""
    z = rng.normal(size=n)
    sign = {"shared": 1.0, "reversed": -1.0, "none": 0.0}[mechanism]
    noise = rng.normal(size=n) * (0.25 if sign else 1.0)
    times = np.round(900 * np.exp(-sign * z + noise)) + 1
    events = (rng.random(n) < 0.8).astype(int)
    rows, slides, paths = [], [], {}
    for i in range(n):
        pid, sid = f"{name}-{i:03d}", f"{name}-{i:03d}-DX1"
        feats = rng.normal(size=(int(rng.integers(6, 14)), DIM))
        feats[:, 0] += 1.5 * z[i]
        paths[sid] = root / f"{sid}.h5"
        write_features(paths[sid], feats)
        rows.append({"patient_id": pid, "cancer": name, "time": float(times[i]), "event": int(events[i])})
        slides.append({"slide_id": sid, "patient_id": pid})
    return pd.DataFrame(rows), pd.DataFrame(slides), paths


def poison_test_labels(split: pd.DataFrame, fold: int, seed: int = 0) -> pd.DataFrame:
    """Shuffle the test fold's times and flip its events: anything leak-free must not notice."""
    out = split.copy()
    test = out["fold"] == fold
    rng = np.random.default_rng(seed)
    out.loc[test, "time"] = rng.permutation(out.loc[test, "time"].to_numpy())[::-1] * 3 + 11
    out.loc[test, "event"] = 1 - out.loc[test, "event"]
    return out


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> SimpleNamespace:
    """Feature h5s, splits, experts (every cancer × fold) and one embedding cache per target."""
    torch.set_num_threads(1)  # tiny models: extra threads only oversubscribe a shared 2-core CI box (10× slower)
    root = tmp_path_factory.mktemp("transfer_cohort")
    rng = np.random.default_rng(11)
    splits, bags, slides_all, paths_all = {}, {}, [], {}
    for name, (n, mech) in CANCERS.items():
        labels, slides, paths = synthetic_cancer(root, name, n, mech, rng)
        split = make_splits(labels, FOLDS, seed=42)
        splits[name] = split
        bags[name] = load_patient_bags(list(split["patient_id"]), slides, paths)
        slides_all.append(slides)
        paths_all.update(paths)
    slides_df = pd.concat(slides_all, ignore_index=True)
    experts = {}
    for name, split in splits.items():
        for k in range(FOLDS):
            d = root / "experts" / name / f"fold{k}"
            run_expert_fold(split, bags[name], k, SETTINGS, d / "model.pt", d / "predictions.tsv", d / "metrics.json", CPU)
            experts[(name, k)] = d / "model.pt"
    caches = {}
    for name, split in splits.items():
        caches[name] = root / "embeddings" / f"{name}.h5"
        embed_target(experts, list(split["patient_id"]), lambda ids: load_patient_bags(ids, slides_df, paths_all),
                     caches[name], CPU, target=name, chunk=7)
    return SimpleNamespace(root=root, splits=splits, bags=bags, slides=slides_df, paths=paths_all, experts=experts,
                           caches=caches, settings=SETTINGS)


def test_cached_embedding_equals_the_experts_forward_pass(cohort):
    emb = read_embeddings(cohort.caches["SHB"], [("SHA", 1)])[("SHA", 1)]
    risk = read_risks(cohort.caches["SHB"], [("SHA", 1)])[("SHA", 1)]
    model = load_expert(cohort.experts[("SHA", 1)], CPU)
    for i in (0, 13, 29):  # unpadded single-bag forward, independent of the cache's chunked batches
        bag = torch.from_numpy(cohort.bags["SHB"][i])
        with torch.no_grad():
            out = model(*pad_bags([bag]))
        np.testing.assert_allclose(emb[i], out["embedding"][0].numpy(), rtol=1e-5, atol=1e-5)
        surv = torch.cumprod(1 - torch.sigmoid(out["logits"]), 1).numpy()
        assert risk[i] == pytest.approx(float(risk_from_survival(surv)[0]), abs=1e-5)
    assert emb.shape == (30, 512) and emb.dtype == np.float32


def test_cache_holds_every_expert_and_self(cohort):
    assert cache_keys(cohort.caches["REV"]) == sorted(cohort.experts)
    with h5py.File(cohort.caches["REV"]) as f:
        assert [p.decode() for p in f["patient_id"][:]] == list(cohort.splits["REV"]["patient_id"])
        assert f.attrs["target"] == "REV"


def test_reader_aligns_to_requested_patient_order(cohort):
    ids = list(cohort.splits["NOI"]["patient_id"])
    order = np.random.default_rng(0).permutation(len(ids))
    full = read_embeddings(cohort.caches["NOI"], [("SHA", 0)])[("SHA", 0)]
    shuffled = read_embeddings(cohort.caches["NOI"], [("SHA", 0)], [ids[i] for i in order])[("SHA", 0)]
    np.testing.assert_array_equal(shuffled, full[order])
    with pytest.raises(KeyError, match="rerun the transfer embedding job"):
        read_embeddings(cohort.caches["NOI"], [("SHA", 0)], ["NOT-A-PATIENT"])


def test_failed_cache_write_leaves_no_file(cohort, tmp_path):
    def broken(ids):
        raise OSError("disk gone")

    with pytest.raises(OSError):
        embed_target(cohort.experts, list(cohort.splits["SHA"]["patient_id"]), broken, tmp_path / "x.h5", CPU)
    assert list(tmp_path.iterdir()) == []


def test_zero_shot_rows_score_each_test_fold_with_the_experts_own_predictions(cohort):
    split = cohort.splits["SHA"]
    risks = read_risks(cohort.caches["SHA"], patient_ids=list(split["patient_id"]))
    rows = zero_shot_rows(risks, split, "SHA")
    diag = rows[rows["source"] == "SHA"]
    assert sorted(zip(diag["source_fold"], diag["target_fold"])) == [(k, k) for k in range(FOLDS)]
    assert len(rows[rows["source"] == "SHB"]) == FOLDS * FOLDS
    # an independent path: the expert predicts the test bags directly
    r = rows[(rows["source"] == "REV") & (rows["source_fold"] == 2) & (rows["target_fold"] == 1)]["c_index"].item()
    test = (split["fold"] == 1).to_numpy()
    surv, _ = predict(load_expert(cohort.experts[("REV", 2)], CPU), [b for b, t in zip(cohort.bags["SHA"], test) if t], CPU)
    assert r == pytest.approx(harrell_c(split["time"][test], split["event"][test], risk_from_survival(surv)), abs=1e-6)
    # the diagonal equals the expert's own test C written at training time
    own = pd.read_json(cohort.experts[("SHA", 0)].parent / "metrics.json", typ="series")["c_index_test"]
    assert diag[diag["source_fold"] == 0]["c_index"].item() == pytest.approx(own, abs=1e-6)


def _matrix(cohort) -> pd.DataFrame:
    long = pd.concat([zero_shot_rows(read_risks(cohort.caches[t], patient_ids=list(s["patient_id"])), s, t)
                      for t, s in cohort.splits.items()])
    return transfer_matrix(long)


def test_matrix_shows_the_planted_structure(cohort):
    m = _matrix(cohort).set_index(["source", "target"])["c_index_mean"]
    for s, t in (("SHA", "SHB"), ("SHB", "SHA")):
        assert m[(s, t)] >= 0.6
    for other in ("SHA", "SHB"):
        assert m[("REV", other)] < 0.45 and m[(other, "REV")] < 0.45
        assert abs(m[(other, "NOI")] - 0.5) <= 0.1  # no signal to find in the target's labels
    # (a no-signal *source* expert may still latch onto an image direction by chance: not asserted)
    pos = positive_table(_matrix(cohort))
    assert pos.set_index("target").at["SHA", "sources_above_0.6"] == "SHB"


def test_positive_sources_thresholds_on_a_hand_matrix():
    m = pd.DataFrame({"source": ["A", "B", "C", "T", "D", "N"], "target": ["T"] * 6,
                      "c_index_mean": [0.55, 0.72, 0.49, 0.9, 0.6, 0.5]})
    assert positive_sources(m, "T", 0.5) == ["B", "D", "A"]  # best first, self never included; a null 0.5 is no transfer
    assert positive_sources(m, "T", 0.6) == ["B"]  # strictly above: D sits on the threshold


def test_selection_uses_training_patients_only(cohort):
    split = cohort.splits["SHA"]
    for fold in range(FOLDS):
        sel = selection_matrix(cohort.caches["SHA"], split, "SHA", fold)
        assert "SHA" not in set(sel["source"])  # self experts saw these patients
        # agrees with the all-folds training table restricted to this outer fold
        tr = training_rows(read_risks(cohort.caches["SHA"], patient_ids=list(split["patient_id"])), split, "SHA")
        ref = transfer_matrix(tr[tr["target_fold"] == fold])
        pd.testing.assert_frame_equal(sel.reset_index(drop=True), ref.reset_index(drop=True))
        poisoned = selection_matrix(cohort.caches["SHA"], poison_test_labels(split, fold), "SHA", fold)
        pd.testing.assert_frame_equal(sel, poisoned)
        for thr in (0.5, 0.6):
            assert positive_sources(sel, "SHA", thr) == positive_sources(poisoned, "SHA", thr)
    # poisoning changes the test-fold matrix, so the equality above is not vacuous
    assert not selection_matrix(cohort.caches["SHA"], poison_test_labels(split, 0), "SHA", 1).equals(
        selection_matrix(cohort.caches["SHA"], split, "SHA", 1))
