"""Snakemake adapter: fetch the TCGA-CDR clinical table from the GDC, verified against its pinned md5 and size."""
from wsikt.acquire.tcga_cdr import fetch_tcga_cdr
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    p, pinned = snakemake.params, snakemake.params.pinned
    summary = fetch_tcga_cdr(
        p.base_url, snakemake.output[0], pinned["file_id"], pinned["md5"], pinned["size"], max_retries=p.max_retries
    )
    log.info("%s: %s fetched and verified (md5 %s, %d bytes, %d attempt(s))",
             pinned["file_id"], snakemake.output[0], pinned["md5"], pinned["size"], summary["attempts"])
