"""How patients are assigned to test folds (config section ``splits``), and the sample-sheet checks each way needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from wsikt.cohort.site_splits import check_site_count, patient_sites

STRATEGIES = ("stratified", "site", "external", "files")


@dataclass(frozen=True)
class SplitSettings:
    """Config section ``splits``: the strategy and what it reads (test cohorts, a fold-file pattern)."""

    strategy: str = "stratified"
    test_cohorts: tuple[str, ...] = ()
    files: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"splits.strategy '{self.strategy}' must be one of {', '.join(STRATEGIES)}")
        if self.strategy == "external" and not self.test_cohorts:
            raise ValueError("splits.strategy external needs splits.test_cohorts: the sample sheet's "
                             "'cohort' values to test on")
        if self.strategy != "external" and self.test_cohorts:
            raise ValueError(f"splits.test_cohorts is set but splits.strategy is {self.strategy}; "
                             "set strategy: external or remove test_cohorts")
        if self.strategy == "files":
            if not self.files or "{fold}" not in self.files or not ("{cancer}" in self.files or "{cancer_lower}" in self.files):
                raise ValueError(f"splits.files '{self.files}' must name each fold file with {{cancer}} (or "
                                 "{cancer_lower}) and {fold}, e.g. splits/tcga_{cancer_lower}/splits_{fold}.csv")
            try:
                self.files.format(cancer="X", cancer_lower="x", fold=0)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"splits.files '{self.files}': unknown placeholder {exc}; use {{cancer}}, "
                                 "{cancer_lower} and {fold}") from None
        elif self.files:
            raise ValueError(f"splits.files is set but splits.strategy is {self.strategy}; set strategy: files "
                             "or remove files")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "SplitSettings":
        """From config section ``splits``."""
        return cls(strategy=section.get("strategy", "stratified"),
                   test_cohorts=tuple(str(c) for c in section.get("test_cohorts", ()) or ()),
                   files=section.get("files"))

    def n_folds(self, folds: int) -> int:
        """Test folds every model rule runs: experts.folds, or one (the external cohorts) for external."""
        return 1 if self.strategy == "external" else folds

    def min_patients(self, folds: int) -> int:
        """Labelled patients a cancer needs: one per fold, or two (one to train, one to test) for external."""
        return 2 if self.strategy == "external" else folds

    def describe(self, folds: int) -> str:
        """One phrase for the report: how the test folds were made."""
        if self.strategy == "external":
            return (f"training on every cohort but {', '.join(self.test_cohorts)} and testing on "
                    f"{'that external cohort' if len(self.test_cohorts) == 1 else 'those external cohorts'} (one fold)")
        if self.strategy == "site":
            return (f"{folds}-fold patient-level cross-validation with site-preserved folds (each tissue-source "
                    "site in one test fold, folds balanced on events)")
        if self.strategy == "files":
            return f"{folds}-fold patient-level cross-validation on the given fold files ({self.files})"
        return f"{folds}-fold patient-level cross-validation (folds stratified by event)"

    def check_sheet(self, samples: pd.DataFrame, folds: int, source: str) -> None:
        """The sample-sheet facts this strategy needs, before any job: ValueError naming the fix.

        site: one site per patient and ≥ ``folds`` sites per cancer; external: a ``cohort`` column,
        one cohort per patient, and the test cohorts present.
        """
        if samples.empty:
            return
        if self.strategy == "site":
            for cancer, rows in samples.groupby("cancer"):
                sites = patient_sites(rows, source)
                check_site_count(len(set(sites.values())), folds, f"{source}: cancer {cancer}")
        elif self.strategy == "external":
            if "cohort" not in samples.columns or samples["cohort"].isna().any():
                raise ValueError(f"{source}: splits.strategy external needs a 'cohort' value on every row "
                                 "(the patient's cohort); add the column")
            two = samples.groupby("patient_id")["cohort"].nunique()
            if (two > 1).any():
                raise ValueError(f"{source}: patient {two[two > 1].index[0]} is in two cohorts; "
                                 "a patient belongs to one cohort")
            absent = [c for c in self.test_cohorts if c not in set(samples["cohort"])]
            if absent:
                raise ValueError(f"{source}: splits.test_cohorts {absent} not in the 'cohort' column "
                                 f"(cohorts: {sorted(set(samples['cohort']))})")


def split_patients(settings: SplitSettings, patients: pd.DataFrame, folds: int, seed: int, *,
                   sites: Mapping[str, str] | None = None, cohorts: Mapping[str, str] | None = None,
                   fold_files: list[str] | None = None, known: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split of one cancer's usable patients by ``settings.strategy``, and the patients it leaves out.

    Columns: patient_id, cancer, time, event, fold (+ site for site, cohort for external). ``sites``,
    ``cohorts``: patient → value from the sample sheet; ``fold_files``: the cancer's files, fold
    order; ``known``: every sample-sheet patient of the cancer (fold files may list no other).
    """
    from wsikt.cohort.site_splits import make_site_splits
    from wsikt.cohort.split_files import read_fold_file, splits_from_files
    from wsikt.cohort.splits import make_external_splits, make_splits

    none = pd.DataFrame(columns=["patient_id", "cancer", "reason"])
    by_strategy = {
        "stratified": lambda: (make_splits(patients, folds, seed), none),
        "site": lambda: (make_site_splits(patients, sites or {}, folds, seed), none),
        "external": lambda: (make_external_splits(patients, cohorts or {}, settings.test_cohorts), none),
        "files": lambda: splits_from_files(patients, [read_fold_file(f) for f in fold_files or []], known or []),
    }
    split, left_out = by_strategy[settings.strategy]()
    columns = ["patient_id", "cancer", "time", "event", "fold"] + [c for c in ("site", "cohort") if c in split]
    return split[columns], left_out
