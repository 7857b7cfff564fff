"""Snakemake adapter: bootstrap CIs of the transfer-matrix cells from the embedding caches' risks."""
from wsikt.core.logs import log_to
from wsikt.formats.stats_tables import write_stats_table
from wsikt.stats.matrix import matrix_ci
from wsikt.stats.settings import StatsSettings

with log_to(snakemake.log[0]):
    table = matrix_ci(snakemake.input.embeddings, snakemake.input.splits, StatsSettings.from_config(snakemake.params.stats))
    write_stats_table(table, "matrix_ci", snakemake.output[0])
