"""Workflow tests: snakemake as a subprocess on a copy of the repo (dry runs, the demo run, reruns)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.browser_check import CHROMIUM, check_in_browser
from support.workflow_helpers import copy_repo, dry_run_with, jobs_in_dry_run, rules_in_dry_run, snakemake

from wsikt.acquire.demo_cohort import plan_cohort, sample_sheet
from wsikt.features.batches import plan_batches

pytestmark = pytest.mark.workflow

PREPROCESSING_RULES = {"demo_cohort", "preprocess_slide", "extract_features", "bag_index", "build_labels", "make_splits"}


@pytest.fixture(scope="module")
def demo_run(demo_started) -> Path:
    """The demo workflow run end to end once, on 2 cores, in a fresh copy of the repo (started early: conftest)."""
    rc, out, wall = demo_started.wait(1200)
    print(f"demo run wall time (the rest of the suite alongside): {wall:.0f} s")
    assert rc == 0, out[-4000:]
    return demo_started.workdir


def _demo_sheet(workdir: Path) -> pd.DataFrame:
    """The demo's sample sheet as the Snakefile plans it (no run needed)."""
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())["demo"]
    demo = plan_cohort(seed=cfg["seed"], cancers=cfg["cancers"], two_slide_fraction=cfg["two_slide_fraction"],
                       fraction_40x=cfg["fraction_40x"], appearance=cfg["appearance"])
    return sample_sheet(demo.slides, "resources/demo/slides")


def _summary(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "results/experts/demo/abmil/OS/summary.tsv", sep="\t").set_index("cancer")


def test_dry_run_lists_every_stage(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = jobs_in_dry_run(result)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    n_cancers = len(cfg["demo"]["cancers"])
    assert jobs["demo_cohort"] == 1
    assert jobs["preprocess_slide"] >= sum(c["n_patients"] for c in cfg["demo"]["cancers"])
    # One feature job per content-defined batch of ~features.slides_per_job slides, not one per slide.
    sheet = _demo_sheet(workdir)
    batches = plan_batches(sheet.groupby("cancer")["slide_id"].apply(list).to_dict(), cfg["features"]["slides_per_job"])
    assert jobs["extract_features"] == len(batches) < jobs["preprocess_slide"] / 4
    assert jobs["make_splits"] == n_cancers
    assert jobs["train_expert"] == n_cancers * cfg["experts"]["folds"]
    assert jobs["bag_index"] == n_cancers  # one feature list per cancer, read by every model rule
    assert jobs["transfer_matrix"] == jobs["report"] == 1
    assert jobs["stats_chance"] == jobs["stats_matrix"] == 1 and "stats_retrained_null" not in jobs  # opt-in: off
    assert jobs["attention_layers"] == 2 * n_cancers and jobs["heatmaps"] == 1  # experts + router, per cancer


def test_without_the_transfer_matrix_no_embedding_matrix_or_matrix_ci_job_is_requested(tmp_path):
    """transfer.matrix false (the one-model-per-cancer papers' presets): the demo's DAG keeps the experts, the
    chance stats and the report, and loses embed_cohort, transfer_matrix and stats_matrix; with ROUPKT still on,
    parsing stops with one line naming the keys."""
    workdir = copy_repo(tmp_path / "repo")
    result, jobs = dry_run_with(workdir, tmp_path / "off.yaml", "transfer:\n  matrix: false\nroupkt:\n  targets: []\n")
    assert jobs["report"] == jobs["stats_chance"] == 1 and jobs["train_expert"] > 0, jobs
    assert not {"embed_cohort", "transfer_matrix", "stats_matrix", "train_roupkt"} & set(jobs), jobs
    assert "transfer_heatmap.png" not in result.stdout and "matrix.tsv" not in result.stdout
    (tmp_path / "bad.yaml").write_text("transfer:\n  matrix: false\n")
    bad = snakemake(workdir, "-n", "--configfile", "config/config.yaml", str(tmp_path / "bad.yaml"))
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if ln.startswith("config: transfer.matrix")]
    assert bad.returncode != 0 and "Job stats" not in bad.stdout
    assert lines == ["config: transfer.matrix is false (no expert embeddings are computed), but roupkt.targets 'all' "
                     "needs them: set roupkt.targets: [], or transfer.matrix: true"], (bad.stdout + bad.stderr)[-2000:]


def test_profile_resources_reach_every_feature_batch_job(tmp_path):
    """profiles/slurm's set-resources for extract_features apply to each batch rule extract_features_<batch>,
    and each batch's runtime grows with its slides."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    workdir = copy_repo(tmp_path / "repo")
    result = snakemake(workdir, "-n", "--profile", "profiles/slurm")
    profile = yaml.safe_load((workdir / "profiles/slurm/config.yaml").read_text())["set-resources"]["extract_features"]
    assert profile and "runtime" not in profile
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    blocks = re.findall(r"rule (extract_features_\w+):\n(.*?)\nShell command", result.stdout, re.S)
    assert blocks and len(blocks) == jobs_in_dry_run(result)["extract_features"]
    spm = yaml.safe_load((workdir / "config/config.yaml").read_text())["features"]["minutes_per_slide"]
    for rule, block in blocks:
        resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))
        n_slides = len(re.search(r"output: (.*)", block).group(1).split(", "))
        assert {k: resources[k] for k in profile} == {k: str(v) for k, v in profile.items()}, (rule, resources)
        assert int(resources["runtime"]) == int(10 + spm * n_slides), (rule, resources, n_slides)


def test_dry_run_builds_the_whole_dag_without_torch(tmp_path):
    """Parsing the workflow (which every job repeats) never imports torch: with torch made unimportable,
    `snakemake -n` on the demo still builds every job."""
    import os
    import subprocess
    import sys

    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is unimportable in this test')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
    )
    workdir = copy_repo(tmp_path / "repo")
    env = dict(os.environ, PYTHONPATH=str(block))
    exe = Path(sys.executable).with_name("snakemake")
    result = subprocess.run([str(exe), "-n"], cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = jobs_in_dry_run(result)
    assert jobs["preprocess_slide"] > 0 and jobs["extract_features"] > 0 and jobs["train_roupkt"] > 0 and jobs["report"] == 1
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert check.returncode != 0 and "unimportable" in check.stderr  # the block really held


def test_lint_is_clean(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    result = snakemake(workdir, "--lint")
    assert "Congratulations" in result.stdout + result.stderr, result.stdout[-3000:]


def test_workflow_files_are_snakefmt_clean():
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("snakefmt")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([str(exe), "--config", ".snakefmt.toml", "--check", "."], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["experts"].__setitem__("epochs", "ten"), "experts.epochs"),
        (lambda c: c["features"].__setitem__("encoder", "uni_v9"), "features.encoder"),
        (lambda c: c["demo"]["cancers"][0].pop("n_patients"), "demo.cancers.0.n_patients"),
        (lambda c: c["experts"].__setitem__("lerning_rate", 0.1), "lerning_rate"),
        (lambda c: c["preprocess"].__setitem__("min_tissue_fraction", 2), "preprocess.min_tissue_fraction"),
    ],
    ids=["wrong-type", "unknown-encoder", "missing-key", "typo-key", "out-of-range"],
)
def test_malformed_config_rejected_before_any_job(tmp_path, edit, key):
    workdir = copy_repo(tmp_path / "repo")
    path = workdir / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "--cores", "1")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    error_lines = [line for line in out.splitlines() if "config:" in line and key in line]
    assert error_lines, out[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources/demo").exists()


def test_demo_report_has_both_tables_matching_results(demo_run):
    html = (demo_run / "results/report/index.html").read_text()
    summary = _summary(demo_run)
    expert_table = html.split('id="expert-table"')[1].split("</table>")[0]
    for cancer, row in summary.iterrows():
        m = re.search(rf"<td>{cancer}</td><td>\d+</td><td data-c=\"([0-9.]+)\"", expert_table)
        assert m, f"{cancer} missing from the expert table"
        assert float(m.group(1)) == pytest.approx(row["c_index_mean"], abs=5e-5)
    matrix = pd.read_csv(demo_run / "results/transfer/demo/abmil/OS/matrix.tsv", sep="\t")
    transfer_table = html.split('id="transfer-table"')[1].split("</table>")[0]
    cells = [float(v) for v in re.findall(r'data-c="([0-9.]+)"', transfer_table)]
    assert sorted(cells) == pytest.approx(sorted(matrix["c_index_mean"].round(4)), abs=5e-5)
    assert "data:image/png;base64," in html


def test_planted_signal_is_learnt(demo_run):
    summary = _summary(demo_run)
    truth = pd.read_csv(demo_run / "resources/demo/truth.tsv", sep="\t")
    mechanism = truth.groupby("cancer")["mechanism"].first()
    counts = truth.groupby("cancer").size()
    planted = [c for c in summary.index if mechanism[c] != "none" and counts[c] >= 20]
    assert planted, "the demo must have planted, non-rare cancers"
    for cancer in planted:
        assert summary.at[cancer, "c_index_mean"] >= 0.70, (cancer, summary.at[cancer, "c_index_mean"])
    for cancer in (c for c in summary.index if mechanism[c] == "none"):
        assert abs(summary.at[cancer, "c_index_mean"] - 0.5) <= 0.1, (cancer, summary.at[cancer, "c_index_mean"])
        # inner CV finds nothing to learn, so every fold's expert is the null model (experts.null_gate)
        assert summary.at[cancer, "null_folds"] == summary.at[cancer, "folds"], summary.loc[cancer].to_dict()
    for cancer in planted:
        assert summary.at[cancer, "null_folds"] == 0, summary.loc[cancer].to_dict()


def test_second_run_does_nothing(demo_run):
    result = snakemake(demo_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-2000:]


def test_training_change_reruns_no_preprocessing(demo_run, tmp_path):
    result, jobs = dry_run_with(demo_run, tmp_path / "changed.yaml", "experts:\n  epochs: 7\n")
    assert jobs.get("train_expert", 0) > 0, result.stdout[-2000:]
    assert not PREPROCESSING_RULES & set(jobs), jobs


def test_encoder_change_reruns_features_not_preprocessing(demo_run, tmp_path):
    _, jobs = dry_run_with(demo_run, tmp_path / "encoder.yaml",
                           "features:\n  encoder: resnet50\n  weights: resources/weights/resnet50.safetensors\n")
    sheet = pd.read_csv(demo_run / "resources/demo/samples.tsv", sep="\t")
    spj = yaml.safe_load((demo_run / "config/config.yaml").read_text())["features"]["slides_per_job"]
    assert jobs["extract_features"] == len(plan_batches(sheet.groupby("cancer")["slide_id"].apply(list).to_dict(), spj))
    assert jobs["bag_index"] == len(yaml.safe_load((demo_run / "config/config.yaml").read_text())["demo"]["cancers"])
    assert jobs["train_expert"] > 0 and jobs["transfer_matrix"] == 1
    assert not {"demo_cohort", "preprocess_slide", "build_labels", "make_splits"} & set(jobs), jobs


def test_one_slide_added_reruns_only_it_and_its_cancer(demo_run, tmp_path):
    """A user-style sample sheet over the demo slides; one new slide of one patient is added."""
    sheet = pd.read_csv(demo_run / "resources/demo/samples.tsv", sep="\t")
    own = demo_run / "config/own.yaml"
    own.write_text(yaml.safe_dump({"demo": {"enabled": False}, "samples": "resources/own/samples.tsv",
                                   "clinical": "resources/demo/clinical.tsv"}))
    (demo_run / "resources/own").mkdir(exist_ok=True)
    sheet.to_csv(demo_run / "resources/own/samples.tsv", sep="\t", index=False)
    same = snakemake(demo_run, "-n", "--configfile", "config/config.yaml", str(own))
    assert same.returncode == 0, same.stdout[-2000:]
    # only the shown config changed: the report, and the heatmaps, whose attention–density table names each demo
    # cancer's planted mechanism (demo.cancers), not known without the demo
    assert set(jobs_in_dry_run(same)) <= {"heatmaps", "report", "all"}, jobs_in_dry_run(same)

    first = sheet.iloc[0]
    new_path = demo_run / "resources/own/extra.tiff"
    new_path.symlink_to((demo_run / first["path"]).resolve())
    extra = dict(first, slide_id=f"{first['patient_id']}-01Z-00-DX9", path=str(new_path.relative_to(demo_run)))
    pd.concat([sheet, pd.DataFrame([extra])]).to_csv(demo_run / "resources/own/samples.tsv", sep="\t", index=False)
    added = snakemake(demo_run, "-n", "--configfile", "config/config.yaml", str(own))
    assert added.returncode == 0, added.stdout[-2000:]
    jobs = jobs_in_dry_run(added)
    cfg = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    folds = cfg["experts"]["folds"]
    assert jobs["preprocess_slide"] == jobs["extract_features"] == 1
    # The one feature job is the batch the new slide falls in; the other slides of the cohort keep theirs.
    new_sheet = pd.read_csv(demo_run / "resources/own/samples.tsv", sep="\t")
    batches = plan_batches(new_sheet.groupby("cancer")["slide_id"].apply(list).to_dict(), cfg["features"]["slides_per_job"])
    (rule,) = [r for r in rules_in_dry_run(added) if r.startswith("extract_features_")]
    assert extra["slide_id"] in batches[rule.removeprefix("extract_features_")]
    assert jobs["build_labels"] == jobs["make_splits"] == jobs["bag_index"] == 1  # its cancer only
    assert jobs["train_expert"] == folds
    assert "demo_cohort" not in jobs


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_demo_report_in_a_real_browser(demo_run, tmp_path):
    shot = check_in_browser(demo_run / "results/report/index.html", tmp_path)
    (demo_run / "results/report/screenshot.png").write_bytes(shot.read_bytes())  # kept for a human look


def test_snakemake_report_zip(demo_run, tmp_path):
    out = tmp_path / "report.zip"
    result = snakemake(demo_run, "--report", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    names = zipfile.ZipFile(out).namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("index.html") for n in names), names


def test_roupkt_change_reruns_only_roupkt_and_report(demo_run, tmp_path):
    _, jobs = dry_run_with(demo_run, tmp_path / "roupkt.yaml", "roupkt:\n  topk: 2\n")
    assert jobs.get("train_roupkt", 0) > 0, jobs
    # no expert, no embedding; the router's attention layers, the heatmaps drawn from them and the chance
    # reference and paired intervals of ROUPKT's predictions follow it
    assert set(jobs) <= {"train_roupkt", "summarise_roupkt", "attention_layers", "heatmaps", "stats_chance", "report",
                         "all"}, jobs
    assert "stats_matrix" not in jobs  # the matrix cells are the experts'
    assert jobs.get("attention_layers") == len(_summary(demo_run))  # the router's only, one per cancer


def test_heatmaps_change_reruns_no_training(demo_run, tmp_path):
    _, jobs = dry_run_with(demo_run, tmp_path / "heatmaps.yaml", "report:\n  heatmaps: 3\n")
    assert jobs.get("heatmaps") == 1 and set(jobs) <= {"heatmaps", "report", "all"}, jobs


def test_demo_attention_layers_heatmaps_and_density(demo_run):
    """Every test slide has an attention layer (h5 + QuPath GeoJSON); the report shows ≥ 12 heatmaps,
    the gallery and the attention–density ρ of every planted cancer."""
    from wsikt.formats.attention import read_attention_h5

    sheet = pd.read_csv(demo_run / "resources/demo/samples.tsv", sep="\t")
    base = demo_run / "results/attention/demo/abmil/OS"
    for source in ("experts", "roupkt"):
        for cancer, slides in sheet.groupby("cancer")["slide_id"]:
            attrs, layers = read_attention_h5(base / source / cancer / "attention.h5")
            assert attrs["cancer"] == cancer and {s.slide_id for s in layers} <= set(slides) and len(layers) >= 0.9 * len(slides)
            assert {p.stem for p in (base / source / cancer / "geojson").glob("*.geojson")} == {s.slide_id for s in layers}
    html = (demo_run / "results/report/index.html").read_text()
    assert html.count('<figure class="heatmap"') >= 12 and 'id="gallery-table"' in html
    density = pd.read_csv(demo_run / "results/report/attention_density.tsv", sep="\t")
    truth = pd.read_csv(demo_run / "resources/demo/truth.tsv", sep="\t")
    planted = set(truth.loc[truth["mechanism"] != "none", "cancer"])
    assert planted <= set(density["cancer"]) and density["rho_mean"].between(-1, 1).all()


def test_stats_change_reruns_no_training(demo_run, tmp_path):
    """stats.* reach only the stats rules and the report; the opt-in retrained null adds its own jobs only."""
    _, jobs = dry_run_with(demo_run, tmp_path / "stats.yaml", "stats:\n  n_boot: 500\n  chance_permutations: 2000\n")
    assert jobs.get("stats_chance") == 1 and jobs.get("stats_matrix") == 1, jobs
    assert set(jobs) <= {"stats_chance", "stats_matrix", "report", "all"}, jobs
    _, jobs = dry_run_with(demo_run, tmp_path / "perm.yaml", "stats:\n  permutations: 2\n")
    n_cancers = len(yaml.safe_load((demo_run / "config/config.yaml").read_text())["demo"]["cancers"])
    assert jobs.get("stats_retrained_null") == n_cancers and set(jobs) <= {"stats_retrained_null", "report", "all"}, jobs


def test_roupkt_is_gated_on_the_no_signal_cancer_and_the_report_shows_chance_and_intervals(demo_run):
    """Acceptance (issue 21): ROUPKT on the no-signal cancer is 0.5 ± 0.05 through its null gate; the report
    shows permutation p-values, the paired CI of ROUPKT − expert, matrix-cell CIs."""
    truth = pd.read_csv(demo_run / "resources/demo/truth.tsv", sep="\t").groupby("cancer")["mechanism"].first()
    roupkt = pd.read_csv(demo_run / "results/roupkt/demo/abmil/OS/summary.tsv", sep="\t").set_index("cancer")
    for cancer in (c for c in roupkt.index if truth[c] == "none"):
        assert abs(roupkt.at[cancer, "c_index_mean"] - 0.5) <= 0.05 and roupkt.at[cancer, "null_folds"] > 0, roupkt.loc[cancer]
    stats = demo_run / "results/stats/demo/abmil/OS"
    chance = pd.read_csv(stats / "chance.tsv", sep="\t")
    compare = pd.read_csv(stats / "compare.tsv", sep="\t")
    assert set(chance["method"]) == {"expert", "roupkt"} and set(compare["method"]) == {"roupkt"}
    assert len(pd.read_csv(stats / "matrix_ci.tsv", sep="\t")) == len(truth) ** 2
    html = (demo_run / "results/report/index.html").read_text()
    expert_table, roupkt_table = (html.split(f'id="{t}"')[1].split("</table>")[0] for t in ("expert-table", "roupkt-table"))
    assert expert_table.count("data-perm-p=") == len(truth) and roupkt_table.count("data-perm-p=") == len(roupkt)
    assert roupkt_table.count("data-delta-p=") == len(roupkt)


def test_roupkt_and_transfer_outputs(demo_run):
    base = demo_run / "results/roupkt/demo/abmil/OS"
    summary = pd.read_csv(base / "summary.tsv", sep="\t").set_index("cancer")
    cancers = pd.read_csv(demo_run / "resources/demo/samples.tsv", sep="\t")["cancer"].unique()
    assert set(summary.index) == set(cancers)
    router = pd.read_csv(base / "RARE/fold0/router.tsv", sep="\t")
    assert len(router) > 0 and router["patient_id"].is_unique
    positive = pd.read_csv(demo_run / "results/transfer/demo/abmil/OS/positive.tsv", sep="\t")
    assert set(positive["target"]) == set(cancers)
    html = (demo_run / "results/report/index.html").read_text()
    assert 'id="roupkt-table"' in html


@pytest.mark.parametrize("model", ["transmil"])  # dsca and crossfusion: tests/workflow/test_papers.py
def test_other_aggregators_run_end_to_end(demo_run, model, tmp_path):
    """TransMIL reads the demo's 20x features (the multi-magnification models run in test_papers.py)."""
    target = f"results/experts/demo/{model}/OS/SHRA/fold0/metrics.json"
    changed = tmp_path / "model.yaml"
    changed.write_text(f"experts:\n  model: {model}\n")
    result = snakemake(demo_run, target, "--cores", "2", "--configfile", "config/config.yaml", str(changed), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = yaml.safe_load((demo_run / target).read_text())
    assert metrics["model"] == model and 0.0 <= metrics["c_index_test"] <= 1.0
    assert metrics["n_test"] > 0


def test_bad_slides_are_recorded_and_the_rest_completes(demo_run, fixture_slides):
    """Real broken files in a user sample sheet: each gets a status; the cancer's splits still complete."""
    sheet = pd.read_csv(demo_run / "resources/demo/samples.tsv", sep="\t")
    bad = {"unreadable.svs": "BAD-0001", "broken.svs": "BAD-0002", "unopenable.tiff": "BAD-0003",
           "TCGA-CR-7395-01A-01-TS1.svs": "BAD-0004"}
    rows = [dict(slide_id=Path(name).stem, patient_id=pid, cancer="SHRA", path=str(fixture_slides / name))
            for name, pid in bad.items()]
    # the same TCGA slide again, with the mpp override it needs
    rows.append(dict(slide_id="TCGA-CR-7395-override", patient_id="BAD-0005", cancer="SHRA",
                     path=str(fixture_slides / "TCGA-CR-7395-01A-01-TS1.svs"), mpp=0.25))
    rows.append(dict(slide_id="gone", patient_id="BAD-0006", cancer="SHRA", path="resources/bad/gone.svs"))  # no file
    (demo_run / "resources/bad").mkdir(exist_ok=True)
    pd.concat([sheet, pd.DataFrame(rows)]).to_csv(demo_run / "resources/bad/samples.tsv", sep="\t", index=False)
    clinical = pd.read_csv(demo_run / "resources/demo/clinical.tsv", sep="\t")
    extra = clinical[clinical["type"] == "SHRA"].head(6).copy()
    extra["bcr_patient_barcode"] = list(bad.values()) + ["BAD-0005", "BAD-0006"]
    pd.concat([clinical, extra]).to_csv(demo_run / "resources/bad/clinical.tsv", sep="\t", index=False)
    cfg = demo_run / "config/bad.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"enabled": False}, "samples": "resources/bad/samples.tsv",
                                   "clinical": "resources/bad/clinical.tsv"}))
    result = snakemake(demo_run, "results/splits/OS/SHRA.tsv", "--cores", "2", "--keep-going",
                       "--configfile", "config/config.yaml", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    from wsikt.preprocess.pipeline import read_status

    status = {s: read_status(demo_run / f"results/patches/{s}.h5") for s in
              ["unreadable", "broken", "unopenable", "TCGA-CR-7395-01A-01-TS1", "TCGA-CR-7395-override"]}
    assert {s: r.status for s, r in status.items()} == {
        "unreadable": "failed", "broken": "failed", "unopenable": "failed", "TCGA-CR-7395-01A-01-TS1": "failed",
        "TCGA-CR-7395-override": "ok"}
    assert "'mpp' column" in status["TCGA-CR-7395-01A-01-TS1"].reason
    log = (demo_run / "logs/preprocess/unreadable.log").read_text()
    assert "failed to read tiles" in log
    excluded = pd.read_csv(demo_run / "results/splits/OS/SHRA.excluded.tsv", sep="\t").set_index("patient_id")
    assert set(excluded.index) == {"BAD-0001", "BAD-0002", "BAD-0003", "BAD-0004", "BAD-0006"}
    assert "failed to read tiles" in excluded.at["BAD-0001", "reason"]
    # a sample-sheet path that does not exist: named (row, slide, path) before any job, then excluded like the others
    assert "row %d (slide gone): slide file resources/bad/gone.svs not found" % (len(sheet) + 7) in result.stderr
    assert "gone: failed (no slide file" in excluded.at["BAD-0006", "reason"]
    split = pd.read_csv(demo_run / "results/splits/OS/SHRA.tsv", sep="\t", dtype={"patient_id": str})
    assert "BAD-0005" in set(split["patient_id"])  # rescued by its override, analysed with the rest
    assert len(split) == (sheet["cancer"] == "SHRA").groupby(sheet["patient_id"]).any().sum() + 1


def _own_cohort(workdir: Path, dead: dict[str, str]) -> Path:
    """A user config over 2 cancers × 6 patients (empty slide files; AAA-002's is absent); ``dead``: per
    cancer the event coding of its odd patients (every other patient is censored)."""
    own = workdir / "own"
    (own / "slides").mkdir(parents=True)
    sheet, clinical = [], []
    for cancer in ("AAA", "BBB"):
        for i in range(6):
            pid = f"{cancer}-{i:03d}"
            sheet.append(dict(slide_id=f"{pid}-DX1", patient_id=pid, cancer=cancer, path=f"own/slides/{pid}-DX1.svs"))
            if pid != "AAA-002":
                (own / "slides" / f"{pid}-DX1.svs").write_bytes(b"")
            clinical.append(dict(bcr_patient_barcode=pid, type=cancer, OS=dead[cancer] if i % 2 else "Alive", **{"OS.time": 100 + i}))
    pd.DataFrame(sheet).to_csv(own / "samples.tsv", sep="\t", index=False)
    pd.DataFrame(clinical).to_csv(own / "clinical.tsv", sep="\t", index=False)
    cfg = own / "config.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"enabled": False}, "samples": "own/samples.tsv", "clinical": "own/clinical.tsv",
                                   "features": {"encoder": "demo"}, "experts": {"folds": 3}}))
    return cfg


def test_sheet_and_clinical_checks_run_before_any_job(tmp_path):
    """Missing slide files, folds beyond a cancer's patients and a cancer without events: decided while parsing."""
    workdir = copy_repo(tmp_path / "repo")
    cfg = _own_cohort(workdir, dead={"AAA": "Dead", "BBB": "Alive"})  # BBB: no event at all
    result = snakemake(workdir, "-n", "--configfile", str(cfg))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "own/samples.tsv: row 4 (slide AAA-002-DX1): slide file own/slides/AAA-002-DX1.svs not found" in out
    assert "cancer BBB is left out: no OS event among its 6 labelled patients" in out
    jobs = jobs_in_dry_run(result)
    assert jobs["preprocess_slide"] == 6 and jobs["train_expert"] == 3 and jobs["make_splits"] == 1, jobs  # AAA only
    assert "BBB-" not in result.stdout.split("Job stats")[0].replace("cancer BBB is left out", "")
    assert "--slide  --slide-id AAA-002-DX1" in snakemake(workdir, "-n", "-p", "--configfile", str(cfg)).stdout

    for override, line in (
        ("preprocess:\n  on_error: fail\n",
         "own/samples.tsv: row 4 (slide AAA-002-DX1): slide file own/slides/AAA-002-DX1.svs not found; correct the 'path' column"),
        ("experts:\n  folds: 7\n", "own/samples.tsv: cancer AAA has 6 patient(s), fewer than experts.folds 7; lower experts.folds"),
    ):
        (workdir / "own/override.yaml").write_text(override)
        failed = snakemake(workdir, "--cores", "1", "--configfile", str(cfg), "own/override.yaml")
        assert failed.returncode != 0 and line in failed.stdout + failed.stderr, (failed.stdout + failed.stderr)[-3000:]
        assert not (workdir / "results").exists() and not (workdir / "logs").exists()


def test_ingested_features_replace_preprocessing_and_extraction(tmp_path):
    """features.ingest: bring-your-own CLAM/TRIDENT features start the workflow at the training stage."""
    workdir = copy_repo(tmp_path / "repo")
    _, jobs = dry_run_with(workdir, tmp_path / "ingest.yaml", "features:\n  encoder: uni_v1\n  ingest: /data/clam_uni/\n")
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    assert jobs["ingest_features"] >= sum(c["n_patients"] for c in cfg["demo"]["cancers"])  # one per slide
    assert "extract_features" not in jobs and "preprocess_slide" not in jobs, jobs
    assert jobs["train_expert"] > 0


def _matrix(workdir: Path) -> pd.DataFrame:
    m = pd.read_csv(workdir / "results/transfer/demo/abmil/OS/matrix.tsv", sep="\t")
    return m.pivot(index="source", columns="target", values="c_index_mean")


def test_transfer_matrix_shows_the_planted_structure(demo_run):
    truth = pd.read_csv(demo_run / "resources/demo/truth.tsv", sep="\t").groupby("cancer")["mechanism"].first()
    m = _matrix(demo_run)
    shared = [c for c in m.index if truth[c] == "shared"]
    for s in shared:
        for t in shared:
            assert m.at[s, t] >= 0.60, (s, t, m.at[s, t])  # sharing the mechanism transfers
    for r in (c for c in m.index if truth[c] == "reversed"):
        for o in shared:
            assert m.at[r, o] < 0.45 and m.at[o, r] < 0.45, (r, o)  # the reversed mechanism ranks backwards
    for n in (c for c in m.index if truth[c] == "none"):
        for s in m.index:
            if s != n:  # every expert ranks the no-signal cancer at chance, and its own expert every cancer
                assert abs(m.at[s, n] - 0.5) <= 0.05, (s, n, m.at[s, n])
                assert abs(m.at[n, s] - 0.5) <= 0.05, (n, s, m.at[n, s])


def test_roupkt_beats_the_rare_cancers_own_expert(demo_run):
    own = _summary(demo_run)
    roupkt = pd.read_csv(demo_run / "results/roupkt/demo/abmil/OS/summary.tsv", sep="\t").set_index("cancer")
    assert roupkt.at["RARE", "c_index_mean"] > own.at["RARE", "c_index_mean"], (roupkt.at["RARE", "c_index_mean"], own.at["RARE", "c_index_mean"])
