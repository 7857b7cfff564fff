"""Every paper preset through the workflow: dry runs on the GDC query and a sample sheet, and a demo-sized
end-to-end run of each preset's model, loss and protocol (tests/support/papers_on_demo.yaml)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.workflow_helpers import REPO, copy_repo, jobs_in_dry_run, snakemake

pytestmark = pytest.mark.workflow

PAPERS = ("cropkt", "dsca", "crossfusion", "histokt", "hssl")
OVERLAY = REPO / "tests" / "support" / "papers_on_demo.yaml"


def _preset(paper: str) -> dict:
    return yaml.safe_load((REPO / "config" / "papers" / f"{paper}.yaml").read_text())


def _effective(workdir: Path, *configfiles: str) -> dict:
    """The config the jobs run with (validated, defaults filled): results/config/effective.yaml."""
    run = snakemake(workdir, "results/config/effective.yaml", "--cores", "1", "--forceall", "--configfile", *configfiles)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return yaml.safe_load((workdir / "results/config/effective.yaml").read_text())


def _sample_sheet(workdir: Path, paper: str) -> Path:
    """A sample sheet as the GDC query writes it: five patients (one per fold) of every project the preset asks for."""
    rows = []
    for k, project in enumerate(_preset(paper)["gdc"]["projects"]):  # site k: one tissue-source site per project
        for i in range(5):
            slide = f"TCGA-{k:02d}-{i:04d}-01Z-00-DX1.{k:02d}{i:04d}"
            rows.append(dict(slide_id=slide, patient_id=f"TCGA-{k:02d}-{i:04d}", cancer=project.removeprefix("TCGA-"),
                             path=f"resources/slides/{slide}.svs", file_id=f"id-{k}-{i}", file_name=f"{slide}.svs",
                             md5="0" * 32, size=1000))
    sheet = workdir / _preset(paper)["gdc"]["sample_sheet"]
    sheet.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


def test_every_preset_plans_the_gdc_query_then_its_slides(tmp_path):
    """`snakemake -n --configfile config/papers/<paper>.yaml`: without a sample sheet the query is planned; with the
    sheet the query wrote, one preprocessing job per slide (all five dry runs side by side)."""

    def plan(paper: str) -> tuple[str, dict, dict]:
        workdir = copy_repo(tmp_path / paper)
        args = ("-n", "--configfile", f"config/papers/{paper}.yaml")
        query = snakemake(workdir, *args)
        _sample_sheet(workdir, paper)
        slides = snakemake(workdir, *args)
        for run in (query, slides):
            assert run.returncode == 0, (paper, run.stdout[-2000:] + run.stderr[-2000:])
        return paper, jobs_in_dry_run(query), jobs_in_dry_run(slides)

    with ThreadPoolExecutor(3) as pool:
        for paper, query, slides in pool.map(plan, PAPERS):
            assert query.get("query_gdc") == 1 and "preprocess_slide" not in query, (paper, query)
            assert slides.get("preprocess_slide") == 5 * len(_preset(paper)["gdc"]["projects"]), (paper, slides)


def test_cropkt_preset_parses_to_cropkts_setup(tmp_path):
    """The CROPKT preset's parsed config: DSS, uni_v2, the 13 cancers with the five groups, top-1 balance, source fold 0."""
    from wsikt.cohort.groups import CancerGroups

    workdir = copy_repo(tmp_path / "repo")
    _sample_sheet(workdir, "cropkt")
    cfg = _effective(workdir, "config/papers/cropkt.yaml")
    assert (cfg["endpoint"], cfg["features"]["encoder"], cfg["preprocess"]["target_mpp"]) == ("DSS", "uni_v2", 0.5)
    assert (cfg["roupkt"]["balance"], cfg["roupkt"]["source_folds"]) == ("top1", 0)
    assert set(cfg["cancer_groups"]) == {"COADREAD", "GBMLGG", "KIPAN", "LUNG", "STES"}
    sheet = pd.read_csv(workdir / cfg["gdc"]["sample_sheet"], sep="\t")
    cancers = set(CancerGroups.from_config(cfg["cancer_groups"]).apply(sheet)["cancer"])
    assert cancers == {"BLCA", "BRCA", "CESC", "COADREAD", "GBMLGG", "HNSC", "KIPAN", "LIHC", "LUNG", "SARC", "SKCM",
                       "STES", "UCEC"}


@pytest.fixture(scope="module")
def papers_demo(tmp_path_factory) -> Path:
    """A copy of the repo whose runs share one demo-sized cohort: patches and features at 20x, 10x and 5x."""
    workdir = copy_repo(tmp_path_factory.mktemp("papers") / "repo")
    shutil.copy2(OVERLAY, workdir / "config" / OVERLAY.name)
    return workdir


@pytest.mark.parametrize("paper", PAPERS)
def test_preset_runs_end_to_end_on_a_demo_sized_cohort(papers_demo, paper):
    """Each preset's model, loss, bins, optimiser and protocol on the demo's slides: every expert fold trains with
    the preset's model and the report is written; the paper's own outputs (ROUPKT, HistoKT's fine-tuned matrix and
    distillation, HistoSSLscaling's grid) are there."""
    files = ("--configfile", f"config/papers/{paper}.yaml", f"config/{OVERLAY.name}")
    run = snakemake(papers_demo, "--cores", "2", "--quiet", *files)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cfg = _effective(papers_demo, *files[1:])
    ex = cfg["experts"]
    base = papers_demo / "results" / "experts" / "demo" / ex["model"] / cfg["endpoint"]
    metrics = sorted(base.glob("*/fold*/metrics.json"))
    assert len(metrics) == 2 * ex["folds"], metrics
    for path in metrics:
        m = json.loads(path.read_text())
        assert m["model"] == ex["model"] and m["n_test"] > 0
        assert m["train_settings"]["loss"] == ex["loss"] and m["train_settings"]["optimizer"] == ex["optimizer"]
    report = (papers_demo / "results" / "report" / "index.html").read_text()
    assert ex["model"] in report
    transfer = papers_demo / "results" / "transfer" / "demo" / ex["model"] / cfg["endpoint"]
    if paper == "cropkt":
        summary = pd.read_csv(papers_demo / f"results/roupkt/demo/{ex['model']}/{cfg['endpoint']}/summary.tsv", sep="\t")
        assert set(summary["cancer"]) == {"SHRA", "REVS"}
    if paper == "histokt":
        finetuned = pd.read_csv(transfer / "finetuned_matrix.tsv", sep="\t")
        assert set(finetuned["method"]) == {"head", "all"} and len(finetuned) == 2 * 2  # 2 methods × 2 off-diagonal cells
        merged = json.loads(next((papers_demo / "results" / "baselines").rglob("merge_tune/*/fold0/metrics.json")).read_text())
        assert merged["lr"] in cfg["baselines"]["lr_grid"]
    if paper == "hssl":
        grid = json.loads(metrics[0].read_text())["grid"]
        assert len(grid["trials"]) == 4 and set(grid["chosen"]) == {"lr", "weight_decay", "epochs"}
