"""Snakemake adapter: every expert's embedding and risk for every patient of one target, plus its zero-shot C rows."""
import torch

from wsikt.cohort.bag_index import read_bag_index
from wsikt.cohort.bags import load_patient_bags
from wsikt.core.device import resolve_device
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.formats.tables import read_table
from wsikt.training.experts import expert_key, load_expert
from wsikt.transfer.embedding_cache import embed_target
from wsikt.transfer.matrix import training_rows, zero_shot_rows

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, target = snakemake.params, snakemake.wildcards.cancer
    split = read_table(snakemake.input.split)
    slides, feature_path = read_bag_index(snakemake.input.bags)
    experts = {expert_key(f): f for f in snakemake.input.experts}
    device = resolve_device(p.device)
    scales = getattr(load_expert(next(iter(experts.values())), device), "scales", None)  # multi-scale experts need them
    risks = embed_target(
        experts, list(split["patient_id"]), lambda ids: load_patient_bags(ids, slides, feature_path, scales),
        snakemake.output.embeddings, device, target=target, chunk=getattr(p, "chunk", 16),
    )
    write_tsv(zero_shot_rows(risks, split, target), snakemake.output.zero_shot)
    write_tsv(training_rows(risks, split, target), snakemake.output.training)
