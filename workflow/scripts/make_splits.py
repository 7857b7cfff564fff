"""Snakemake adapter: patient-level K-fold splits of one cancer (patients without patches excluded)."""
import pandas as pd

from wsikt.cohort.splits import make_splits
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.preprocess.pipeline import usable_patients

with log_to(snakemake.log[0]):
    cancer, p = snakemake.wildcards.cancer, snakemake.params
    slides = pd.DataFrame({"slide_id": list(p.slides), "patient_id": list(p.slides.values()), "cancer": cancer})
    patch_path = {f.split("/")[-1][: -len(".h5")]: f for f in snakemake.input.patches}
    keep, excluded = usable_patients(slides, patch_path)
    labels = pd.read_csv(snakemake.input.labels, sep="\t", dtype={"patient_id": str})
    split = make_splits(labels[labels["patient_id"].isin(keep)], p.folds, p.seed)
    write_tsv(split[["patient_id", "cancer", "time", "event", "fold"]], snakemake.output.split)
    write_tsv(excluded, snakemake.output.excluded)
