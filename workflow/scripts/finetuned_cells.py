"""Snakemake adapter: one target fold's row of HistoKT's fine-tuned matrix (every other source, one method)."""
import torch

from wsikt.cohort.bag_index import read_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.core.device import resolve_device
from wsikt.core.logs import log_to
from wsikt.formats.tables import read_table
from wsikt.training.experts import expert_key, load_expert
from wsikt.training.settings import TrainSettings
from wsikt.transfer.baseline_settings import BaselineSettings, needs_bags
from wsikt.transfer.finetuned_matrix import finetuned_cells, write_cells

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, w = snakemake.params, snakemake.wildcards
    split = read_table(snakemake.input.split)
    checkpoints = {expert_key(f): f for f in snakemake.input.experts}
    device = resolve_device(p.device)
    bags = None
    if needs_bags(w.method):  # 'all' runs the experts on the patches; 'head' uses the cached embeddings
        slides, feature_path = read_bag_index(snakemake.input.bags)
        scales = getattr(load_expert(next(iter(checkpoints.values())), device), "scales", None)
        bags = load_patient_bags(list(split["patient_id"]), slides, feature_path, scales)
    cells = finetuned_cells(
        split, snakemake.input.embeddings, w.cancer, int(w.fold), TrainSettings.from_config(p.experts, model=w.model),
        BaselineSettings.from_config(p.baselines, method=w.method), device, checkpoints, bags=bags,
    )
    write_cells(cells, snakemake.output[0])
