"""Snakemake adapter: train one cancer's expert on one fold's training patients."""
import torch

from wsikt.cohort.bag_index import read_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.core.device import resolve_device
from wsikt.core.logs import log_to
from wsikt.core.model_facts import model_scales
from wsikt.formats.tables import read_table
from wsikt.training.experts import run_expert_fold
from wsikt.training.settings import HyperGrid, NullGate, TrainSettings

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    split = read_table(snakemake.input.split)
    slides, feature_path = read_bag_index(snakemake.input.bags)
    settings = TrainSettings.from_config(p.experts, model=snakemake.wildcards.model)
    scales = model_scales(settings.model, **settings.model_params)  # dsca/crossfusion read several magnifications
    bags = load_patient_bags(list(split["patient_id"]), slides, feature_path, scales, settings.max_tiles_per_slide)
    run_expert_fold(
        split, bags, int(snakemake.wildcards.fold), settings, snakemake.output.model,
        snakemake.output.predictions, snakemake.output.metrics, resolve_device(p.device), NullGate.from_config(p.experts),
        HyperGrid.from_config(p.experts),
    )
