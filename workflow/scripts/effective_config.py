"""Snakemake adapter: write the validated config, defaults filled in, as the jobs see it."""
from wsikt.config.validate import write_config
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]):
    write_config(dict(snakemake.params.config), snakemake.output[0])
