"""Config and sample-sheet validation: defaults, one-line errors naming the key, schema ↔ registries."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from wsikt.config.validate import ConfigError, validate_config, validate_samples
from wsikt.features.encoders import REGISTRY
from wsikt.mil import MODELS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SAMPLES_SCHEMA = ROOT / "workflow" / "schemas" / "samples.schema.yaml"


@pytest.fixture
def cfg() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_default_config_is_valid(cfg):
    original = copy.deepcopy(cfg)
    out = validate_config(cfg, SCHEMA)
    assert out is cfg
    # values the user gave are untouched
    assert out["experts"]["lr"] == original["experts"]["lr"] == 1.0e-3
    assert out["demo"]["cancers"] == original["demo"]["cancers"]


def test_defaults_are_filled(cfg):
    del cfg["experts"]["weight_decay"]
    del cfg["experts"]["bins"]
    del cfg["report"]
    del cfg["preprocess"]["segmentation"]
    del cfg["features"]["batch_size"]
    validate_config(cfg, SCHEMA)
    assert cfg["experts"]["weight_decay"] == 1e-5
    assert isinstance(cfg["experts"]["weight_decay"], float)  # YAML '1.0e-5' must load as a float
    assert cfg["experts"]["bins"] == {"kind": "uniform", "n_bins": 32, "width_days": 365}
    assert cfg["report"] == {"max_qc_images": 12, "heatmaps": 12, "top_patches": 4}
    assert cfg["preprocess"]["segmentation"]["seg_downsample"] == 64
    # CLAM's tcga preset with physical areas; knobs left null come from the preset.
    assert cfg["preprocess"]["segmentation"]["preset"] == "tcga"
    assert cfg["preprocess"]["segmentation"]["area_unit"] == "um2"
    assert cfg["preprocess"]["segmentation"]["use_otsu"] is None
    assert cfg["features"]["batch_size"] == 64
    assert cfg["samples"] == "config/samples.tsv"


def test_defaults_are_not_shared_between_configs(cfg):
    a, b = copy.deepcopy(cfg), copy.deepcopy(cfg)
    del a["experts"]["bins"], b["experts"]["bins"]
    validate_config(a, SCHEMA)
    validate_config(b, SCHEMA)
    a["experts"]["bins"]["n_bins"] = 4
    assert b["experts"]["bins"]["n_bins"] == 32


def test_wrong_type(cfg):
    cfg["experts"]["epochs"] = "ten"
    msg = _error(cfg)
    assert "experts.epochs" in msg and "integer" in msg


def test_unknown_encoder_lists_allowed(cfg):
    cfg["features"]["encoder"] = "uni_v9"
    msg = _error(cfg)
    assert "features.encoder" in msg and "uni_v9" in msg
    for name in REGISTRY:
        assert name in msg


def test_missing_required_key(cfg):
    del cfg["demo"]["cancers"][0]["n_patients"]  # a demo cancer has no default size
    msg = _error(cfg)
    assert "demo.cancers.0.n_patients" in msg


def test_keys_left_out_take_the_schemas_cropkt_defaults(cfg):
    for key in ("folds", "epochs", "lr", "patients_per_step"):
        del cfg["experts"][key]
    del cfg["endpoint"]
    out = validate_config(cfg, SCHEMA)
    assert out["endpoint"] == "OS"
    assert (out["experts"]["folds"], out["experts"]["epochs"], out["experts"]["lr"], out["experts"]["patients_per_step"]) \
        == (5, 20, 1e-4, 16)


def test_unknown_key_typo(cfg):
    cfg["experts"]["lerning_rate"] = 1e-3
    msg = _error(cfg)
    assert "lerning_rate" in msg and "experts" in msg


def test_out_of_range(cfg):
    cfg["preprocess"]["min_tissue_fraction"] = 2
    msg = _error(cfg)
    assert "preprocess.min_tissue_fraction" in msg and "maximum" in msg


def test_out_of_range_in_filled_section(cfg):
    cfg["experts"]["bins"]["n_bins"] = 1
    msg = _error(cfg)
    assert "experts.bins.n_bins" in msg


def test_bad_endpoint(cfg):
    cfg["endpoint"] = "EFS"
    msg = _error(cfg)
    assert "endpoint" in msg and "DSS" in msg


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_non_demo_config_validates(cfg):
    cfg["demo"] = {"enabled": False}
    cfg["samples"] = "config/samples.tsv"
    cfg["clinical"] = "config/clinical.tsv"
    validate_config(cfg, SCHEMA)
    assert cfg["demo"]["enabled"] is False


def test_schema_enums_match_registries():
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["properties"]
    assert set(props["features"]["properties"]["encoder"]["enum"]) == set(REGISTRY)
    assert list(props["experts"]["properties"]["model"]["enum"]) == list(MODELS)


# ---------------------------------------------------------------------------------------------
# Sample sheet
# ---------------------------------------------------------------------------------------------


def _samples() -> pd.DataFrame:
    return pd.DataFrame(
        {"slide_id": ["TCGA-A1-slide1", "TCGA-A1-slide2", "TCGA-B2-slide1"],
         "patient_id": ["TCGA-A1", "TCGA-A1", "TCGA-B2"],
         "cancer": ["BRCA", "BRCA", "LUAD"],
         "path": ["/data/a1_1.svs", "/data/a1_2.svs", "/data/b2_1.svs"],
         "mpp": [0.25, float("nan"), 0.5]}
    )


def _samples_error(df: pd.DataFrame) -> str:
    with pytest.raises(ConfigError) as err:
        validate_samples(df, SAMPLES_SCHEMA, source="samples.tsv")
    msg = str(err.value)
    assert "\n" not in msg and "samples.tsv" in msg
    return msg


def test_valid_sample_sheet_passes():
    df = _samples()
    out = validate_samples(df, SAMPLES_SCHEMA, source="samples.tsv")
    pd.testing.assert_frame_equal(out, _samples())


def test_sample_sheet_missing_path_column():
    msg = _samples_error(_samples().drop(columns=["path"]))
    assert "'path'" in msg


def test_sample_sheet_duplicate_slide_id():
    df = _samples()
    df.loc[2, "slide_id"] = "TCGA-A1-slide2"
    msg = _samples_error(df)
    assert "TCGA-A1-slide2" in msg and "twice" in msg


def test_sample_sheet_bad_mpp_names_row():
    df = _samples()
    df.loc[2, "mpp"] = -0.5
    msg = _samples_error(df)
    # third data row = line 4 of the TSV (header is line 1)
    assert "row 4" in msg and "TCGA-B2-slide1" in msg and "mpp" in msg


def test_sample_sheet_bad_cancer_code_names_row():
    df = _samples()
    df.loc[0, "cancer"] = "BR CA"
    msg = _samples_error(df)
    assert "row 2" in msg and "cancer" in msg


def test_folds_larger_than_a_cancers_patients_names_cancer_count_and_key():
    from wsikt.config.validate import check_folds

    df = pd.concat([_samples(), _samples().assign(slide_id=lambda d: d["slide_id"] + "b")])  # two slides each
    n = df.groupby("cancer")["patient_id"].nunique()
    check_folds(df, int(n.min()), "s.tsv")
    with pytest.raises(ConfigError) as err:
        check_folds(df, int(n.min()) + 1, "s.tsv")
    cancer = n.idxmin()
    assert str(err.value) == (f"s.tsv: cancer {cancer} has {n.min()} patient(s), fewer than experts.folds {n.min() + 1}; "
                              "lower experts.folds or drop the cancer's rows from the sample sheet")


def test_missing_slide_files_are_listed_by_sheet_row(tmp_path):
    from wsikt.config.validate import missing_slide_line, missing_slides

    df = _samples()
    for i, sid in enumerate(df["slide_id"]):
        df.loc[i, "path"] = str(tmp_path / f"{sid}.svs")
        if i != 1:
            (tmp_path / f"{sid}.svs").write_bytes(b"")
    missing = missing_slides(df)
    assert missing.values.tolist() == [[3, df.at[1, "slide_id"], str(tmp_path / f"{df.at[1, 'slide_id']}.svs")]]
    line = missing_slide_line(*missing.iloc[0], "s.tsv")
    assert line.startswith(f"s.tsv: row 3 (slide {df.at[1, 'slide_id']}): slide file {missing.at[0, 'path']} not found")
    assert "\n" not in line and "on_error: skip" in line


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["preprocess"]["segmentation"].update(mthresh=8), "preprocess.segmentation.mthresh"),
        (lambda c: c["experts"].update(model="crossfusion"), "preprocess.context_mpp"),
        (lambda c: c["roupkt"].update(source_folds=5), "roupkt.source_folds"),
    ],
)
def test_inconsistent_keys_rejected_with_the_fix(cfg, edit, key):
    edit(cfg)
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg, SCHEMA)
    assert key in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "keys"),
    [
        (lambda c: None, ["roupkt.targets 'all'"]),
        (lambda c: c["roupkt"].update(targets=["SHRA"]), ["roupkt.targets ['SHRA']"]),
        (lambda c: c.update(roupkt={"targets": []}, baselines={"methods": ["head", "merge"]}), ["baselines.methods"]),
        (lambda c: c.update(roupkt={"targets": []}, transfer={"matrix": False, "finetuned": ["all"]}), ["transfer.finetuned"]),
        (lambda c: c["baselines"].update(methods=["mlp"]), ["roupkt.targets", "baselines.methods"]),
    ],
)
def test_no_transfer_matrix_rejects_every_reader_of_the_embeddings(cfg, edit, keys):
    """transfer.matrix false runs no embedding job: ROUPKT, the baselines and the fine-tuned matrix would have no input."""
    cfg["transfer"]["matrix"] = False
    edit(cfg)
    msg = _error(cfg)
    assert msg.startswith("config: transfer.matrix is false") and msg.endswith("or transfer.matrix: true"), msg
    for key in keys:
        assert key in msg and f"{key.split()[0]}: []" in msg, (key, msg)
    for key in {"roupkt.targets", "baselines.methods", "transfer.finetuned"} - {k.split()[0] for k in keys}:
        assert key not in msg, msg


def test_colour_normalisation_of_ingested_features_is_refused(cfg):
    """Ingested features were embedded elsewhere: a colour normalisation setting would silently not apply."""
    cfg["features"].update(ingest="resources/authors_features", color_norm="macenko")
    msg = _error(cfg)
    assert "features.color_norm 'macenko' cannot reach ingested features" in msg and "features.ingest: null" in msg
    cfg["features"]["color_norm"] = "none"
    assert validate_config(cfg, SCHEMA)["features"]["ingest"] == "resources/authors_features"


def test_no_transfer_matrix_alone_is_valid(cfg):
    cfg["transfer"]["matrix"] = False
    cfg["roupkt"]["targets"] = []
    assert validate_config(cfg, SCHEMA)["transfer"]["matrix"] is False
    assert validate_config({"demo": {"enabled": False}}, SCHEMA)["transfer"]["matrix"] is True  # CROPKT routes: on


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["preprocess"].update(context_mpp=[0.8]), "preprocess.context_mpp"),
        (lambda c: c["preprocess"].update(grid="clam"), "preprocess.grid"),
        (lambda c: c["preprocess"].update(contour_fn="none", min_tissue_fraction=0.0), "preprocess.min_tissue_fraction"),
        (lambda c: c["experts"].update(loss="cox", patients_per_step=8), "experts.patients_per_step"),
        (lambda c: c["experts"]["null_gate"].update(inner_folds=1), "experts.null_gate.inner_folds"),
        (lambda c: c["roupkt"]["null_gate"].update(inner_folds=1), "roupkt.null_gate.inner_folds"),
    ],
)
def test_stage_settings_reject_inconsistent_keys_with_the_fix(cfg, edit, key):
    """A stage's own rules live in its settings object, built from the validated section (common.smk)."""
    from wsikt.preprocess.settings import PatchSettings
    from wsikt.training.settings import NullGate, TrainSettings

    validate_config(cfg, SCHEMA)

    def build() -> None:
        PatchSettings.from_config(cfg["preprocess"]), TrainSettings.from_config(cfg["experts"]), NullGate.from_config(cfg["experts"])
        NullGate.from_config(cfg["roupkt"], key="roupkt")

    build()
    if key.startswith("preprocess"):
        cfg["preprocess"].setdefault("context_mpp", [1.0])
    edit(cfg)
    validate_config(cfg, SCHEMA)  # each section on its own is valid: the schema cannot state these rules
    with pytest.raises(ValueError) as exc:
        build()
    assert key in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.workflow
def test_stage_rules_stop_the_workflow_before_any_job(tmp_path):
    from support.workflow_helpers import copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    (tmp_path / "bad.yaml").write_text("preprocess:\n  grid: clam\n  context_mpp: [1.0]\n")
    res = snakemake(repo, "-n", "--configfile", "config/config.yaml", str(tmp_path / "bad.yaml"))
    assert res.returncode != 0
    lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if "preprocess.grid 'clam'" in ln]
    assert lines and lines[0].startswith("config: preprocess.grid 'clam' starts a grid per contour"), res.stderr[-1500:]
    assert "Job stats" not in res.stdout


def test_multiscale_model_accepted_when_its_levels_are_patched(cfg):
    cfg["experts"]["model"] = "crossfusion"
    cfg["preprocess"]["context_mpp"] = [1.0, 2.0]
    validate_config(cfg, SCHEMA)


def test_slide_path_pattern_only_when_every_row_fits():
    from wsikt.config.validate import slide_path_pattern

    ids = ["TCGA-A1-0001-DX1", "TCGA-A1-0002-DX1"]
    assert slide_path_pattern(ids, [f"/data/tcga/{s}.svs" for s in ids]) == "/data/tcga/{slide}.svs"
    assert slide_path_pattern(ids, ["/data/a/TCGA-A1-0001-DX1.svs", "/data/b/TCGA-A1-0002-DX1.svs"]) is None
    assert slide_path_pattern(ids, ["/d/TCGA-A1-0001-DX1.svs", "/d/TCGA-A1-0002-DX1.tiff"]) is None
    assert slide_path_pattern(ids, [f"/d/{s}.uuid.svs" for s in ids]) == "/d/{slide}.uuid.svs"
    assert slide_path_pattern(["a"], ["/d/{x}/a.svs"]) is None  # braces would be wildcards
    assert slide_path_pattern(["a"], ["/d/b.svs"]) is None and slide_path_pattern([], []) is None


def test_config_readme_documents_every_key_with_its_default():
    """config/README.md lists every schema key, with the schema's default (it must stay true to the schema)."""
    import json

    schema = yaml.safe_load(SCHEMA.read_text())
    text = (ROOT / "config" / "README.md").read_text()
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `") or line.startswith("| **`")}

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            name = prefix + key
            assert name in rows, f"config/README.md lacks {name}"
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, name + ".")
            elif "default" in sub and name != "demo.enabled":
                assert f"`{json.dumps(sub['default'])}`" in rows[name], (name, rows[name])

    walk(schema, "")


def test_tcga_cdr_schema_defaults_are_the_pinned_gdc_file():
    """gdc.tcga_cdr defaults to the real TCGA-CDR file (the library's pinned values), so only a test or mirror changes it."""
    from wsikt.acquire.tcga_cdr import TCGA_CDR

    cfg = validate_config({"demo": {"enabled": False}}, SCHEMA)
    assert cfg["gdc"]["tcga_cdr"] == {"file_id": TCGA_CDR.file_id, "md5": TCGA_CDR.md5, "size": TCGA_CDR.size}


def test_baselines_schema_matches_its_registry_and_names_its_own_gate_key(cfg):
    from wsikt.transfer.baseline_settings import METHODS, POOLS, BaselineSettings

    base = yaml.safe_load(SCHEMA.read_text())["properties"]["baselines"]["properties"]
    assert base["methods"]["items"]["enum"] == list(METHODS) and base["merge_set"]["enum"] == list(POOLS)
    validate_config(cfg, SCHEMA)
    cfg["baselines"]["null_gate"]["inner_folds"] = 1  # valid for the schema, not for the gate
    with pytest.raises(ValueError, match=r"^baselines\.null_gate\.inner_folds [^\n]*$"):
        BaselineSettings.from_config(cfg["baselines"], method="head")
