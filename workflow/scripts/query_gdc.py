"""Snakemake adapter: list the configured projects' diagnostic slides on the GDC → sample sheet."""
from pathlib import Path

from wsikt.acquire.gdc_query import query_slides
from wsikt.core.io import write_text, write_tsv
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    p = snakemake.params
    sheet, release = query_slides(p.base_url, p.projects, page_size=p.page_size, max_retries=p.max_retries)
    sheet.insert(3, "path", [str(Path(p.slide_dir) / f"{s}.svs") for s in sheet["slide_id"]])
    write_tsv(sheet, snakemake.output.samples)
    write_text(release + "\n", snakemake.output.release)
    log.info("%s: %d slides of %d patients (%s)", release, len(sheet), sheet["patient_id"].nunique(), ", ".join(p.projects))
