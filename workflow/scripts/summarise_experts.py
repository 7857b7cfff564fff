"""Snakemake adapter: one row per cancer with mean ± sd test C-index over folds."""
import json

from wsikt.experts import summarise_experts
from wsikt.io import write_tsv
from wsikt.logs import log_to

with log_to(snakemake.log[0]):
    metrics = [json.loads(open(p).read()) for p in snakemake.input.metrics]
    write_tsv(summarise_experts(metrics), snakemake.output[0])
