"""Snakemake adapter: one cancer's patient-level test folds by splits.strategy (patients without patches excluded)."""
import pandas as pd

from wsikt.cohort.split_settings import SplitSettings, split_patients
from wsikt.core.io import write_tsv
from wsikt.core.logs import log_to
from wsikt.preprocess.pipeline import usable_patients

with log_to(snakemake.log[0]) as log:
    cancer, p = snakemake.wildcards.cancer, snakemake.params
    slides = pd.DataFrame({"slide_id": list(p.slides), "patient_id": list(p.slides.values()), "cancer": cancer})
    patch_path = {f.split("/")[-1][: -len(".h5")]: f for f in snakemake.input.patches}
    keep, excluded = usable_patients(slides, patch_path)
    labels = pd.read_csv(snakemake.input.labels, sep="\t", dtype={"patient_id": str})
    settings = SplitSettings.from_config(p.splits)
    split, left_out = split_patients(
        settings, labels[labels["patient_id"].isin(keep)], p.folds, p.seed, sites=p.sites, cohorts=p.cohorts,
        fold_files=list(snakemake.input.fold_files), known=sorted(set(p.slides.values())))
    log.info("%s: %s split, %d patients in %d test fold(s), %d trained on only, %d left out", cancer, settings.strategy,
             len(split), split.loc[split["fold"] >= 0, "fold"].nunique(), int((split["fold"] < 0).sum()), len(left_out))
    write_tsv(split, snakemake.output.split)
    write_tsv(pd.concat([excluded, left_out], ignore_index=True), snakemake.output.excluded)
