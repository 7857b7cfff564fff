"""Snakemake adapter: patient-level K-fold splits of one cancer (patients without patches excluded)."""
import pandas as pd

from wsikt.io import write_tsv
from wsikt.logs import log_to
from wsikt.splits import make_splits, patients_with_patches

with log_to(snakemake.log[0]):
    cancer = snakemake.wildcards.cancer
    samples = pd.read_csv(snakemake.input.samples, sep="\t", dtype=str)
    slides = samples[samples["cancer"] == cancer]
    patch_path = {p.split("/")[-1][: -len(".h5")]: p for p in snakemake.input.patches}
    keep, excluded = patients_with_patches(slides, patch_path)
    labels = pd.read_csv(snakemake.input.labels, sep="\t", dtype={"patient_id": str})
    labels = labels[(labels["cancer"] == cancer) & labels["patient_id"].isin(keep)]
    split = make_splits(labels, snakemake.params.folds, snakemake.params.seed)
    write_tsv(split[["patient_id", "cancer", "time", "event", "fold"]], snakemake.output.split)
    write_tsv(excluded, snakemake.output.excluded)
