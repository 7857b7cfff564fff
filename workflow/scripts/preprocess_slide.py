"""Snakemake adapter: segment and patch one slide."""
from wsikt.logs import log_to
from wsikt.preprocess import preprocess_slide

with log_to(snakemake.log[0]):
    p = snakemake.params
    preprocess_slide(
        snakemake.input.slide, snakemake.wildcards.slide, snakemake.output.tissue,
        snakemake.output.patches, snakemake.output.qc, mpp_override=p.mpp_override,
        target_mpp=p.target_mpp, patch_size=p.patch_size, mpp_tolerance=p.mpp_tolerance,
        min_tissue_fraction=p.min_tissue_fraction, segmentation=p.segmentation,
    )
