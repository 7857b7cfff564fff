"""The workflow parses with pooled cancers (cancer_groups) and site-preserved splits, and stops on a bad split config."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.workflow_helpers import copy_repo, jobs_in_dry_run, snakemake

pytestmark = pytest.mark.workflow

SITES = {"COAD": ["AA", "AG", "A6"], "READ": ["AG", "EI"]}  # AG sends both: one site of the pooled cancer


def _pooled_cohort(workdir: Path, folds: int) -> Path:
    """A user config over TCGA-COAD and TCGA-READ pooled as COADREAD, 4 sites × 3 patients, site-preserved folds."""
    own = workdir / "own"
    (own / "slides").mkdir(parents=True)
    sheet, clinical = [], []
    for project, sites in SITES.items():
        for site in sites:
            for i in range(3 if project == "COAD" or site == "EI" else 2):
                pid = f"TCGA-{site}-{project[0]}{i:03d}"
                path = own / "slides" / f"{pid}-01Z-00-DX1.svs"
                path.write_bytes(b"")
                sheet.append(dict(slide_id=path.stem, patient_id=pid, cancer=project, path=str(path.relative_to(workdir))))
                clinical.append({"bcr_patient_barcode": pid, "type": project, "OS": i % 2, "OS.time": 100 + 10 * i})
    pd.DataFrame(sheet).to_csv(own / "samples.tsv", sep="\t", index=False)
    pd.DataFrame(clinical).to_csv(own / "clinical.tsv", sep="\t", index=False)
    cfg = own / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "demo": {"enabled": False}, "samples": "own/samples.tsv", "clinical": "own/clinical.tsv",
        "features": {"encoder": "demo"}, "experts": {"folds": folds},
        "cancer_groups": {"COADREAD": ["TCGA-COAD", "TCGA-READ"]}, "splits": {"strategy": "site"},
    }))
    return cfg


def test_pooled_cancer_with_site_splits_parses(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    result = snakemake(workdir, "-n", "--configfile", str(_pooled_cohort(workdir, folds=3)))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = jobs_in_dry_run(result)
    # COAD and READ are one cancer: one label table, one split, 3 folds of one expert
    assert jobs["build_labels"] == jobs["make_splits"] == jobs["bag_index"] == 1, jobs
    assert jobs["train_expert"] == 3 and jobs["preprocess_slide"] == 14, jobs
    assert set(re.findall(r"cancer=(\w+)", result.stdout)) == {"COADREAD"}


def test_fewer_sites_than_folds_stop_the_run_before_any_job(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    failed = snakemake(workdir, "-n", "--configfile", str(_pooled_cohort(workdir, folds=5)))
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert ("own/samples.tsv: cancer COADREAD: 4 tissue-source site(s) cannot fill 5 site-preserved folds; "
            "lower experts.folds or use splits.strategy stratified") in out, out[-3000:]
