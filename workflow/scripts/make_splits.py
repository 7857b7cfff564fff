"""Snakemake adapter: patient-level K-fold splits of one cancer (patients without patches excluded)."""
import pandas as pd

from wsikt.io import write_tsv
from wsikt.logs import log_to
from wsikt.preprocess import usable_patients
from wsikt.splits import make_splits

with log_to(snakemake.log[0]):
    cancer, p = snakemake.wildcards.cancer, snakemake.params
    slides = pd.DataFrame({"slide_id": list(p.slides), "patient_id": list(p.slides.values()), "cancer": cancer})
    patch_path = {f.split("/")[-1][: -len(".h5")]: f for f in snakemake.input.patches}
    keep, excluded = usable_patients(slides, patch_path)
    labels = pd.read_csv(snakemake.input.labels, sep="\t", dtype={"patient_id": str})
    split = make_splits(labels[labels["patient_id"].isin(keep)], p.folds, p.seed)
    write_tsv(split[["patient_id", "cancer", "time", "event", "fold"]], snakemake.output.split)
    write_tsv(excluded, snakemake.output.excluded)
