"""Snakemake adapter: one slide's features from an external CLAM/TRIDENT/.pt directory → our features h5."""
from wsikt.ingest import ingest_slide
from wsikt.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    ingest_slide(
        p.source, snakemake.wildcards.slide, snakemake.output[0],
        encoder=snakemake.wildcards.encoder, mpp=p.get("mpp"),
    )
