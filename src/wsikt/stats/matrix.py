"""Transfer-matrix cells with CIs, from the embedding caches' zero-shot risks and the targets' splits."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from wsikt.formats.tables import read_table
from wsikt.stats.settings import StatsSettings
from wsikt.stats.tables import matrix_cells, matrix_ci_table
from wsikt.transfer.embedding_cache import read_risks


def matrix_ci(caches: Sequence[str | Path], splits: Sequence[str | Path], settings: StatsSettings) -> pd.DataFrame:
    """``matrix_ci_table`` of every target: ``caches[i]`` is the embedding cache of the cancer of ``splits[i]``."""
    if len(caches) != len(splits):
        raise ValueError(f"{len(caches)} embedding caches for {len(splits)} splits: give one cache per target split")
    cells = {}
    for cache, split_path in zip(caches, splits):
        split = read_table(split_path)
        risks = read_risks(cache, patient_ids=list(split["patient_id"].astype(str)))
        cells[str(split["cancer"].iloc[0])] = matrix_cells(split, risks)
    return matrix_ci_table(cells, settings)
