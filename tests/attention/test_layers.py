"""Attention layers of multi-scale bags: each magnification's values land on that magnification's patch coords,
slide by slide, for patients with one or two slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mil.test_models import FINE_PX, LEVELS, _cells, write_features_h5

from wsikt.attention.maps import expert_attention, split_by_slide
from wsikt.cohort.bags import load_patient_bags
from wsikt.mil import Expert
from wsikt.mil.base import Aggregator, Batch

CPU = torch.device("cpu")
SCALES = ("20x", "5x")


class CoordEcho(Aggregator):
    """A stand-in multi-scale model whose 'attention' of each patch is a code of its own coords
    (the test features' columns 0-1 are the coords in 20x patch units)."""

    def __init__(self) -> None:
        super().__init__()
        self.scales = SCALES
        self.head = torch.nn.Linear(1, 2)

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = batch["mask0"].sum(1, keepdim=True).float()
        return {"logits": self.head(emb), "embedding": emb}

    def patch_attention(self, batch: Batch, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        maps = {}
        for s, name in enumerate(self.scales):
            code = torch.zeros(batch[f"mask{s}"].shape)
            code[batch[f"mask{s}"]] = batch[f"rows{s}"][:, 0] + 1000 * batch[f"rows{s}"][:, 1] + 1
            maps[name] = code
        return maps


def test_multi_scale_attention_splits_back_onto_each_slides_coords(tmp_path):
    rng = np.random.default_rng(1)
    rows, paths = [], {}
    for p in range(4):
        for s in range(2 if p % 2 == 0 else 1):  # P0 and P2 have two slides
            sid = f"P{p}-S{s}"
            paths[sid] = tmp_path / f"{sid}.h5"
            write_features_h5(paths[sid], _cells(rng, int(rng.integers(4, 20))), slide_tag=p, seed=10 * p + s, levels=("20x", "5x"))
            rows.append((sid, f"P{p}"))
    slides = pd.DataFrame(rows, columns=["slide_id", "patient_id"])
    patients = [f"P{p}" for p in range(4)]
    model = Expert(CoordEcho(), 6, 2)
    maps = expert_attention(model, load_patient_bags(patients, slides, paths, SCALES), CPU, batch=3)
    by_patient = slides.groupby("patient_id")["slide_id"].apply(list).to_dict()
    seen = 0
    for pid, m in zip(patients, maps):
        layers = split_by_slide(pid, m, by_patient[pid], paths)
        assert [s for s, _ in layers] == sorted(by_patient[pid])
        for _, per_mag in layers:
            assert set(per_mag) == set(SCALES)
            for mag, layer in per_mag.items():
                assert layer.patch_size == FINE_PX * LEVELS[mag]
                expected = layer.coords[:, 0] / FINE_PX + 1000 * layer.coords[:, 1] / FINE_PX + 1
                np.testing.assert_allclose(layer.attention, expected, rtol=1e-6)
                seen += len(layer.coords)
    assert seen == sum(len(v) for m in maps for v in m.values())


def test_attention_that_does_not_fit_the_slides_names_the_fix(tmp_path):
    paths = {"S": tmp_path / "S.h5"}
    write_features_h5(paths["S"], _cells(np.random.default_rng(0), 5), slide_tag=0, seed=0, levels=("20x",))
    with pytest.raises(ValueError, match="rerun the bag_index rule"):
        split_by_slide("P", {"primary": np.ones(6)}, ["S"], paths)
