"""Snakemake adapter: segment and patch one slide (a bad slide → empty outputs with its status)."""
from wsikt.logs import log_to
from wsikt.preprocess import PatchSettings, preprocess_slide

with log_to(snakemake.log[0]):
    o, p = snakemake.output, snakemake.params
    preprocess_slide(
        snakemake.input.slide, snakemake.wildcards.slide, o.tissue, o.patches, o.qc_tissue, o.qc,
        PatchSettings(**p.settings), mpp_override=p.mpp_override, on_error=p.on_error,
    )
