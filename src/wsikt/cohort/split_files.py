"""A paper's fold files as wsikt's split: one file per fold listing its training and test patients.

Read formats: CSV with a column whose name holds ``train`` and one holding ``test`` (columns of
unequal length, blank-padded: CLAM, CROPKT's ``splits_{k}.csv``); without a test column the ``val``
column is the test set (CrossFusion's ``splits_{k}.csv``); npz with arrays named so (DSCA's
``*-fold{k}.npz``: train_patients, val_patients, test_patients). wsikt trains each fold on every
patient outside its test set, so a separate validation column's patients train too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

FIX = "use the fold files made for this cohort, or correct the file"


@dataclass(frozen=True)
class FoldFile:
    """The patient ids one fold file lists: ``train``, ``test`` and any ``val`` (a validation set)."""

    path: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...] = ()


def _columns(names: Sequence[str], path: str | Path) -> tuple[str, str, str | None]:
    """(train, test, val) column names by the words they hold; without a test column, val is the test set."""
    def find(word: str) -> str | None:
        hits = [n for n in names if word in str(n).lower()]
        return hits[-1] if hits else None

    train, test, val = find("train"), find("test"), find("val")
    if test is None:
        test, val = val, None
    if train is None or test is None:
        raise ValueError(f"{path}: no {'train' if train is None else 'test (or val)'} column among {list(names)}; "
                         "a fold file has columns train and test (or train and val)")
    return train, test, val


def _ids(values: Iterable[object]) -> tuple[str, ...]:
    """Patient ids as text, blanks (the padding of unequal columns) dropped."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            continue
        text = v.decode() if isinstance(v, bytes) else str(v)
        if text.strip():
            out.append(text.strip())
    return tuple(out)


def read_fold_file(path: str | Path) -> FoldFile:
    """Read one fold file (CSV or npz); ValueError naming the file when it cannot be read as one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: fold file not found (config key splits.files); check the pattern and experts.folds")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        train, test, val = _columns(list(arrays), path)
        return FoldFile(str(path), _ids(arrays[train]), _ids(arrays[test]), _ids(arrays[val]) if val else ())
    table = pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", dtype=str, keep_default_na=False)
    train, test, val = _columns([c for c in table.columns if not str(c).startswith("Unnamed")], path)
    return FoldFile(str(path), _ids(table[train]), _ids(table[test]), _ids(table[val]) if val else ())


def _first(ids: Iterable[str], n: int = 3) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:n]) + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def check_fold_files(files: Sequence[FoldFile], known: Iterable[str], cancer: str) -> None:
    """Each file's patients are known (in the sample sheet), none is in two sets of a fold, none tested twice.

    Raises ValueError naming the file, the patients and the fix.
    """
    known = {str(p) for p in known}
    tested: dict[str, str] = {}
    for f in files:
        listed = set(f.train) | set(f.test) | set(f.val)
        unknown = listed - known
        if unknown:
            raise ValueError(f"{f.path}: patient(s) {_first(unknown)} are not in cancer {cancer}'s sample sheet; {FIX}")
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            both = set(getattr(f, a)) & set(getattr(f, b))
            if both:
                raise ValueError(f"{f.path}: patient(s) {_first(both)} are in both {a} and {b}; "
                                 f"a fold keeps its sets apart: {FIX}")
        for p in f.test:
            if p in tested:
                raise ValueError(f"{f.path}: patient {p} is also a test patient in {tested[p]}; "
                                 f"each patient is tested in one fold only: {FIX}")
            tested[p] = f.path


def splits_from_files(patients: pd.DataFrame, files: Sequence[FoldFile], known: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split (patients' rows with ``fold``) the fold files give, and the patients they leave out.

    ``patients``: the labelled, usable patients (patient_id, cancer, time, event); ``known``: every
    patient of the cancer's sample sheet. A patient tested in file k gets fold k. One the files only
    ever train on gets fold −1: it trains in every fold and is never tested. One in no file is left
    out, listed with its reason. Raises ValueError as ``check_fold_files`` does.
    """
    cancer = str(patients["cancer"].iloc[0]) if len(patients) else "?"
    check_fold_files(files, known, cancer)
    test_fold = {p: k for k, f in enumerate(files) for p in f.test}
    trained = {p for f in files for p in (*f.train, *f.val)}
    df = patients.sort_values("patient_id").reset_index(drop=True).copy()
    ids = df["patient_id"].astype(str)
    df["fold"] = [test_fold.get(p, -1 if p in trained else -2) for p in ids]
    left = df[df["fold"] == -2]
    excluded = pd.DataFrame({"patient_id": left["patient_id"], "cancer": left["cancer"],
                             "reason": "in no fold file (splits.files): neither trained on nor tested"})
    df = df[df["fold"] != -2].reset_index(drop=True)
    present = set(df["fold"])
    empty = [k for k in range(len(files)) if k not in present]
    if empty:
        raise ValueError(f"{files[empty[0]].path}: none of its test patients is labelled and has patches in cancer "
                         f"{cancer}, so fold {empty[0]} has no test set; {FIX}")
    return df, excluded.reset_index(drop=True)


def fold_file_paths(pattern: str, cancer: str, n_folds: int) -> list[str]:
    """The fold file of each fold of one cancer: ``pattern`` with {cancer}, {cancer_lower} and {fold} filled."""
    return [pattern.format(cancer=cancer, cancer_lower=cancer.lower(), fold=k) for k in range(n_folds)]


def check_fold_file_count(pattern: str, cancer: str, n_folds: int) -> None:
    """Every fold's file exists and there is no file for a fold beyond ``n_folds`` (experts.folds)."""
    paths = fold_file_paths(pattern, cancer, n_folds + 1)
    missing = [p for p in paths[:n_folds] if not Path(p).is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: fold file of cancer {cancer} not found ({len(missing)} of {n_folds} missing); "
                         "check splits.files (placeholders {cancer}, {cancer_lower}, {fold}) and experts.folds")
    if Path(paths[n_folds]).is_file():
        raise ValueError(f"{paths[n_folds]}: a fold file beyond experts.folds {n_folds} for cancer {cancer}; "
                         "set experts.folds to the number of fold files")
