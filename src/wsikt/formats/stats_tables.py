"""The statistics stage's TSVs under ``results/stats/{encoder}/{model}/{endpoint}/``: one writer, one reader.

* ``chance.tsv``  one row per (method, cancer): the mean-over-folds test C against the C of random
  rankings of the same test patients (test-fold permutations): null mean, sd, one-sided p-values
  (``p_above`` signal, ``p_below`` below chance) and the below-chance flag.
* ``compare.tsv`` one row per (method, cancer): C(method) − C(reference, the cancer's own expert),
  its paired-bootstrap CI and two-sided p-value; ``below_chance`` repeats the method's flag.
* ``matrix_ci.tsv`` one row per (source, target) transfer-matrix cell: mean C over fold pairs, its
  bootstrap CI and the below-chance flag (CI wholly under 0.5).
* ``retrained_null/{cancer}.tsv`` (opt-in ``stats.permutations``) one row per (method, permutation,
  fold): the test C of the whole fold pipeline retrained on labels permuted within the training fold.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsikt.core.io import write_tsv

COLUMNS = {
    "chance": ["method", "cancer", "c_index_mean", "folds", "null_mean", "null_sd", "p_above", "p_below", "n_perm",
               "below_chance"],
    "compare": ["method", "reference", "cancer", "delta", "ci_low", "ci_high", "p_value", "n_boot_valid", "level",
                "below_chance"],
    "matrix_ci": ["source", "target", "c_index_mean", "ci_low", "ci_high", "n_boot_valid", "level", "below_chance"],
    "retrained_null": ["method", "cancer", "permutation", "fold", "c_index_test", "null"],
}


def _check(df: pd.DataFrame, kind: str, where: str) -> pd.DataFrame:
    if kind not in COLUMNS:
        raise ValueError(f"unknown stats table '{kind}': one of {', '.join(COLUMNS)}")
    missing = [c for c in COLUMNS[kind] if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: the {kind} table lacks columns {missing}; rerun the stats rule that writes it")
    return df[COLUMNS[kind]]


def write_stats_table(df: pd.DataFrame, kind: str, path: str | Path) -> None:
    """Write one stats table (columns checked and ordered as ``COLUMNS[kind]``), atomically."""
    write_tsv(_check(df, kind, str(path)), path)


def read_stats_table(path: str | Path, kind: str) -> pd.DataFrame:
    """Read one stats table written by ``write_stats_table`` (flags as booleans)."""
    df = _check(pd.read_csv(path, sep="\t"), kind, str(path))
    for col in ("below_chance", "null"):
        if col in df:
            df[col] = df[col].astype(str).str.lower().isin(("true", "1"))
    return df
