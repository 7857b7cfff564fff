"""Snakemake adapter: ROUPKT for one target cancer and outer fold, over the cached expert embeddings."""
import torch

from wsikt.cohort.bag_index import read_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.core.device import resolve_device
from wsikt.core.logs import log_to
from wsikt.formats.tables import read_table
from wsikt.training.settings import TrainSettings
from wsikt.transfer.roupkt import RoupktSettings, run_roupkt_fold

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, w, out = snakemake.params, snakemake.wildcards, snakemake.output
    split = read_table(snakemake.input.split)
    slides, feature_path = read_bag_index(snakemake.input.bags)
    bags = load_patient_bags(list(split["patient_id"]), slides, feature_path)  # router: primary magnification
    run_roupkt_fold(
        split, bags, snakemake.input.embeddings, w.cancer, int(w.fold), TrainSettings.from_config(p.experts, model=w.model),
        RoupktSettings.from_config(p.roupkt), out.model, out.predictions, out.router, out.metrics, resolve_device(p.device),
    )
