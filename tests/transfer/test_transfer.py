"""Zero-shot transfer matrix and embedding cache on a synthetic cohort with planted shared/reversed/no signal.

The ``cohort`` fixture (tests/support/transfer_cohort.py, via conftest.py) is shared with
test_roupkt.py and test_baselines.py.
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from support.transfer_cohort import CPU, FOLDS, SETTINGS, poison_test_labels  # noqa: F401

from wsikt.mil import pad_bags
from wsikt.survival.bins import risk_from_survival
from wsikt.survival.metrics import harrell_c
from wsikt.training.experts import load_expert, predict
from wsikt.transfer.embedding_cache import cache_keys, embed_target, read_embeddings, read_risks
from wsikt.transfer.matrix import (
    positive_sources,
    positive_table,
    selection_matrix,
    training_rows,
    transfer_matrix,
    zero_shot_rows,
)


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
