"""The TCGA-CDR clinical table (Liu et al., Cell 2018) as a pinned GDC file: fetched and verified, not hand-placed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GDCFile:
    """One GDC file pinned by id, name, md5 and size, so a changed or truncated copy is caught."""

    file_id: str
    file_name: str
    md5: str
    size: int


# The PanCan-Clinical-Data release's TCGA-CDR table (https://gdc.cancer.gov/about-data/publications/pancanatlas).
TCGA_CDR = GDCFile(
    file_id="1b5f413e-a8d1-4d10-92eb-7c4ae739ed81",
    file_name="TCGA-CDR-SupplementalTableS1.xlsx",
    md5="a4591b2dcee39591f59e5e25a6ce75fa",
    size=2_945_129,
)


def names_tcga_cdr(path: str | os.PathLike) -> bool:
    """True when a clinical-table path names the TCGA-CDR table: its file name is the GDC file's."""
    return Path(path).name == TCGA_CDR.file_name


def fetch_tcga_cdr(
    base_url: str,
    dest: str | os.PathLike,
    file_id: str = TCGA_CDR.file_id,
    md5: str = TCGA_CDR.md5,
    size: int = TCGA_CDR.size,
    **download: Any,
) -> dict[str, Any]:
    """Download the TCGA-CDR table to ``dest`` with the GDC client, verified against the pinned md5 and size.

    The defaults are the real file's; ``download`` goes to :func:`~wsikt.acquire.gdc_download.download_file`
    (retries, lock, resume). Returns its summary.
    """
    from wsikt.acquire.gdc_download import download_file  # here: the workflow imports this module at every parse

    return download_file(base_url, file_id, dest, md5, size, **download)
