"""Snakemake adapter: download one GDC slide resumably, verify size and md5, rename atomically."""
from tqdm import tqdm

from wsikt.acquire.gdc import read_token
from wsikt.acquire.gdc_download import download_file
from wsikt.core.io import write_json
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    p, f = snakemake.params, snakemake.params.gdc_file
    token = read_token(p.token_file) if p.token_file else None
    with tqdm(total=f["size"], unit="B", unit_scale=True, desc=snakemake.wildcards.slide, mininterval=10) as bar:
        summary = download_file(
            p.base_url, f["file_id"], snakemake.output.slide, f["md5"], f["size"], token=token,
            max_retries=p.max_retries, progress=lambda done, total: bar.update(done - bar.n),
        )
    write_json(summary, snakemake.output.summary)
    log.info("%s: %d bytes transferred, resumed=%s, %d attempt(s)", f["file_id"], summary["bytes_transferred"], summary["resumed"], summary["attempts"])
