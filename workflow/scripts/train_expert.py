"""Snakemake adapter: train one cancer's expert on one fold's training patients."""
import pandas as pd
import torch

from wsikt.bags import load_patient_bags
from wsikt.experts import TrainSettings, run_expert_fold
from wsikt.features import resolve_device
from wsikt.logs import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    split = pd.read_csv(snakemake.input.split, sep="\t", dtype={"patient_id": str})
    samples = pd.read_csv(snakemake.input.samples, sep="\t", dtype=str)
    feature_path = {p.split("/")[-1][: -len(".h5")]: p for p in snakemake.input.features}
    bags = load_patient_bags(list(split["patient_id"]), samples, feature_path)
    settings = TrainSettings(model=snakemake.wildcards.model, **snakemake.params.settings)
    run_expert_fold(
        split, bags, int(snakemake.wildcards.fold), settings, snakemake.output.model,
        snakemake.output.predictions, snakemake.output.metrics, resolve_device(snakemake.params.device),
    )
