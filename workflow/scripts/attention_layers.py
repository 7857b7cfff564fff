"""Snakemake adapter: one cancer's per-patch attention layers from every outer fold's saved model."""
import torch

from wsikt.attention.maps import write_cancer_attention
from wsikt.cohort.bag_index import read_bag_index
from wsikt.core.device import resolve_device
from wsikt.core.logs import log_to
from wsikt.formats.tables import read_table

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
    slides, feature_path = read_bag_index(i.bags)
    write_cancer_attention(
        "expert" if w.source == "experts" else "roupkt", w.cancer, w.model, read_table(i.split), slides, feature_path,
        list(i.models), list(i.predictions), o.h5, o.geojson, resolve_device(snakemake.params.device),
    )
