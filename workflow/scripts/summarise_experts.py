"""Snakemake adapter: one row per cancer with mean ± sd test C-index over folds."""
import json

from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.training.summary import summarise_experts

with log_to(snakemake.log[0]):
    metrics = [json.loads(open(p).read()) for p in snakemake.input.metrics]
    write_tsv(summarise_experts(metrics), snakemake.output[0])
