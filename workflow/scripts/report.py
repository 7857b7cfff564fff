"""Snakemake adapter: render the HTML report."""
from wsikt.logs import log_to
from wsikt.report import build_report

with log_to(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    build_report(
        snakemake.output[0], i.summary, i.matrix, i.labels, i.samples, list(i.excluded), list(i.qc),
        config=p.config, endpoint=p.endpoint, encoder=p.encoder, model=p.model, max_qc=p.max_qc,
    )
