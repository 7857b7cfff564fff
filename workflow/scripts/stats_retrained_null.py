"""Snakemake adapter: the opt-in retrained null of one cancer (stats.permutations label permutations)."""
import torch

from wsikt.cohort.bag_index import read_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.core.device import resolve_device
from wsikt.core.logs import log_to
from wsikt.core.model_facts import model_scales
from wsikt.formats.stats_tables import write_stats_table
from wsikt.formats.tables import read_table
from wsikt.stats.retrain import retrained_null
from wsikt.training.settings import NullGate, TrainSettings
from wsikt.transfer.roupkt import RoupktSettings

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, w = snakemake.params, snakemake.wildcards
    split = read_table(snakemake.input.split)
    slides, feature_path = read_bag_index(snakemake.input.bags)
    train = TrainSettings.from_config(p.experts, model=w.model)
    bags = load_patient_bags(list(split["patient_id"]), slides, feature_path, model_scales(train.model, **train.model_params))
    routed = w.cancer in p.roupkt_targets
    table = retrained_null(
        split, bags, p.permutations, train, NullGate.from_config(p.experts),
        resolve_device(p.device), p.seed, RoupktSettings.from_config(p.roupkt) if routed else None,
        snakemake.input.embeddings if routed else None,
    )
    write_stats_table(table, "retrained_null", snakemake.output[0])
