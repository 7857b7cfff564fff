"""Snakemake adapter: embed one slide's patches (all magnifications) with one encoder."""
import torch

from wsikt.features import extract_features
from wsikt.logs import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    extract_features(
        snakemake.input.slide, snakemake.input.patches, snakemake.output[0],
        encoder=snakemake.wildcards.encoder, batch_size=p.batch_size,
        num_workers=p.num_workers, device=p.device, weights=p.weights, allow_hub=p.hub,
        precision=p.get("precision"), compile=p.get("compile", False), prefetch=p.get("prefetch", 2),
    )
