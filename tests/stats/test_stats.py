"""The statistics stage on the tiny transfer cohort: tables from prediction files, matrix-cell CIs from the
embedding caches, and the opt-in retrained null (labels permuted within training folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.transfer_cohort import CPU, FOLDS  # the session fixture `cohort` comes from conftest.py

from wsikt.formats.stats_tables import read_stats_table, write_stats_table
from wsikt.stats.matrix import matrix_ci
from wsikt.stats.retrain import permute_training_labels, retrained_null
from wsikt.stats.settings import StatsSettings
from wsikt.stats.tables import chance_table, compare_table, retrained_summary
from wsikt.training.settings import NullGate
from wsikt.transfer.embedding_cache import read_risks
from wsikt.transfer.matrix import transfer_matrix, zero_shot_rows

FAST = StatsSettings(chance_permutations=200, n_boot=200)


def _expert_predictions(cohort) -> list:
    return [p.parent / "predictions.tsv" for p in cohort.experts.values()]


def test_chance_table_reproduces_the_reported_c_and_separates_signal_from_noise(cohort, tmp_path):
    chance = chance_table({"expert": _expert_predictions(cohort)}, FAST).set_index("cancer")
    for cancer in cohort.splits:
        folds = [pd.read_json(cohort.experts[(cancer, k)].parent / "metrics.json", typ="series") for k in range(FOLDS)]
        assert chance.at[cancer, "c_index_mean"] == pytest.approx(np.nanmean([m["c_index_test"] for m in folds]))
        assert chance.at[cancer, "null_mean"] == pytest.approx(0.5, abs=0.03) and chance.at[cancer, "n_perm"] == 200
    assert chance.at["SHA", "p_above"] < 0.01 and chance.at["REV", "p_above"] < 0.01  # planted signal
    write_stats_table(chance.reset_index(), "chance", tmp_path / "chance.tsv")
    back = read_stats_table(tmp_path / "chance.tsv", "chance")
    assert back["below_chance"].dtype == bool and len(back) == len(cohort.splits)
    with pytest.raises(ValueError, match="lacks columns"):
        write_stats_table(chance.reset_index().drop(columns=["p_below"]), "chance", tmp_path / "bad.tsv")


def test_compare_table_pairs_each_method_with_the_own_expert(cohort):
    preds = {"expert": _expert_predictions(cohort), "copy": _expert_predictions(cohort)}
    cmp = compare_table(preds, FAST)
    assert set(cmp["cancer"]) == set(cohort.splits) and (cmp["delta"] == 0).all()
    assert (cmp["ci_low"] == 0).all() and (cmp["ci_high"] == 0).all() and (cmp["p_value"] == 1).all()
    with pytest.raises(ValueError, match="'expert' predictions"):
        compare_table({"copy": preds["copy"]}, FAST)


def test_matrix_ci_means_equal_the_transfer_matrix(cohort):
    targets = sorted(cohort.splits)
    splits = []
    for t in targets:
        path = cohort.root / f"split_{t}.tsv"
        cohort.splits[t].to_csv(path, sep="\t", index=False)
        splits.append(path)
    table = matrix_ci([cohort.caches[t] for t in targets], splits, FAST).set_index(["source", "target"])
    long = pd.concat([zero_shot_rows(read_risks(cohort.caches[t], patient_ids=list(cohort.splits[t]["patient_id"])),
                                     cohort.splits[t], t) for t in targets])
    matrix = transfer_matrix(long).set_index(["source", "target"])
    np.testing.assert_allclose(table.loc[matrix.index, "c_index_mean"], matrix["c_index_mean"], rtol=1e-9)
    assert (table["ci_low"] <= table["c_index_mean"]).all() and (table["c_index_mean"] <= table["ci_high"]).all()
    # the reversed mechanism ranks the shared cancers backwards: those cells are below chance, shared ones are not
    assert table.at[("REV", "SHA"), "below_chance"] and not table.at[("SHB", "SHA"), "below_chance"]


def test_permuted_training_labels_keep_the_test_fold_and_the_training_labels():
    split = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "cancer": "X", "time": np.arange(12) * 10.0 + 5,
                          "event": np.arange(12) % 2, "fold": np.arange(12) % 3})
    out = permute_training_labels(split, 1, np.random.default_rng(0))
    test = split["fold"] == 1
    pd.testing.assert_frame_equal(out[test], split[test])
    pairs = lambda df: sorted(map(tuple, df.loc[~test, ["time", "event"]].to_numpy()))  # noqa: E731
    assert pairs(out) == pairs(split) and not out.loc[~test, "time"].equals(split.loc[~test, "time"])


def test_retrained_null_refits_experts_and_roupkt_on_permuted_labels(cohort):
    """Two permutations on the planted SHA cancer: the refits' pooled C sits near chance, below the real expert's."""
    split, bags = cohort.splits["SHA"], cohort.bags["SHA"]
    from wsikt.transfer.roupkt import RoupktSettings

    rows = retrained_null(split, bags, 2, cohort.settings, NullGate(), CPU, seed=1, roupkt=RoupktSettings(topk=2),
                          cache_h5=cohort.caches["SHA"])
    assert len(rows) == 2 * FOLDS * 2 and set(rows["method"]) == {"expert", "roupkt"}
    chance = chance_table({"expert": _expert_predictions(cohort)}, FAST)
    summary = retrained_summary(rows, chance).set_index(["method", "cancer"])
    real = chance.set_index("cancer").at["SHA", "c_index_mean"]
    assert summary.at[("expert", "SHA"), "retrained_n"] == 2
    assert abs(summary.at[("expert", "SHA"), "retrained_mean"] - 0.5) < 0.15 and summary.at[("expert", "SHA"), "retrained_mean"] < real
    assert rows["c_index_test"].notna().all() and summary.at[("roupkt", "SHA"), "retrained_n"] == 2
    assert summary.at[("expert", "SHA"), "retrained_p_above"] == pytest.approx(1 / 3)  # add-one p with 2 refits


def test_settings_name_the_config_key_and_keep_permutations_out_of_the_cheap_rules():
    for key, value in (("chance_permutations", 0), ("n_boot", 0), ("level", 1.0), ("below_chance_p", 0.0), ("permutations", -1)):
        with pytest.raises(ValueError, match=f"stats.{key}"):
            StatsSettings.from_config({key: value})
    s = StatsSettings.from_config({"permutations": 5, "n_boot": 300})
    assert s.permutations == 5 and "permutations" not in s.cheap() and s.cheap()["n_boot"] == 300
