"""Patient survival labels for one endpoint (OS, DSS, PFI) from a TCGA-CDR-style table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

ENDPOINTS = ("OS", "DSS", "DFI", "PFI")
CDR_COLUMNS = ("bcr_patient_barcode", "type")

# Event codings seen in clinical tables, lower-cased, to 1 (event) or 0 (censored). cBioPortal's
# "<code>:<label>" values (e.g. "1:DECEASED", "0:LIVING", "1:Recurred/Progressed") use their code.
EVENT_WORDS = {
    "true": 1, "false": 0, "yes": 1, "no": 0,
    "dead": 1, "deceased": 1, "died": 1, "alive": 0, "living": 0,
    "recurred": 1, "progressed": 1, "recurred/progressed": 1, "progression": 1, "event": 1,
    "diseasefree": 0, "disease free": 0, "disease-free": 0, "censored": 0,
}
EVENT_CODINGS = "1/0, Dead/Alive, Deceased/Living, Yes/No, Recurred/Progressed vs DiseaseFree, or cBioPortal's '1:DECEASED'/'0:LIVING'"
_CBIO = re.compile(r"^\s*([01])\s*:")


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


def _event_code(value: object) -> float | None:
    """1.0/0.0 for a known event coding (a number as is), NaN for a missing value, None for an unknown coding."""
    if pd.isna(value):
        return float("nan")
    text = str(value).strip()
    try:
        return float(text)  # numbers pass through; build_labels excludes values other than 0/1 per patient
    except ValueError:
        pass
    if not text or (text.startswith("[") and text.endswith("]")) or text.lower() in ("na", "n/a", "unknown"):
        return float("nan")  # TCGA writes '[Not Available]', '[Unknown]', ...
    m = _CBIO.match(text)
    if m:
        return float(m.group(1))
    code = EVENT_WORDS.get(text.lower())
    return None if code is None else float(code)


def event_codes(values: pd.Series, column: str, source: str = "clinical") -> pd.Series:
    """Map an event column's codings (EVENT_WORDS, cBioPortal's "1:…") to 1.0/0.0/NaN; an unknown coding raises."""
    codes = [_event_code(v) for v in values]
    unknown = sorted({str(v) for v, c in zip(values, codes) if c is None})
    if unknown:
        raise ValueError(f"{source}: column '{column}' has event coding(s) {unknown[:3]}; code events as {EVENT_CODINGS}")
    return pd.Series([float("nan") if c is None else c for c in codes], index=values.index, dtype=float)


def build_labels(clinical: pd.DataFrame, samples: pd.DataFrame, endpoint: str, source: str = "clinical",
                 types: Mapping[str, Iterable[str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels (patient_id, cancer, time, event) for sample-sheet patients, and exclusions with reasons.

    Nothing is guessed: a patient without a clinical row, with a missing or negative time or
    event, or whose cancer disagrees with the sample sheet, is listed in the exclusions. Text event
    codings ("Dead"/"Alive", cBioPortal's "1:DECEASED") are mapped; an unknown coding raises.
    ``types``: cancer → the clinical ``type`` values it accepts (a pooled cancer's projects,
    ``CancerGroups.clinical_types``); a cancer not in it accepts its own name only.
    """
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint '{endpoint}' (config key 'endpoint') must be one of {ENDPOINTS}")
    tcol = f"{endpoint}.time"
    for col in (endpoint, tcol):
        if col not in clinical.columns:
            raise ValueError(f"{source}: no column '{col}' for endpoint {endpoint}")
    dup = clinical["bcr_patient_barcode"].duplicated(keep=False)
    patients = samples[["patient_id", "cancer"]].drop_duplicates()
    rows, excluded = [], []
    clin = clinical[~dup].set_index("bcr_patient_barcode")
    clin = clin[clin.index.isin(patients["patient_id"])]
    events = event_codes(clin[endpoint], endpoint, source)
    times = pd.to_numeric(clin[tcol], errors="coerce")
    dups = set(clinical.loc[dup, "bcr_patient_barcode"])
    accepted = {str(c): {str(t) for t in ts} for c, ts in (types or {}).items()}
    for pid, cancer in patients.itertuples(index=False):
        if pid in dups:
            excluded.append((pid, cancer, "several clinical rows"))
            continue
        if pid not in clin.index:
            excluded.append((pid, cancer, "no clinical row"))
            continue
        kind = clin.at[pid, "type"]
        if str(kind) not in accepted.get(cancer, (str(cancer),)):
            excluded.append((pid, cancer, f"clinical type {kind} differs from sample sheet"))
            continue
        event, time = events.at[pid], times.at[pid]
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
