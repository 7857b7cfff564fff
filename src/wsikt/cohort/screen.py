"""Cohort checks before any job: which cancers can be modelled at all, from the sample sheet and clinical table.

The workflow runs these while it parses (cheap: pandas only), so a cancer whose labelled patients
cannot fill the folds stops the run before any slide is read, and a cancer without a single event
(Harrell's C undefined on every fold) is left out of the DAG with its reason, shown in the report.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from wsikt.cohort.labels import build_labels, read_clinical
from wsikt.config.validate import ConfigError


def read_clinical_cached(path: str | Path, cache_dir: str | Path) -> pd.DataFrame:
    """``read_clinical``, with xlsx tables cached by path, size and time: every Snakemake job parses the
    workflow again, and a TCGA-CDR xlsx takes seconds to read where its pickle takes milliseconds."""
    path = Path(path)
    if path.suffix not in (".xlsx", ".xls"):
        return read_clinical(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    cached = Path(cache_dir) / f"clinical-{key}.pkl"
    if cached.exists():
        return pd.read_pickle(cached)
    table = read_clinical(path)
    from wsikt.core.io import atomic_path

    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        tmp.write_bytes(pickle.dumps(table))
    return table


def screen_cancers(samples: pd.DataFrame, clinical: pd.DataFrame, endpoint: str, folds: int,
                   source: str = "clinical", types: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
    """Cancers to leave out before any job, each with its reason: no event among its labelled patients.

    A cancer whose labelled patients cannot fill ``folds`` raises ConfigError naming the cancer, its
    counts and the config key (labels are built as the labels rule builds them; ``types`` as there).
    """
    labels, excluded = build_labels(clinical, samples, endpoint, source, types)
    sheet = samples.groupby("cancer")["patient_id"].nunique()
    out: dict[str, str] = {}
    for cancer, n_sheet in sheet.items():
        lab = labels[labels["cancer"] == cancer]
        if len(lab) < folds:
            why = excluded[excluded["cancer"] == cancer]["reason"].value_counts()
            whys = ", ".join(f"{r} {n}" for r, n in why.head(3).items())
            raise ConfigError(
                f"{source}: cancer {cancer}: {len(lab)} of its {n_sheet} patients have {endpoint} labels ({whys}), "
                f"fewer than experts.folds {folds}; fix the clinical table, lower experts.folds or drop the cancer"
            )
        if int(lab["event"].sum()) == 0:
            out[str(cancer)] = (f"no {endpoint} event among its {len(lab)} labelled patients: the C-index is undefined "
                                f"on every fold, so no expert is trained (check the '{endpoint}' column of {source})")
    if out and len(out) == len(sheet):
        raise ConfigError(f"{source}: no cancer of the sample sheet has a single {endpoint} event, so nothing can be "
                          f"modelled; check the '{endpoint}' column (1 = event) or choose another config key 'endpoint'")
    return out
