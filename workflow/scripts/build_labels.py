"""Snakemake adapter: patient labels for one endpoint, plus the excluded patients and why."""
import pandas as pd

from wsikt.io import write_tsv
from wsikt.labels import build_labels, read_clinical
from wsikt.logs import log_to

with log_to(snakemake.log[0]) as log:
    samples = pd.read_csv(snakemake.input.samples, sep="\t", dtype=str)
    labels, excluded = build_labels(
        read_clinical(snakemake.input.clinical), samples, snakemake.params.endpoint, snakemake.input.clinical
    )
    write_tsv(labels, snakemake.output.labels)
    write_tsv(excluded, snakemake.output.excluded)
    log.info("%d labelled patients, %d excluded", len(labels), len(excluded))
