"""Snakemake adapter: index (and check) one cancer's feature files for the model-training rules."""
from wsikt.cohort.bag_index import write_bag_index
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    df = write_bag_index(snakemake.input.features, snakemake.params.slides, snakemake.output[0])
    log.info("%s: %d slides of %d patients, %d patches", snakemake.wildcards.cancer, len(df),
             df["patient_id"].nunique(), int(df["n_patches"].sum()))
