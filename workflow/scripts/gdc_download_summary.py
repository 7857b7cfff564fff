"""Snakemake adapter: what the GDC downloads did so far (downloaded, resumed, present, missing)."""
import json
from pathlib import Path

import pandas as pd

from wsikt.acquire.gdc_download import summarise_downloads
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]) as log:
    sheet = pd.read_csv(snakemake.params.sheet, sep="\t", dtype=str)
    found = {p.stem: json.loads(p.read_text()) for p in Path(snakemake.params.summaries).glob("*.json")}
    table = summarise_downloads(sheet, found, lambda path: Path(path).exists())
    write_tsv(table, snakemake.output[0])
    for status, n in table["status"].value_counts().items():
        log.info("%s: %d slide(s)", status, n)
