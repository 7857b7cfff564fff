"""The TSV tables between rules (labels, splits, predictions, exclusions): read with ids kept as text.

Identifiers such as TCGA barcodes, or numeric patient ids like "007", must never be parsed as
numbers; every table wsikt writes is read through :func:`read_table`. Writing is
``wsikt.core.io.write_tsv`` (atomic, no index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

ID_COLUMNS = ("patient_id", "slide_id", "cancer", "source", "target", "features")


def read_table(path: str | Path) -> pd.DataFrame:
    """A tab-separated table written by wsikt, its id columns as strings."""
    return pd.read_csv(path, sep="\t", dtype={c: str for c in ID_COLUMNS})


def read_json(path: str | Path) -> Any:
    """A JSON file written by wsikt (``wsikt.core.io.write_json``: NaN as null)."""
    return json.loads(Path(path).read_text())
