"""The split strategies beyond stratified folds: site-preserved, external cohort, a paper's fold files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsikt.cohort.site_splits import make_site_splits, patient_sites, site_folds, tcga_site
from wsikt.cohort.split_files import check_fold_file_count, fold_file_paths, read_fold_file, splits_from_files
from wsikt.cohort.split_settings import SplitSettings, split_patients
from wsikt.cohort.splits import inner_folds, make_external_splits
from wsikt.transfer.matrix import training_rows, zero_shot_rows


def _tcga_cohort(n_sites: int = 14, seed: int = 0, cancer: str = "BLCA") -> pd.DataFrame:
    """Patients with TCGA barcodes over ``n_sites`` sites of very unequal size, events ~45%."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sites):
        code = f"{chr(65 + s // 10)}{s % 10}"
        for i in range(int(3 + 40 * rng.random() ** 2)):
            rows.append(dict(patient_id=f"TCGA-{code}-{i:04d}", cancer=cancer, time=float(rng.integers(10, 3000)),
                             event=int(rng.random() < 0.45)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# site
# ---------------------------------------------------------------------------------------------


def test_site_of_a_tcga_barcode_or_the_sheet_column():
    assert tcga_site("TCGA-2F-A9KO") == "2F" and tcga_site("DEMO-SA-0001") is None
    sheet = pd.DataFrame({"patient_id": ["TCGA-2F-A9KO", "TCGA-2F-A9KO", "P1", "TCGA-ZF-AA5H"],
                          "site": ["2F", "2F", "Leeds", None]})
    assert patient_sites(sheet) == {"TCGA-2F-A9KO": "2F", "P1": "Leeds", "TCGA-ZF-AA5H": "ZF"}
    with pytest.raises(ValueError, match=r"patient P2 has no site.*add the column"):
        patient_sites(pd.DataFrame({"patient_id": ["P2"]}), "own.tsv")
    with pytest.raises(ValueError, match=r"patient P1 has slides from sites A and B"):
        patient_sites(pd.DataFrame({"patient_id": ["P1", "P1"], "site": ["A", "B"]}))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_site_splits_keep_each_site_in_one_fold_and_balance_events(seed):
    cohort = _tcga_cohort(seed=seed)
    sites = {p: tcga_site(p) for p in cohort["patient_id"]}
    split = make_site_splits(cohort, sites, n_folds=5, seed=seed)
    assert split.groupby("site")["fold"].nunique().max() == 1  # no site in two folds
    assert sorted(split["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = split.groupby("fold")["event"].agg(["sum", "count"])
    per_site = split.groupby("site")["event"].sum()
    # events per fold within one site's events of each other: no finer balance is possible in general
    assert per_fold["sum"].max() - per_fold["sum"].min() <= per_site.max()
    # and far better than keeping the sites in a random order, filled fold by fold
    naive = split.groupby("site")["event"].sum().sample(frac=1, random_state=seed)
    naive_folds = np.array_split(naive.to_numpy(), 5)
    assert per_fold["sum"].std() <= np.std([f.sum() for f in naive_folds]) + 1e-9
    again = make_site_splits(cohort.sample(frac=1, random_state=3), sites, n_folds=5, seed=seed)
    assert again.set_index("patient_id")["fold"].equals(split.set_index("patient_id")["fold"])  # deterministic


def test_fewer_sites_than_folds_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"cancer X: 3 tissue-source site\(s\) cannot fill 5 site-preserved folds; lower experts.folds"):
        site_folds(["a", "a", "b", "c", "c"], [1, 0, 1, 0, 1], 5, what="cancer X")
    sheet = _tcga_cohort(n_sites=3).assign(slide_id=lambda d: d["patient_id"] + "-DX1")
    with pytest.raises(ValueError, match="cannot fill 5 site-preserved folds"):
        SplitSettings(strategy="site").check_sheet(sheet, 5, "own.tsv")


def test_inner_folds_stay_in_the_training_patients_and_keep_sites_together():
    cohort = _tcga_cohort(n_sites=20, seed=4)
    split = make_site_splits(cohort, {p: tcga_site(p) for p in cohort["patient_id"]}, 5, seed=4)
    inner = inner_folds(split, 2, n_inner=3, seed=4, key="experts.null_gate.inner_folds")
    assert set(inner.index) == set(split.index[split["fold"] != 2])  # the outer test fold never enters
    inner_sites = split.loc[inner.index, "site"]
    assert pd.DataFrame({"site": inner_sites, "inner": inner}).groupby("site")["inner"].nunique().max() == 1


# ---------------------------------------------------------------------------------------------
# external
# ---------------------------------------------------------------------------------------------


def test_external_split_never_trains_on_the_test_cohort():
    cohort = _tcga_cohort(seed=5)
    cohorts = {p: ("CPTAC" if i % 3 == 0 else "TCGA") for i, p in enumerate(cohort["patient_id"])}
    split = make_external_splits(cohort, cohorts, ["CPTAC"])
    test_ids = {p for p, c in cohorts.items() if c == "CPTAC"}
    assert set(split.loc[split["fold"] == 0, "patient_id"]) == test_ids
    assert set(split["fold"]) == {0, -1}
    trained = split.loc[split["fold"] != 0, "patient_id"]  # how every rule reads fold 0's training set
    assert not set(trained) & test_ids
    inner = inner_folds(split, 0, n_inner=3, seed=1)
    assert not set(split.loc[inner.index, "patient_id"]) & test_ids
    # transfer scores only the external test fold, and selects sources on the training cohort only
    risks = {("OTHER", 0): np.arange(len(split), dtype=float)}
    zs, tr = zero_shot_rows(risks, split, "BLCA"), training_rows(risks, split, "BLCA")
    assert list(zs["target_fold"]) == [0] and int(zs["n"].iloc[0]) == len(test_ids)
    assert list(tr["target_fold"]) == [0] and int(tr["n"].iloc[0]) == len(split) - len(test_ids)


def test_external_mode_checks_the_sheet_and_each_cancer():
    with pytest.raises(ValueError, match="needs splits.test_cohorts"):
        SplitSettings(strategy="external")
    assert SplitSettings(strategy="external", test_cohorts=("B",)).n_folds(5) == 1
    sheet = pd.DataFrame({"slide_id": ["s1", "s2"], "patient_id": ["p1", "p2"], "cancer": ["X", "X"]})
    ext = SplitSettings(strategy="external", test_cohorts=("B",))
    with pytest.raises(ValueError, match="needs a 'cohort' value on every row"):
        ext.check_sheet(sheet, 5, "own.tsv")
    with pytest.raises(ValueError, match=r"test_cohorts \['B'\] not in the 'cohort' column"):
        ext.check_sheet(sheet.assign(cohort="A"), 5, "own.tsv")
    patients = pd.DataFrame({"patient_id": ["p1", "p2"], "cancer": "X", "time": [1.0, 2.0], "event": [1, 0]})
    with pytest.raises(ValueError, match=r"cancer X: no labelled patient with patches in its test cohort"):
        make_external_splits(patients, {"p1": "A", "p2": "A"}, ["B"])


# ---------------------------------------------------------------------------------------------
# fold files (CROPKT / CLAM: train,test; CrossFusion: ,train,val; DSCA: npz)
# ---------------------------------------------------------------------------------------------


def _write_clam_csv(path, train, test, test_name="test"):
    """A fold file as CLAM/CROPKT/CrossFusion write it: an unnamed index column, columns of unequal length."""
    n = max(len(train), len(test))
    pd.DataFrame({"train": list(train) + [None] * (n - len(train)),
                  test_name: list(test) + [None] * (n - len(test))}).to_csv(path)


def _patients(ids):
    return pd.DataFrame({"patient_id": ids, "cancer": "BLCA", "time": np.arange(1, len(ids) + 1, dtype=float),
                         "event": [i % 2 for i in range(len(ids))]})


def test_fold_files_in_the_papers_formats_give_the_split(tmp_path):
    ids = [f"TCGA-2F-A{i:03d}" for i in range(12)]
    folds = [ids[0:4], ids[4:8], ids[8:11]]  # ids[11]: in no test set, trained on by every file
    for k, test in enumerate(folds):
        _write_clam_csv(tmp_path / f"splits_{k}.csv", [p for p in ids if p not in test], test,
                        test_name="val" if k == 1 else "test")  # CrossFusion names its test set val
    assert (tmp_path / "splits_0.csv").read_text().splitlines()[0] == ",train,test"
    np.savez(tmp_path / "fold2.npz", train_patients=np.array(ids[:6] + [ids[11]]), val_patients=np.array(ids[6:8]),
             test_patients=np.array(folds[2]))  # DSCA: a validation set beside train and test
    files = [read_fold_file(tmp_path / "splits_0.csv"), read_fold_file(tmp_path / "splits_1.csv"),
             read_fold_file(tmp_path / "fold2.npz")]
    assert files[1].test == tuple(folds[1]) and files[2].val == tuple(ids[6:8])
    labelled = _patients(ids[:10] + ids[11:])  # ids[10]: no label, so absent from the split
    split, left = splits_from_files(labelled, files, ids)
    fold = split.set_index("patient_id")["fold"]
    for k, test in enumerate(folds):
        assert set(fold[fold == k].index) == set(test) - {ids[10]}
    assert fold[ids[11]] == -1 and left.empty


def test_fold_files_validated_with_one_line_naming_file_and_fix(tmp_path):
    ids = [f"TCGA-2F-A{i:03d}" for i in range(8)]
    _write_clam_csv(tmp_path / "ok.csv", ids[4:], ids[:4])
    _write_clam_csv(tmp_path / "unknown.csv", ids[:4] + ["TCGA-ZZ-9999"], ids[4:])
    _write_clam_csv(tmp_path / "overlap.csv", ids[:5], ids[4:])
    _write_clam_csv(tmp_path / "twice.csv", ids[5:], ids[:5])
    ok = read_fold_file(tmp_path / "ok.csv")
    cases = {
        "unknown.csv": r"unknown.csv: patient\(s\) TCGA-ZZ-9999 are not in cancer BLCA's sample sheet; use the fold files",
        "overlap.csv": r"overlap.csv: patient\(s\) TCGA-2F-A004 are in both train and test; a fold keeps its sets apart",
        "twice.csv": r"twice.csv: patient TCGA-2F-A000 is also a test patient in .*ok.csv; each patient is tested in one fold only",
    }
    for name, line in cases.items():
        with pytest.raises(ValueError, match=line) as err:
            splits_from_files(_patients(ids), [ok, read_fold_file(tmp_path / name)], ids)
        assert "\n" not in str(err.value)
    (tmp_path / "cols.csv").write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match=r"cols.csv: no train column among \['a', 'b'\]"):
        read_fold_file(tmp_path / "cols.csv")


def test_a_patient_in_no_fold_file_is_left_out_with_its_reason(tmp_path):
    ids = [f"P{i}" for i in range(6)]
    _write_clam_csv(tmp_path / "f0.csv", ids[3:5], ids[:3])
    _write_clam_csv(tmp_path / "f1.csv", ids[:3], ids[3:5])
    split, left = splits_from_files(_patients(ids), [read_fold_file(tmp_path / f"f{k}.csv") for k in (0, 1)], ids)
    assert list(left["patient_id"]) == ["P5"] and "in no fold file" in left["reason"].iloc[0]
    assert "P5" not in set(split["patient_id"])


def test_fold_file_pattern_and_count_match_experts_folds(tmp_path):
    pattern = str(tmp_path / "tcga_{cancer_lower}" / "splits_{fold}.csv")
    assert fold_file_paths(pattern, "BLCA", 2)[1].endswith("tcga_blca/splits_1.csv")
    (tmp_path / "tcga_blca").mkdir()
    for k in range(3):
        _write_clam_csv(tmp_path / "tcga_blca" / f"splits_{k}.csv", ["a"], ["b"])
    check_fold_file_count(pattern, "BLCA", 3)
    with pytest.raises(ValueError, match="a fold file beyond experts.folds 2 for cancer BLCA; set experts.folds to the number"):
        check_fold_file_count(pattern, "BLCA", 2)
    with pytest.raises(ValueError, match=r"splits_3.csv: fold file of cancer BLCA not found \(1 of 4 missing\)"):
        check_fold_file_count(pattern, "BLCA", 4)
    with pytest.raises(ValueError, match=r"must name each fold file with \{cancer\}"):
        SplitSettings(strategy="files", files="splits.csv")
    with pytest.raises(ValueError, match="splits.files is set but splits.strategy is stratified"):
        SplitSettings(files=pattern)


def test_split_patients_dispatches_by_strategy():
    cohort = _tcga_cohort(seed=6)
    sites = {p: tcga_site(p) for p in cohort["patient_id"]}
    split, left = split_patients(SplitSettings(strategy="site"), cohort, 5, 42, sites=sites)
    assert list(split.columns) == ["patient_id", "cancer", "time", "event", "fold", "site"] and left.empty
    plain, _ = split_patients(SplitSettings(), cohort, 5, 42)
    assert "site" not in plain and plain["fold"].nunique() == 5
