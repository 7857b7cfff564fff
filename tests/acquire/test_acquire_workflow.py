"""Acquisition through the workflow: the GDC query writes the sample sheet once; downloads are per-slide jobs."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support.workflow_helpers import copy_repo, jobs_in_dry_run, snakemake

from wsikt.features.batches import plan_batches

sys.path.insert(0, str(Path(__file__).parent))
from support.gdc_server import FakeGDC  # noqa: E402

pytestmark = pytest.mark.workflow

PROJECTS = ["TCGA-AAAA", "TCGA-BBBB"]


@pytest.fixture(scope="module")
def gdc():
    """A loopback GDC with 2 projects × 3 patients (one patient with two slides) of small random files."""
    srv = FakeGDC()
    rng = np.random.default_rng(3)
    for project in PROJECTS + ["TCGA-CCCC"]:
        for i in range(3):
            patient = f"TCGA-{project[-2:]}-{i:04d}"
            for dx in range(2 if i == 0 else 1):
                fid = f"{project[-4:].lower()}{i}{dx}-0000-4000-8000-000000000000"
                srv.add_file(fid, f"{patient}-01Z-00-DX{dx + 1}.{fid.upper()}.svs", project, patient,
                             data=rng.bytes(int(rng.integers(20_000, 60_000))))
    srv.thread.start()
    yield srv
    srv.shutdown()


def _tcga_copy(tmp_path: Path, base_url: str) -> Path:
    """A repo copy configured by config/tcga.yaml, pointed at the fake GDC, with a small clinical table."""
    workdir = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((workdir / "config/tcga.yaml").read_text())
    cfg["gdc"].update(projects=PROJECTS, base_url=base_url)
    cfg["clinical"] = "resources/tcga/cdr.tsv"
    cfg["experts"]["folds"] = 3  # the loopback GDC has 3 patients per project
    (workdir / "config/test_tcga.yaml").write_text(yaml.safe_dump(cfg))
    _write_cdr(workdir / "resources/tcga/cdr.tsv", {code * 2: [f"TCGA-{code}-{i:04d}" for i in range(14)]
                                                    for code in ("AA", "BB", "CC", "DD")})
    return workdir


def _write_cdr(path: Path, patients: dict[str, list[str]]) -> None:
    """A TCGA-CDR-style table for these patients (cancer → barcodes): every other patient has an OS event."""
    rows = [dict(bcr_patient_barcode=p, type=cancer, OS=i % 2, **{"OS.time": 100 + i})
            for cancer, ps in patients.items() for i, p in enumerate(ps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def test_query_runs_once_then_downloads_are_per_slide_jobs(gdc, tmp_path):
    workdir = _tcga_copy(tmp_path, gdc.url)
    args = ("--configfile", "config/test_tcga.yaml")
    first = snakemake(workdir, "--cores", "1", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    sheet = pd.read_csv(workdir / "resources/gdc/samples.tsv", sep="\t")
    assert len(sheet) == 8 and set(sheet["cancer"]) == {"AAAA", "BBBB"}  # TCGA-CCCC not asked for
    assert sheet.groupby("patient_id").size().max() == 2
    assert (workdir / "resources/gdc/samples.release.txt").read_text().strip() == gdc.release
    assert not (workdir / "resources/slides").exists()  # the first run only queries

    dry = snakemake(workdir, "-n", *args)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = jobs_in_dry_run(dry)
    assert "query_gdc" not in jobs, jobs  # sheet exists, config unchanged → no new query
    assert jobs["download_slide"] == jobs["preprocess_slide"] == len(sheet)

    slide = sheet["slide_id"].iloc[0]
    run = snakemake(workdir, f"results/acquire/downloads/{slide}.json", "--cores", "2",
                    "--resources", "gdc_connections=2", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    path = workdir / sheet["path"].iloc[0]
    assert hashlib.md5(path.read_bytes()).hexdigest() == sheet["md5"].iloc[0]
    summary = json.loads((workdir / f"results/acquire/downloads/{slide}.json").read_text())
    assert summary["bytes_transferred"] == sheet["size"].iloc[0] and summary["attempts"] == 1

    summary_run = snakemake(workdir, "gdc_download_summary", "--cores", "1", *args)
    assert summary_run.returncode == 0, summary_run.stderr[-3000:]
    table = pd.read_csv(workdir / "results/acquire/download_summary.tsv", sep="\t").set_index("slide_id")
    assert table.at[slide, "status"] == "downloaded"
    assert (table["status"] == "missing (failed or not run)").sum() == len(sheet) - 1

    changed = tmp_path / "more_projects.yaml"
    changed.write_text(yaml.safe_dump({"gdc": {"projects": PROJECTS + ["TCGA-CCCC"]}}))
    rerun = snakemake(workdir, "-n", "--configfile", "config/test_tcga.yaml", str(changed))
    assert "query_gdc" in jobs_in_dry_run(rerun), rerun.stdout[-2000:]  # a changed project list re-queries


def test_tcga_dry_run_from_recorded_sheet_needs_no_network(tmp_path):
    """The DAG of a TCGA config is built from a recorded sheet; the unreachable base URL is never used."""
    workdir = _tcga_copy(tmp_path, "http://127.0.0.1:9")
    rows = []
    for c, project in enumerate(PROJECTS):
        for i in range(6):
            sid = f"TCGA-{project[-2:]}-{i:04d}-01Z-00-DX1.ABC{c}{i}"
            rows.append(dict(slide_id=sid, patient_id=sid[:12], cancer=project[5:], path=f"resources/slides/{sid}.svs",
                             file_id=f"id-{c}-{i}", file_name=f"{sid}.svs", md5="0" * 32, size=1000))
    (workdir / "resources/gdc").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(workdir / "resources/gdc/samples.tsv", sep="\t", index=False)
    dry = snakemake(workdir, "-n", "--configfile", "config/test_tcga.yaml")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = jobs_in_dry_run(dry)
    assert "query_gdc" not in jobs
    assert jobs["download_slide"] == jobs["preprocess_slide"] == 12
    spj = yaml.safe_load((workdir / "config/test_tcga.yaml").read_text())["features"]["slides_per_job"]
    by_cancer = pd.DataFrame(rows).groupby("cancer")["slide_id"].apply(list).to_dict()
    assert jobs["extract_features"] == len(plan_batches(by_cancer, spj)) < 12  # one job per batch of slides
    assert jobs["train_expert"] == 2 * yaml.safe_load((workdir / "config/test_tcga.yaml").read_text())["experts"]["folds"]


def test_labels_from_an_xlsx_cdr_table(tmp_path):
    """The TCGA-CDR table ships as xlsx; it is read as such, with missing DSS reported, not guessed."""
    from wsikt.cohort.labels import build_labels, read_clinical

    cdr = pd.DataFrame({"bcr_patient_barcode": ["TCGA-AA-0001", "TCGA-AA-0002"], "type": ["AAAA", "AAAA"],
                        "OS": [1, 0], "OS.time": [400, 1200], "DSS": [1, None], "DSS.time": [400, None]})
    path = tmp_path / "cdr.xlsx"
    cdr.to_excel(path, index=False)
    patients = pd.DataFrame({"patient_id": ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003"], "cancer": "AAAA"})
    labels, excluded = build_labels(read_clinical(path), patients, "DSS")
    assert list(labels["patient_id"]) == ["TCGA-AA-0001"]
    reasons = dict(zip(excluded["patient_id"], excluded["reason"]))
    assert reasons == {"TCGA-AA-0002": "missing DSS", "TCGA-AA-0003": "no clinical row"}


def test_downloaded_slides_on_disk_stay_bounded(tmp_path, fixture_slides):
    """gdc.keep_slides false: slides are deleted once patched and embedded, and at most
    gdc.batches_on_disk feature batches of slides are on disk at once (counted while the run goes on)."""
    import threading
    import time

    srv = FakeGDC()
    data = (fixture_slides / "small.svs").read_bytes()  # a real (tiny) slide: preprocessing finds no tissue
    for i in range(14):
        fid = f"disk{i:02d}-0000-4000-8000-000000000000"
        srv.add_file(fid, f"TCGA-DD-{i:04d}-01Z-00-DX1.{fid.upper()}.svs", "TCGA-DDDD", f"TCGA-DD-{i:04d}", data=data)
    srv.thread.start()
    try:
        workdir = _tcga_copy(tmp_path, srv.url)
        cfg = yaml.safe_load((workdir / "config/test_tcga.yaml").read_text())
        cfg["gdc"].update(projects=["TCGA-DDDD"], keep_slides=False, batches_on_disk=1)
        cfg["features"].update(encoder="demo", weights=None, device="cpu", gpus=0, num_workers=0, threads=1,
                               slides_per_job=3)
        (workdir / "config/test_tcga.yaml").write_text(yaml.safe_dump(cfg))
        args = ("--configfile", "config/test_tcga.yaml")
        assert snakemake(workdir, "--cores", "1", *args).returncode == 0  # the query writes the sheet
        sheet = pd.read_csv(workdir / "resources/gdc/samples.tsv", sep="\t")
        batches = plan_batches(sheet.groupby("cancer")["slide_id"].apply(list).to_dict(), 3)
        assert len(batches) >= 3, batches  # else the bound would be the whole cohort
        bound = max(len(b) for b in batches.values())  # batches_on_disk (1) batches of slides
        slide_dir = workdir / cfg["gdc"]["slide_dir"]
        peak, stop = [0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                if slide_dir.exists():
                    peak[0] = max(peak[0], sum(1 for p in slide_dir.iterdir()
                                               if ".svs" in p.name and not p.name.endswith(".lock")))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        targets = [f"results/features/demo/{s}.h5" for s in sheet["slide_id"]]
        run = snakemake(workdir, *targets, "--cores", "2", "--resources", "gdc_connections=2", *args)
        stop.set()
        watcher.join()
        assert run.returncode == 0, run.stderr[-3000:]
        assert all((workdir / t).exists() for t in targets)
        assert not list(slide_dir.glob("*.svs")), "every slide is deleted once patched and embedded"
        assert 1 <= peak[0] <= bound, (peak[0], bound, {k: len(v) for k, v in batches.items()})
    finally:
        srv.shutdown()


def _effective_config(workdir: Path, *configfiles: str) -> dict:
    """The config the jobs run with: Snakemake's parsed config, validated, defaults filled (effective_config)."""
    args = [a for f in configfiles for a in ("--configfile", f)]
    run = snakemake(workdir, "results/config/effective.yaml", "--cores", "1", *args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return yaml.safe_load((workdir / "results/config/effective.yaml").read_text())


def _recorded_sheet(workdir: Path, path: str) -> None:
    rows = [dict(slide_id=f"TCGA-AA-{i:04d}-01Z-00-DX1.X{i}", patient_id=f"TCGA-AA-{i:04d}", cancer="AAAA",
                 path=f"resources/slides/TCGA-AA-{i:04d}-01Z-00-DX1.X{i}.svs", file_id=f"id-{i}",
                 file_name=f"x{i}.svs", md5="0" * 32, size=1000) for i in range(6)]
    (workdir / path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(workdir / path, sep="\t", index=False)


def test_tcga_config_segments_with_clams_tcga_preset_not_the_demos_values(tmp_path):
    """`--configfile config/tcga.yaml` replaces the demo config: segmentation is CLAM's tcga preset, with
    its areas in µm² at 40x as tcga.yaml documents, and none of the demo's otsu/area overrides."""
    from wsikt.preprocess.tissue import clam_units_to_um2, resolve_segmentation

    workdir = copy_repo(tmp_path / "repo")
    _recorded_sheet(workdir, "resources/gdc/samples.tsv")  # the sheet the GDC query would have written
    cfg = _effective_config(workdir, "config/tcga.yaml")
    seg = cfg["preprocess"]["segmentation"]
    assert seg["preset"] == "tcga" and seg["area_unit"] == "um2" and seg["seg_downsample"] == 64
    params = resolve_segmentation(seg)
    # mahmoodlab/CLAM presets/tcga.csv (commit 7e24b449): sthresh 8, mthresh 7, close 4, use_otsu FALSE,
    # a_t 16, a_h 4, max_n_holes 8; create_patches_fp.py has no Otsu floor.
    assert (params.sthresh, params.mthresh, params.close, params.use_otsu, params.max_n_holes) == (8, 7, 4, False, 8)
    assert params.a_t == pytest.approx(clam_units_to_um2(16)) and params.a_h == pytest.approx(clam_units_to_um2(4))
    assert params.otsu_min == 0
    demo = yaml.safe_load((workdir / "config/config.yaml").read_text())
    assert cfg["features"]["encoder"] != demo["features"]["encoder"] and cfg["demo"]["enabled"] is False


def test_minimal_user_config_takes_documented_defaults_not_the_demos(tmp_path):
    """A config with only samples, clinical and demo off trains with the schema's (CROPKT) defaults."""
    workdir = copy_repo(tmp_path / "repo")
    _recorded_sheet(workdir, "resources/own/samples.tsv")
    _write_cdr(workdir / "resources/own/clinical.tsv", {"AAAA": [f"TCGA-AA-{i:04d}" for i in range(6)]})
    (workdir / "config/own.yaml").write_text(yaml.safe_dump(
        {"samples": "resources/own/samples.tsv", "clinical": "resources/own/clinical.tsv", "demo": {"enabled": False}}))
    cfg = _effective_config(workdir, "config/own.yaml")
    schema = yaml.safe_load((workdir / "workflow/schemas/config.schema.yaml").read_text())["properties"]
    experts = schema["experts"]["properties"]
    for key in ("model", "folds", "epochs", "lr", "patients_per_step", "feature_norm", "alpha"):
        assert cfg["experts"][key] == experts[key]["default"], key
    # CROPKT's expert setup (DESIGN.md §1), not the demo's small-cohort settings.
    assert (cfg["experts"]["epochs"], cfg["experts"]["lr"], cfg["experts"]["patients_per_step"]) == (20, 1e-4, 16)
    assert cfg["experts"]["null_gate"]["inner_folds"] == 0 and cfg["experts"]["feature_norm"] == "none"
    assert cfg["features"]["encoder"] == "uni_v2" and cfg["preprocess"]["segmentation"]["preset"] == "tcga"
    demo = yaml.safe_load((workdir / "config/config.yaml").read_text())
    for section, key in (("experts", "epochs"), ("experts", "lr"), ("experts", "patients_per_step"),
                         ("features", "encoder"), ("features", "slides_per_job")):
        assert cfg[section][key] != demo[section][key], (section, key)


def test_tcga_cdr_named_by_clinical_is_fetched_from_the_gdc_and_verified(tmp_path):
    """`clinical:` naming TCGA-CDR-SupplementalTableS1.xlsx, absent: the workflow fetches it from the GDC (a stand-in
    served under the real id, its md5/size injected through gdc.tcga_cdr), verifies it and labels from it; a later
    change of a download setting refetches nothing that relabels."""
    from wsikt.acquire.tcga_cdr import TCGA_CDR

    workdir = copy_repo(tmp_path / "repo")
    _recorded_sheet(workdir, "resources/own/samples.tsv")  # TCGA-AA-0000 … 0005, cancer AAAA
    cdr = pd.DataFrame({"bcr_patient_barcode": [f"TCGA-AA-{i:04d}" for i in range(5)], "type": "AAAA",
                        "OS": [1, 0, 1, 0, 1], "OS.time": [100, 900, 300, 1200, 50]})
    xlsx = tmp_path / TCGA_CDR.file_name
    cdr.to_excel(xlsx)  # the real table also has an unnamed index column first
    srv = FakeGDC()
    srv.add_file(TCGA_CDR.file_id, TCGA_CDR.file_name, "TCGA-CDR", "", data=xlsx.read_bytes())
    srv.faults[TCGA_CDR.file_id] = ["500"]
    srv.thread.start()
    try:
        clinical = f"resources/tcga/{TCGA_CDR.file_name}"
        cfg = {"samples": "resources/own/samples.tsv", "clinical": clinical, "demo": {"enabled": False},
               "gdc": {"base_url": srv.url, "tcga_cdr": {"md5": hashlib.md5(xlsx.read_bytes()).hexdigest(),
                                                         "size": xlsx.stat().st_size}}}
        (workdir / "config/own.yaml").write_text(yaml.safe_dump(cfg))
        args = ("--configfile", "config/own.yaml")
        dry = snakemake(workdir, "results/labels/OS/AAAA.tsv", "-n", *args)
        assert jobs_in_dry_run(dry) == {"fetch_tcga_cdr": 1, "build_labels": 1}, dry.stdout[-2000:] + dry.stderr[-2000:]
        run = snakemake(workdir, "results/labels/OS/AAAA.tsv", "--cores", "1", *args)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert (workdir / clinical).read_bytes() == xlsx.read_bytes()
        assert [r["Range"] if "Range" in r else None for r in srv.data_requests[TCGA_CDR.file_id]] == [None, None]
        labels = pd.read_csv(workdir / "results/labels/OS/AAAA.tsv", sep="\t")
        assert list(labels["patient_id"]) == [f"TCGA-AA-{i:04d}" for i in range(5)]
        assert list(labels["time"]) == [100, 900, 300, 1200, 50] and list(labels["event"]) == [1, 0, 1, 0, 1]
        excluded = pd.read_csv(workdir / "results/labels/OS/AAAA.excluded.tsv", sep="\t")
        assert dict(zip(excluded["patient_id"], excluded["reason"])) == {"TCGA-AA-0005": "no clinical row"}
        assert "verified" in (workdir / "logs/acquire/fetch_tcga_cdr.log").read_text()

        cfg["gdc"]["max_retries"] = 2  # a download setting: the pinned table may be refetched, labels stay
        (workdir / "config/own.yaml").write_text(yaml.safe_dump(cfg))
        again = snakemake(workdir, "results/labels/OS/AAAA.tsv", "-n", *args)
        assert again.returncode == 0 and "build_labels" not in jobs_in_dry_run(again), again.stdout[-2000:]
    finally:
        srv.shutdown()

    hand_placed = copy_repo(tmp_path / "hand")  # any other clinical name: no fetch rule, a missing table is an error
    _recorded_sheet(hand_placed, "resources/own/samples.tsv")
    (hand_placed / "config/own.yaml").write_text(yaml.safe_dump(dict(cfg, clinical="resources/tcga/cdr.xlsx")))
    for i in range(6):  # the sheet's slides are on disk: only the clinical table is missing
        (hand_placed / f"resources/slides/TCGA-AA-{i:04d}-01Z-00-DX1.X{i}.svs").parent.mkdir(parents=True, exist_ok=True)
        (hand_placed / f"resources/slides/TCGA-AA-{i:04d}-01Z-00-DX1.X{i}.svs").write_bytes(b"")
    dry = snakemake(hand_placed, "results/labels/OS/AAAA.tsv", "-n", "--configfile", "config/own.yaml")
    out = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "fetch_tcga_cdr" not in out
    assert "config: clinical table resources/tcga/cdr.xlsx (config key 'clinical') not found" in out, out[-2000:]
