"""Snakemake adapter: zero-shot transfer of every expert to every target cancer."""
import pandas as pd
import torch

from wsikt.bags import load_patient_bags
from wsikt.features import resolve_device
from wsikt.io import write_tsv
from wsikt.logs import log_to
from wsikt.transfer import transfer_long, transfer_matrix

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    slides = pd.DataFrame([(s, pc[0]) for s, pc in p.slides.items()], columns=["slide_id", "patient_id"])
    feature_path = {f.split("/")[-1][: -len(".h5")]: f for f in snakemake.input.features}
    experts = {(c, k): snakemake.input.experts[i * len(p.folds) + j] for i, c in enumerate(p.cancers) for j, k in enumerate(p.folds)}
    targets = {}
    for cancer, split_path in zip(p.cancers, snakemake.input.splits):
        split = pd.read_csv(split_path, sep="\t", dtype={"patient_id": str})
        targets[cancer] = (split, load_patient_bags(list(split["patient_id"]), slides, feature_path))
    long = transfer_long(experts, targets, resolve_device(p.device))
    write_tsv(long, snakemake.output.folds)
    write_tsv(transfer_matrix(long), snakemake.output.matrix)
