"""Plan and write the demo cohort: patients, slides, planted survival, TCGA-CDR-style clinical table.

Survival is planted from nuclear density ``u`` ∈ [0, 1] per patient via an accelerated failure time
model, log T = log T0 − γ·(2u − 1) + σ·ε. Cancers with γ > 0 share the mechanism (denser = shorter
survival), γ < 0 reverses it, γ = 0 carries no signal. Each patient's slides also get their own
stain, focus, stroma texture and nucleus size (independent of outcome), as slides from different
sites and scanners do, so density is one image factor among several. Everything is a pure
function of the seed.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsikt.acquire.demo_render import render_slide, write_pyramid_tiff
from wsikt.core.io import write_tsv

log = logging.getLogger("wsikt.demo")

MECHANISM_GAMMA = {"shared": 1.0, "reversed": -1.0, "none": 0.0}


@dataclass
class DemoCohort:
    """The planned cohort: one row per patient (with planted truth) and one row per slide."""

    patients: pd.DataFrame
    slides: pd.DataFrame


def plan_cohort(
    seed: int,
    cancers: list[dict],
    two_slide_fraction: float = 0.25,
    fraction_40x: float = 0.5,
    slide_um: float = 1280.0,
    strength: float = 1.5,
    noise_sd: float = 0.5,
    median_days: float = 1500.0,
    censor_max_days: float = 6000.0,
    appearance: float = 0.6,
) -> DemoCohort:
    """Deterministic cohort plan; cheap (no image work), so the Snakefile can call it at parse time.

    ``cancers``: dicts with ``name`` (TCGA-CDR ``type``), ``code`` (2 letters in the barcode),
    ``n_patients`` and ``mechanism`` ('shared', 'reversed' or 'none'). ``appearance`` scales how
    much stain, focus, texture and nucleus size vary between patients (0 = every slide alike).
    """
    rng = np.random.default_rng(seed)
    look_rng = np.random.default_rng([seed, 2])  # own stream: appearance never shifts the planted truth
    patients, slides = [], []
    for ci, spec in enumerate(cancers):
        gamma = strength * MECHANISM_GAMMA[spec["mechanism"]]
        eosin = (
            int(np.clip(225 + 12 * np.sin(ci * 1.7), 0, 255)),
            int(np.clip(150 + 25 * np.cos(ci * 2.3), 0, 255)),
            int(np.clip(190 + 20 * np.sin(ci * 0.9 + 1), 0, 255)),
        )
        nucleus_um = 3.0 + 0.3 * (ci % 3)
        for pi in range(int(spec["n_patients"])):
            pid = f"DEMO-{spec['code']}-{pi + 1:04d}"
            u = float(rng.uniform())
            log_t = np.log(median_days) - gamma * (2 * u - 1) + noise_sd * rng.standard_normal()
            t_event = float(np.exp(log_t))
            t_censor = float(rng.uniform(0.1, 1.0) * censor_max_days)
            event = int(t_event <= t_censor)
            time = max(1, int(round(min(t_event, t_censor))))
            patients.append(
                dict(patient_id=pid, cancer=spec["name"], mechanism=spec["mechanism"], density=u,
                     true_risk=gamma * (2 * u - 1), time=time, event=event)
            )
            look = _appearance(look_rng, appearance)  # one look per patient: same site, same scanner
            patient_nucleus_um = nucleus_um * look.pop("nucleus_scale")
            n_slides = 2 if rng.uniform() < two_slide_fraction else 1
            for si in range(n_slides):
                mpp = 0.25 if rng.uniform() < fraction_40x else 0.5
                slides.append(
                    dict(
                        slide_id=f"{pid}-01Z-00-DX{si + 1}", patient_id=pid, cancer=spec["name"], mpp=mpp,
                        density=float(np.clip(u + rng.normal(0, 0.03), 0, 1)), eosin=eosin,
                        nucleus_um=patient_nucleus_um, n_pieces=int(rng.integers(1, 4)), **look,
                        render_seed=int(rng.integers(0, 2**31 - 1)), slide_um=slide_um,
                    )
                )
    patients_df, slides_df = pd.DataFrame(patients), pd.DataFrame(slides)
    for spec in cancers:
        if spec["mechanism"] == "none":
            _decorrelate(patients_df, slides_df, spec["name"], seed)
    return DemoCohort(patients_df, slides_df)


def _appearance(rng: np.random.Generator, scale: float) -> dict:
    """One patient's slide appearance, independent of outcome: what differs between real sites and scanners."""
    return dict(
        stain=float(np.exp(scale * 0.3 * rng.standard_normal())),
        nucleus_tone=float(np.exp(scale * 0.2 * rng.standard_normal())),
        nucleus_scale=float(np.exp(scale * 0.12 * rng.standard_normal())),
        texture=float(0.3 + scale * rng.uniform(-0.25, 0.35)),
        blur_um=float(scale * rng.uniform(0.0, 0.8)),
        white_balance=tuple(float(v) for v in scale * 8.0 * rng.standard_normal(3)),
    )


def _patient_factors(patients: pd.DataFrame, slides: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """(F, n) per-patient image factors an expert could read: density and every appearance knob."""
    first = slides.drop_duplicates("patient_id").set_index("patient_id")
    look = first.loc[patients["patient_id"].iloc[rows]]
    wb = np.stack(look["white_balance"].map(np.asarray).to_numpy())
    cols = [patients["density"].iloc[rows].to_numpy(float), look["nucleus_um"].to_numpy(float)]
    cols += [look[k].to_numpy(float) for k in ("stain", "nucleus_tone", "texture", "blur_um")]
    return np.vstack(cols + list(wb.T))


def _decorrelate(patients: pd.DataFrame, slides: pd.DataFrame, cancer: str, seed: int, sweeps: int = 40) -> None:
    """Permute a no-signal cancer's outcomes among its patients so that every image factor (density,
    stain, focus, nucleus size, ...) ranks survival at chance in the sample itself.

    Drawn independently, 40 patients' factors happen to rank their survival with C ≈ 0.5 ± 0.05, and
    every expert reading them then "transfers" to the noise cancer by that accident. A seeded swap
    search minimises Σ (C_f − 0.5)² over the factors; slides and every other cancer are untouched.
    """
    rows = np.flatnonzero(patients["cancer"].to_numpy() == cancer)
    n = len(rows)
    if n < 3:
        return
    factors = _patient_factors(patients, slides, rows)
    time = patients["time"].iloc[rows].to_numpy(float)
    event = patients["event"].iloc[rows].to_numpy(int)
    rng = np.random.default_rng([seed, 1_000_003])

    def cost(perm: np.ndarray) -> float:
        t, e = time[perm], event[perm]  # patient k gets outcome perm[k]
        i, j = np.nonzero((t[:, None] < t[None, :]) & (e[:, None] == 1))
        if len(i) == 0:
            return 0.0
        c = (np.sign(factors[:, i] - factors[:, j]).mean(1) + 1) / 2
        return float(np.square(c - 0.5).sum())

    perm = np.arange(n)
    best = cost(perm)
    for _ in range(sweeps * n):
        a, b = rng.choice(n, 2, replace=False)
        trial = perm.copy()
        trial[[a, b]] = trial[[b, a]]
        c = cost(trial)
        if c < best:
            perm, best = trial, c
    patients.loc[patients.index[rows], ["time", "event"]] = np.column_stack([time[perm], event[perm]]).astype(int)
    patients.loc[patients.index[rows], "true_risk"] = 0.0


def nuclei_density(u: float) -> float:
    """Nuclei per 10,000 µm² for planted density ``u`` ∈ [0, 1]."""
    return 3.0 + 22.0 * u


def clinical_table(patients: pd.DataFrame, seed: int) -> pd.DataFrame:
    """TCGA-CDR-shaped table: OS from the planted times; DSS and PFI derived with realistic gaps."""
    rng = np.random.default_rng(seed + 1)
    n = len(patients)
    os_event = patients["event"].to_numpy()
    os_time = patients["time"].to_numpy()
    dss = np.where(rng.uniform(size=n) < 0.1, 0, os_event).astype(float)  # non-disease deaths
    dss[rng.uniform(size=n) < 0.05] = np.nan  # unknown cause of death
    pfi_time = np.where(os_event == 1, np.maximum(1, (os_time * rng.uniform(0.5, 1.0, n)).round()), os_time)
    pfi = np.maximum(os_event, (rng.uniform(size=n) < 0.15).astype(int))
    return pd.DataFrame(
        {
            "bcr_patient_barcode": patients["patient_id"],
            "type": patients["cancer"],
            "OS": os_event,
            "OS.time": os_time,
            "DSS": dss,
            "DSS.time": np.where(np.isnan(dss), np.nan, os_time),
            "PFI": pfi,
            "PFI.time": pfi_time.astype(int),
        }
    )


def sample_sheet(slides: pd.DataFrame, slide_dir: str | Path) -> pd.DataFrame:
    """The sample sheet (DESIGN §3) for the planned slides under ``slide_dir``."""
    return pd.DataFrame(
        {
            "slide_id": slides["slide_id"],
            "patient_id": slides["patient_id"],
            "cancer": slides["cancer"],
            "path": [str(Path(slide_dir) / f"{s}.tiff") for s in slides["slide_id"]],
        }
    )


def _write_one(args: tuple[dict, str]) -> str:
    row, path = args
    rng = np.random.default_rng(row["render_seed"])
    rgb = render_slide(
        rng, row["mpp"], row["slide_um"], nuclei_density(row["density"]), tuple(row["eosin"]),
        row["nucleus_um"], row["n_pieces"], stain=row["stain"], nucleus_tone=row["nucleus_tone"],
        texture=row["texture"], blur_um=row["blur_um"], white_balance=tuple(row["white_balance"]),
    )
    write_pyramid_tiff(path, rgb, row["mpp"], aperio=row["mpp"] < 0.3)
    return path


def write_demo_cohort(
    cohort: DemoCohort,
    slide_paths: list[str],
    clinical_path: str | Path,
    samples_path: str | Path,
    truth_path: str | Path,
    seed: int,
    threads: int = 1,
) -> None:
    """Render every planned slide to ``slide_paths`` (same order) and write the tables."""
    if len(slide_paths) != len(cohort.slides):
        raise ValueError(f"{len(slide_paths)} slide paths for {len(cohort.slides)} planned slides")
    jobs = list(zip(cohort.slides.to_dict("records"), slide_paths))
    if threads > 1:
        with ProcessPoolExecutor(threads) as pool:
            for _ in tqdm(pool.map(_write_one, jobs, chunksize=4), total=len(jobs), desc="demo slides"):
                pass
    else:
        for job in tqdm(jobs, desc="demo slides"):
            _write_one(job)
    write_tsv(clinical_table(cohort.patients, seed), clinical_path)
    write_tsv(sample_sheet(cohort.slides, Path(slide_paths[0]).parent if slide_paths else "."), samples_path)
    write_tsv(cohort.patients, truth_path)
    log.info("demo cohort: %d patients, %d slides", len(cohort.patients), len(cohort.slides))
