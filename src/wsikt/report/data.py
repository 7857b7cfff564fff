"""The report's tables, read from result files: cohort and exclusions, QC sample, transfer, ROUPKT."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from wsikt.transfer.matrix import POSITIVE_THRESHOLDS, positive_table

_EXCLUSION_COLUMNS = ["patient_id", "cancer", "reason", "stage"]


def b64(data: bytes) -> str:
    """Bytes as base64 text (images inlined in the page)."""
    return base64.b64encode(data).decode("ascii")


def read_tsvs(paths, **kw) -> pd.DataFrame:
    """Concatenated TSVs (ids kept as text), or an empty frame for no paths."""
    frames = [pd.read_csv(p, sep="\t", dtype={"patient_id": str, "slide_id": str}, **kw) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_exclusions(paths: list[str | Path]) -> pd.DataFrame:
    """Exclusion TSVs ``results/{stage}/{endpoint}/{cancer}.excluded.tsv`` with their stage."""
    frames = []
    for p in paths:
        df = pd.read_csv(p, sep="\t", dtype={"patient_id": str})
        df["stage"] = Path(p).parts[-3] if len(Path(p).parts) >= 3 else "?"
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_EXCLUSION_COLUMNS)
    return out.reindex(columns=_EXCLUSION_COLUMNS).sort_values(["cancer", "stage", "patient_id"]).reset_index(drop=True)


def reverse_km_median(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan–Meier method (censoring as the event); NaN if not reached."""
    from lifelines import KaplanMeierFitter

    if len(time) == 0 or np.all(event):
        return float("nan")
    m = KaplanMeierFitter().fit(time, 1 - np.asarray(event, int)).median_survival_time_
    return float(m) if np.isfinite(m) else float("nan")


def cohort_table(analysed: pd.DataFrame, samples: pd.DataFrame, exclusions: pd.DataFrame) -> pd.DataFrame:
    """Per cancer: analysed patients and slides, events, censoring, follow-up, exclusions by stage."""
    rows = []
    cancers = sorted(set(analysed.get("cancer", [])) | set(exclusions["cancer"].dropna()))
    for cancer in cancers:
        g = analysed[analysed["cancer"] == cancer] if len(analysed) else analysed
        ex = exclusions[exclusions["cancer"] == cancer]
        t, e = g["time"].to_numpy(float), g["event"].to_numpy(int)
        rows.append({
            "cancer": cancer,
            "patients": int(len(g)),
            "slides": int((samples["patient_id"].isin(g["patient_id"]) & (samples["cancer"] == cancer)).sum()),
            "events": int(e.sum()),
            "censored_pct": 100.0 * (1 - e.mean()) if len(e) else float("nan"),
            "followup_median_days": reverse_km_median(t, e),
            "time_max_days": float(t.max()) if len(t) else float("nan"),
            "excluded_labels": int((ex["stage"] == "labels").sum()),
            "excluded_splits": int((ex["stage"] == "splits").sum()),
        })
    return pd.DataFrame(rows)


def folds_covered(c_index_folds: object) -> int:
    """How many per-fold C values (a summary's comma-separated ``c_index_folds``) are finite: folds
    without a comparable pair give NaN and are left out of the mean."""
    if not isinstance(c_index_folds, str):
        return 0
    return int(np.isfinite(pd.to_numeric(pd.Series(c_index_folds.split(",")), errors="coerce")).sum())


def sample_qc(qc_pngs: list[str | Path], samples: pd.DataFrame, max_qc: int) -> tuple[list[dict], int]:
    """At most ``max_qc`` QC images, spread over cancers (round robin) and evenly over each cancer's slides.

    Returns [{cancer, n, shown: [{slide, patient, png}]}] and the number of QC images available.
    """
    by_slide = samples.set_index("slide_id")
    per_cancer: dict[str, list[Path]] = {}
    for p in sorted(map(Path, qc_pngs)):
        cancer = str(by_slide.at[p.stem, "cancer"]) if p.stem in by_slide.index else "unknown"
        per_cancer.setdefault(cancer, []).append(p)
    quota = {c: 0 for c in per_cancer}
    while sum(quota.values()) < max_qc and any(quota[c] < len(per_cancer[c]) for c in quota):
        for c in sorted(quota):
            if quota[c] < len(per_cancer[c]) and sum(quota.values()) < max_qc:
                quota[c] += 1
    groups = []
    for c in sorted(per_cancer):
        paths, k = per_cancer[c], quota[c]
        idx = sorted(set(np.linspace(0, len(paths) - 1, k).round().astype(int))) if k else []
        shown = [{"slide": paths[i].stem,
                  "patient": str(by_slide.at[paths[i].stem, "patient_id"]) if paths[i].stem in by_slide.index else "",
                  "png": b64(paths[i].read_bytes())} for i in idx]
        groups.append({"cancer": c, "n": len(paths), "shown": shown})
    return groups, sum(len(v) for v in per_cancer.values())


def positive_transfer(matrix: pd.DataFrame, thresholds=POSITIVE_THRESHOLDS) -> pd.DataFrame:
    """Per target: sources (diagonal excluded) whose mean C is above each threshold, and how many there are."""
    table = positive_table(matrix, thresholds)
    others = matrix[matrix["source"] != matrix["target"]].groupby("target").size()
    table.insert(1, "n_sources", table["target"].map(others).fillna(0).astype(int))
    for thr in thresholds:
        table[f"sources_above_{thr}"] = table[f"sources_above_{thr}"].str.replace(",", ", ")
    return table


def roupkt_table(experts: pd.DataFrame, roupkt_tsv, baseline_tsvs: dict) -> pd.DataFrame:
    """Per target: own expert's mean test C, ROUPKT's, their difference, and each baseline's; with the
    folds each mean covers (``expert_n``, ``roupkt_n``), the folds run (``folds``) and ROUPKT's null-gated
    folds (``roupkt_null_folds``)."""
    if roupkt_tsv is None:
        return pd.DataFrame(columns=["cancer", "expert", "roupkt", "delta", "expert_n", "roupkt_n", "folds"])
    r = pd.read_csv(roupkt_tsv, sep="\t")
    r = pd.DataFrame({"cancer": r["cancer"], "roupkt": r["c_index_mean"],
                      "roupkt_n": r.get("c_index_folds", pd.Series(index=r.index, dtype=object)).map(folds_covered),
                      "roupkt_null_folds": r.get("null_folds", pd.Series(0, index=r.index)).fillna(0).astype(int)})
    e = pd.DataFrame({"cancer": experts["cancer"], "expert": experts["c_index_mean"], "folds": experts["folds"],
                      "expert_n": experts["c_index_folds"].map(folds_covered)})
    out = e.merge(r, on="cancer")
    out["delta"] = out["roupkt"] - out["expert"]
    for method, path in sorted(baseline_tsvs.items()):
        b = pd.read_csv(path, sep="\t")[["cancer", "c_index_mean"]].rename(columns={"c_index_mean": method})
        out = out.merge(b, on="cancer", how="left")
    return out
