"""A synthetic multi-cancer cohort with planted shared / reversed / no signal, trained experts and
embedding caches: the session fixture ``cohort`` of tests/transfer and tests/training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from wsikt.cohort.bags import load_patient_bags
from wsikt.cohort.splits import make_splits
from wsikt.formats.features_h5 import write_features
from wsikt.formats.patches_h5 import PatchLevel
from wsikt.training.experts import run_expert_fold
from wsikt.training.settings import TrainSettings
from wsikt.transfer.embedding_cache import embed_target

CPU = torch.device("cpu")
DIM = 8
FOLDS = 3
# name → (patients, mechanism): risk rises with feature 0 ('shared'), falls ('reversed'), or is noise ('none')
CANCERS = {"SHA": (30, "shared"), "SHB": (30, "shared"), "REV": (30, "reversed"), "NOI": (48, "none")}
SETTINGS = TrainSettings(epochs=6, lr=2e-3, patients_per_step=8, warmup_epochs=1, n_bins=4, bin_width_days=400.0,
                         feature_norm="standardize", seed=3, drop_last=False, lr_schedule="cosine", projection_dropout=0.25)


def write_synthetic_features(path: Path, feats: np.ndarray) -> None:
    """One slide's features h5, written by the format's own writer (20x, no coords)."""
    level = PatchLevel("20x", np.zeros((len(feats), 2), np.int64), {})
    write_features(path, level, feats.astype(np.float32), {"encoder": "synthetic", "dim": feats.shape[1]}, 0.5)


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
        write_synthetic_features(paths[sid], feats)
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
