"""Patient survival labels for one endpoint (OS, DSS, PFI) from a TCGA-CDR-style table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ENDPOINTS = ("OS", "DSS", "DFI", "PFI")
CDR_COLUMNS = ("bcr_patient_barcode", "type")


def read_clinical(path: str | Path) -> pd.DataFrame:
    """Read a TCGA-CDR table (TSV, CSV or xlsx), checking the columns we need."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: clinical table not found (config key 'clinical')")
    if path.suffix in (".xlsx", ".xls"):
        df = pd.read_excel(path)
    else:
        df = pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t")
    missing = [c for c in CDR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a TCGA-CDR table has bcr_patient_barcode, type, OS, OS.time, ...")
    return df


def build_labels(clinical: pd.DataFrame, samples: pd.DataFrame, endpoint: str, source: str = "clinical") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels (patient_id, cancer, time, event) for sample-sheet patients, and exclusions with reasons.

    Nothing is guessed: a patient without a clinical row, with a missing or negative time or
    event, or whose cancer disagrees with the sample sheet, is listed in the exclusions.
    """
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint '{endpoint}' (config key 'endpoint') must be one of {ENDPOINTS}")
    tcol = f"{endpoint}.time"
    for col in (endpoint, tcol):
        if col not in clinical.columns:
            raise ValueError(f"{source}: no column '{col}' for endpoint {endpoint}")
    dup = clinical["bcr_patient_barcode"].duplicated(keep=False)
    patients = samples[["patient_id", "cancer"]].drop_duplicates("patient_id")
    rows, excluded = [], []
    clin = clinical[~dup].set_index("bcr_patient_barcode")
    dups = set(clinical.loc[dup, "bcr_patient_barcode"])
    for pid, cancer in patients.itertuples(index=False):
        if pid in dups:
            excluded.append((pid, cancer, "several clinical rows"))
            continue
        if pid not in clin.index:
            excluded.append((pid, cancer, "no clinical row"))
            continue
        r = clin.loc[pid]
        if str(r["type"]) != str(cancer):
            excluded.append((pid, cancer, f"clinical type {r['type']} differs from sample sheet"))
            continue
        event, time = pd.to_numeric(r[endpoint], errors="coerce"), pd.to_numeric(r[tcol], errors="coerce")
        if pd.isna(event) or pd.isna(time):
            excluded.append((pid, cancer, f"missing {endpoint if pd.isna(event) else tcol}"))
            continue
        if time < 0 or event not in (0, 1):
            excluded.append((pid, cancer, f"invalid {endpoint}={event} / {tcol}={time}"))
            continue
        rows.append((pid, cancer, float(time), int(event)))
    labels = pd.DataFrame(rows, columns=["patient_id", "cancer", "time", "event"])
    exclusions = pd.DataFrame(excluded, columns=["patient_id", "cancer", "reason"])
    return labels, exclusions
