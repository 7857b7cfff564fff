"""Snakemake adapter: one cancer's patient labels for one endpoint, plus the excluded patients and why."""
import pandas as pd

from wsikt.cohort.labels import build_labels, read_clinical
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    p = snakemake.params
    patients = pd.DataFrame({"patient_id": sorted(set(p.slides.values())), "cancer": p.cancer})
    labels, excluded = build_labels(read_clinical(snakemake.input.clinical), patients, p.endpoint, snakemake.input.clinical,
                                  {p.cancer: list(p.types)})
    write_tsv(labels, snakemake.output.labels)
    write_tsv(excluded, snakemake.output.excluded)
    log.info("%s: %d labelled patients, %d excluded", p.cancer, len(labels), len(excluded))
