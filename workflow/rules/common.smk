# Config and sample sheet are validated here, before any job; input functions are named get_<what>.
# Module-level code stays cheap: every job re-parses this file. Per-slide rules avoid per-job
# Python where Snakemake allows (a path pattern instead of an input function, shell instead of
# script), because at 12,000 slides each costs seconds of DAG building (benchmarks/dag_scale.py).
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from snakemake.logging import logger

from snakemake.settings.types import DeploymentMethod

from wsikt.acquire.tcga_cdr import names_tcga_cdr
from wsikt.cohort.groups import CancerGroups
from wsikt.cohort.screen import read_clinical_cached, screen_cancers
from wsikt.cohort.site_splits import patient_sites
from wsikt.cohort.split_files import check_fold_file_count, fold_file_paths
from wsikt.cohort.split_settings import SplitSettings
from wsikt.core.model_facts import ATTENTION_MODELS
from wsikt.config.validate import (
    ConfigError,
    check_folds,
    missing_slide_line,
    missing_slides,
    read_samples,
    slide_path_pattern,
    validate_config,
)
from wsikt.features.batches import plan_batches
from wsikt.features.settings import FeatureSettings, feature_params
from wsikt.preprocess.settings import PatchSettings, patch_params
from wsikt.stats.settings import StatsSettings
from wsikt.training.settings import HyperGrid, NullGate, TrainSettings
from wsikt.transfer.baseline_settings import BaselineSettings

SCHEMAS = Path(workflow.current_basedir) / ".." / "schemas"

validate_config(config, SCHEMAS / "config.schema.yaml", source="config")


def check_settings():
    """Build each stage's settings from its config section, so its own rules run before any job."""
    builders = {
        "preprocess": PatchSettings.from_config,
        "features": lambda section: FeatureSettings.from_config(
            feature_params(section)
        ),
        "experts": lambda section: (
            TrainSettings.from_config(section),
            NullGate.from_config(section),
            HyperGrid.from_config(section),
        ),
        "baselines": lambda section: [
            BaselineSettings.from_config(section, method=m)
            for m in section["methods"] or ["head"]
        ],
        "cancer_groups": CancerGroups.from_config,
        "splits": SplitSettings.from_config,
        "roupkt": lambda section: NullGate.from_config(
            section, key="roupkt"
        ),  # RoupktSettings would import torch
        "stats": StatsSettings.from_config,
    }
    built = {}
    for key, build in builders.items():
        try:
            built[key] = build(config[key])
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
    return built


SETTINGS = check_settings()
GROUPS, SPLITS = SETTINGS["cancer_groups"], SETTINGS["splits"]

ENCODER = config["features"]["encoder"]
MODEL = config["experts"]["model"]
ENDPOINT = config["endpoint"]
FOLDS = list(
    range(SPLITS.n_folds(config["experts"]["folds"]))
)  # one (fold 0) for splits.strategy external
MIN_PATIENTS = SPLITS.min_patients(config["experts"]["folds"])
TRANSFER = "results/transfer/{encoder}/{model}/{endpoint}"  # transfer, roupkt and baselines rules write here
# transfer.matrix false: no embed_cohort, transfer_matrix or stats_matrix job is requested (the report
# leaves the matrix out); validate_config has rejected every reader of the embeddings (ROUPKT, baselines).
TRANSFER_MATRIX = config["transfer"]["matrix"]
# Files named by several rules: each path pattern is written once, here.
PATH = {
    "labels": "results/labels/{endpoint}/{cancer}.tsv",
    "split": "results/splits/{endpoint}/{cancer}.tsv",
    "bags": "results/bags/{encoder}/{cancer}.tsv",
    "patches": "results/patches/{slide}.h5",
    "qc_patches": "results/qc/patches/{slide}.png",
    "features": "results/features/{encoder}/{slide}.h5",
    "embeddings": f"{TRANSFER}/embeddings/{{cancer}}.h5",
    "zero_shot": f"{TRANSFER}/zero_shot/{{cancer}}.tsv",
    "selection": f"{TRANSFER}/selection/{{cancer}}.tsv",
    "finetuned_matrix": f"{TRANSFER}/finetuned_matrix.tsv",
    "report": "results/report/index.html",
}


def path_of(name, **wildcards):
    """PATH[name] with all its wildcards filled (str.format: called per slide, expand() would cost seconds)."""
    return PATH[name].format(**wildcards)


if config["demo"]["enabled"]:
    from wsikt.acquire.demo_cohort import plan_cohort, sample_sheet

    DEMO = plan_cohort(
        seed=config["demo"]["seed"],
        cancers=config["demo"]["cancers"],
        two_slide_fraction=config["demo"]["two_slide_fraction"],
        fraction_40x=config["demo"]["fraction_40x"],
        appearance=config["demo"]["appearance"],
    )
    SAMPLES = sample_sheet(DEMO.slides, "resources/demo/slides")
    SAMPLES_TSV = "resources/demo/samples.tsv"
    CLINICAL = "resources/demo/clinical.tsv"
elif config["gdc"]["projects"]:
    # The GDC query writes the sample sheet once; until it exists only the query is run.
    SAMPLES_TSV = config["gdc"]["sample_sheet"]
    CLINICAL = config["clinical"]
    if Path(SAMPLES_TSV).exists():
        SAMPLES = read_samples(SAMPLES_TSV, SCHEMAS / "samples.schema.yaml")
    else:
        SAMPLES = pd.DataFrame(columns=["slide_id", "patient_id", "cancer", "path"])
else:
    SAMPLES_TSV = config["samples"]
    SAMPLES = read_samples(SAMPLES_TSV, SCHEMAS / "samples.schema.yaml")
    CLINICAL = config["clinical"]

# A `clinical` path named like the TCGA-CDR table's GDC file is fetched when absent (fetch_tcga_cdr).
# Its bytes are pinned by md5, so a re-fetch (say after gdc.base_url changes) relabels nothing: ancient().
FETCH_TCGA_CDR = not config["demo"]["enabled"] and names_tcga_cdr(CLINICAL)
CLINICAL_INPUT = ancient(CLINICAL) if FETCH_TCGA_CDR else CLINICAL

# Checks the sample sheet and clinical table allow, before any job: a cancer with fewer patients than
# folds stops the run; a missing slide file stops it (on_error: fail) or is excluded like an unreadable
# slide (skip); a cancer without a single event is left out of the DAG with its reason (report).
USER_SLIDES = (
    not config["demo"]["enabled"] and not config["gdc"]["projects"]
)  # slide files no rule makes
MISSING_SLIDES = {}
if USER_SLIDES and not config["features"]["ingest"]:
    _missing = missing_slides(SAMPLES)
    if len(_missing) and config["preprocess"]["on_error"] == "fail":
        raise ConfigError(missing_slide_line(*_missing.iloc[0], SAMPLES_TSV))
    for _line, _slide, _path in _missing.head(10).itertuples(index=False):
        logger.warning(
            f"{SAMPLES_TSV}: row {_line} (slide {_slide}): slide file {_path} not found; "
            "the slide is excluded (preprocess.on_error: skip)"
        )
    if len(_missing) > 10:
        logger.warning(f"... and {len(_missing) - 10} more missing slide files")
    MISSING_SLIDES = dict(zip(_missing["slide_id"], _missing["path"]))

# cancer_groups: member projects become their group's cancer for every rule below (the sheet keeps them)
SAMPLES = GROUPS.apply(SAMPLES, SAMPLES_TSV)
if not SAMPLES.empty:
    check_folds(SAMPLES, MIN_PATIENTS, SAMPLES_TSV)
try:
    SPLITS.check_sheet(SAMPLES, config["experts"]["folds"], SAMPLES_TSV)
except ValueError as exc:
    raise ConfigError(str(exc)) from None

if config["demo"]["enabled"]:
    from wsikt.acquire.demo_cohort import clinical_table

    # the table demo_cohort writes, known from the plan before any job
    CLINICAL_TABLE = clinical_table(DEMO.patients, config["demo"]["seed"])
elif Path(CLINICAL).exists():
    CLINICAL_TABLE = read_clinical_cached(CLINICAL, Path(".snakemake") / "wsikt")
elif USER_SLIDES and not FETCH_TCGA_CDR:
    raise ConfigError(
        f"config: clinical table {CLINICAL} (config key 'clinical') not found; set the key to your TCGA-CDR-style table"
    )
else:
    # GDC, or the TCGA-CDR table still to fetch: the labels job checks it
    CLINICAL_TABLE = None
EXCLUDED_CANCERS = (
    {}
    if CLINICAL_TABLE is None or SAMPLES.empty
    else screen_cancers(
        SAMPLES,
        CLINICAL_TABLE,
        ENDPOINT,
        MIN_PATIENTS,
        str(CLINICAL),
        GROUPS.types_by_cancer(SAMPLES["cancer"].unique()),
    )
)
for _cancer, _why in EXCLUDED_CANCERS.items():
    logger.warning(f"cancer {_cancer} is left out: {_why}")
SAMPLES = SAMPLES[~SAMPLES["cancer"].isin(EXCLUDED_CANCERS)]

SAMPLES = SAMPLES.set_index("slide_id", drop=False)
CANCERS = sorted(SAMPLES["cancer"].unique())
SLIDES_BY_CANCER = SAMPLES.groupby("cancer")["slide_id"].apply(sorted).to_dict()
ROUPKT_TARGETS = (
    CANCERS
    if config["roupkt"]["targets"] == "all"
    else sorted(config["roupkt"]["targets"])
)
_pooled = [t for t in ROUPKT_TARGETS if t in GROUPS.group_of and t not in CANCERS]
if _pooled and CANCERS:
    raise ConfigError(
        f"config: roupkt.targets names {_pooled[0]}, which cancer_groups pools into "
        f"{GROUPS.group_of[_pooled[0]]}; name the group instead"
    )
SLIDE_PATHS = dict(zip(SAMPLES["slide_id"], SAMPLES["path"]))
if SPLITS.strategy == "files":
    for _cancer in CANCERS:
        try:
            check_fold_file_count(SPLITS.files, _cancer, config["experts"]["folds"])
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
FEATURE_BATCHES = plan_batches(SLIDES_BY_CANCER, config["features"]["slides_per_job"])

# shell: rules run `python -m wsikt.cli`: that `python` is Snakemake's own interpreter, as for
# script: rules, unless jobs run in a conda env or container (then that env's python).
if not {DeploymentMethod.CONDA, DeploymentMethod.APPTAINER} & set(
    workflow.deployment_settings.deployment_method
):
    shell.prefix(
        f'set -euo pipefail; PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; '
    )


def get_slide_path(wildcards):
    """The slide file of one slide id, from the sample sheet."""
    return SLIDE_PATHS[wildcards.slide]


def get_present_slide_path(wildcards):
    """The slide file, or none for a missing one (on_error: skip): its job then records the slide as failed."""
    return [] if wildcards.slide in MISSING_SLIDES else SLIDE_PATHS[wildcards.slide]


def batch_slide_input(slide):
    """A feature batch's input for one slide: the slide file, or for a missing slide its (empty) patch
    file, which stands in for it (a slide without patches is never read)."""
    return (
        path_of("patches", slide=slide)
        if slide in MISSING_SLIDES
        else SLIDE_PATHS[slide]
    )


# A pattern when every slide is <folder>/<slide id><ext> (GDC downloads, the demo), else the lookup.
SLIDE_INPUT = (
    get_present_slide_path
    if MISSING_SLIDES
    else slide_path_pattern(SAMPLES["slide_id"], SAMPLES["path"]) or get_slide_path
)


def get_mpp_override(wildcards):
    """The sample sheet's mpp override for a slide, or None."""
    value = SAMPLES.at[wildcards.slide, "mpp"]
    return None if pd.isna(value) else float(value)


# Without an mpp column no slide has an override: a constant, not a per-slide function call.
MPP_OVERRIDE = get_mpp_override if "mpp" in SAMPLES.columns else None


def get_cancer_slides(wildcards):
    """Slide id → patient id for one cancer (a param: adding a slide reruns only its cancer)."""
    rows = SAMPLES[SAMPLES["cancer"] == wildcards.cancer]
    return dict(zip(rows["slide_id"], rows["patient_id"]))


def get_clinical_types(wildcards):
    """The clinical table's type values one cancer accepts: its own, or its group's projects (cancer_groups)."""
    return GROUPS.clinical_types(wildcards.cancer)


def get_cancer_sites(wildcards):
    """Patient → tissue-source site of one cancer (splits.strategy site), else {}."""
    if SPLITS.strategy != "site":
        return {}
    return patient_sites(SAMPLES[SAMPLES["cancer"] == wildcards.cancer], SAMPLES_TSV)


def get_cancer_cohorts(wildcards):
    """Patient → cohort of one cancer (splits.strategy external), else {}."""
    if SPLITS.strategy != "external":
        return {}
    rows = SAMPLES[SAMPLES["cancer"] == wildcards.cancer]
    return dict(zip(rows["patient_id"], rows["cohort"]))


def get_fold_files(wildcards):
    """One cancer's fold files, fold order (splits.strategy files), else none."""
    if SPLITS.strategy != "files":
        return []
    return fold_file_paths(SPLITS.files, wildcards.cancer, config["experts"]["folds"])


def get_cancer_patches(wildcards):
    """Patch h5 files of every slide of one cancer (its feature files when features are ingested)."""
    if config["features"]["ingest"]:
        return [
            path_of("features", encoder=ENCODER, slide=s)
            for s in SLIDES_BY_CANCER[wildcards.cancer]
        ]
    return [path_of("patches", slide=s) for s in SLIDES_BY_CANCER[wildcards.cancer]]


def get_cancer_features(wildcards):
    """Feature h5 files of every slide of one cancer for one encoder."""
    return [
        path_of("features", encoder=wildcards.encoder, slide=s)
        for s in SLIDES_BY_CANCER[wildcards.cancer]
    ]


def get_patch_settings():
    """The keys of config section preprocess that shape patches (wsikt.preprocess.settings), as JSON."""
    return json.dumps(patch_params(config["preprocess"]), sort_keys=True)


def get_feature_settings():
    """The keys of config section features an extraction job uses (wsikt.features.settings), as JSON."""
    return json.dumps(feature_params(config["features"]), sort_keys=True)


def feature_resources(n_slides):
    """Resources of a feature batch job: its GPUs and a runtime for its slides (minutes)."""
    f = config["features"]
    return {"gpu": f["gpus"], "runtime": int(10 + f["minutes_per_slide"] * n_slides)}


def apply_profile_resources(rule_names, profile_name):
    """A profile's set-resources for ``profile_name`` applied to each of ``rule_names``, as Snakemake
    applies them to a rule of that name (the feature batch rules are extract_features_<cancer>_<id>).
    """
    overrides = workflow.resource_settings.overwrite_resources.get(profile_name)
    if overrides:
        for name in rule_names:
            workflow.get_rule(name).resources.update(overrides)


def as_json(**values):
    """A shell: rule's settings param: one JSON object (sorted keys, so equal settings compare equal)."""
    return json.dumps(values, sort_keys=True)


# Heatmaps (report.heatmaps: 0 = none): the experts' attention where the model has it, the ROUPKT
# router's where there are targets. They are drawn over the slides, so deleted downloads
# (gdc.keep_slides: false) leave only the attention layers, not the pictures.
HEATMAPS = config["report"]["heatmaps"] not in (0, [])
HEATMAP_SLIDES = (
    {}
    if not HEATMAPS or (config["gdc"]["projects"] and not config["gdc"]["keep_slides"])
    else {s: p for s, p in SLIDE_PATHS.items() if s not in MISSING_SLIDES}
)
DEMO_MECHANISMS = (
    {c["name"]: c["mechanism"] for c in config["demo"]["cancers"]}
    if config["demo"]["enabled"]
    else {}
)


def get_attention_layers(source):
    """The attention h5 of every cancer for ``source`` (experts, roupkt), or none where it has no attention."""
    if source == "experts":
        cancers = CANCERS if MODEL in ATTENTION_MODELS else []
    else:
        cancers = ROUPKT_TARGETS
    return [
        f"results/attention/{ENCODER}/{MODEL}/{ENDPOINT}/{source}/{c}/attention.h5"
        for c in (cancers if HEATMAPS else [])
    ]


def get_final_outputs():
    """The final targets (the report), requested by the default target.

    With GDC acquisition and no sample sheet yet, only the query runs; the next invocation reads
    the sheet and builds the per-slide DAG (a checkpoint would re-evaluate 10k-slide DAGs).
    """
    if not config["demo"]["enabled"] and config["gdc"]["projects"] and SAMPLES.empty:
        logger.info(
            f"No GDC sample sheet yet: this run writes {SAMPLES_TSV}; run snakemake again to process the slides."
        )
        return [SAMPLES_TSV]
    base = f"results/baselines/{ENCODER}/{MODEL}/{ENDPOINT}"
    return [PATH["report"]] + [
        f"{base}/{m}/summary.tsv" for m in config["baselines"]["methods"]
    ]


# Downloads follow the feature batches: slides of earlier batches first (priority), and with
# gdc.keep_slides false (slides are temp(), deleted once patched and embedded) the downloads for
# batch k wait until batch k - gdc.batches_on_disk is embedded, which bounds the slides on disk.
BATCH_NAMES = list(FEATURE_BATCHES)
BATCH_OF_SLIDE = {s: k for k, b in enumerate(BATCH_NAMES) for s in FEATURE_BATCHES[b]}


def downloaded_slide(path):
    """A download's slide output: temp() unless gdc.keep_slides."""
    return path if config["gdc"]["keep_slides"] else temp(path)


def get_download_gate(wildcards):
    """With gdc.keep_slides false: the features of the batch gdc.batches_on_disk places earlier."""
    k = BATCH_OF_SLIDE[wildcards.slide] - config["gdc"]["batches_on_disk"]
    if config["gdc"]["keep_slides"] or config["features"]["ingest"] or k < 0:
        return []
    return [
        ancient(path_of("features", encoder=ENCODER, slide=s))
        for s in FEATURE_BATCHES[BATCH_NAMES[k]]
    ]


def get_download_priority(wildcards):
    """Earlier feature batches download first (preprocessing and features outrank every download)."""
    return -BATCH_OF_SLIDE[wildcards.slide]


def get_gdc_file(wildcards):
    """GDC file id, md5 and size of one slide, from the recorded sample sheet."""
    row = SAMPLES.loc[wildcards.slide]
    return {"file_id": row["file_id"], "md5": row["md5"], "size": int(row["size"])}


# The statistics stage (stats.smk) reads every method's fold predictions.
def stats_methods():
    """The methods with prediction files: the experts, ROUPKT (when it has targets), each baseline."""
    return (
        ["expert"]
        + (["roupkt"] if ROUPKT_TARGETS else [])
        + list(config["baselines"]["methods"])
    )


def stats_predictions(wildcards):
    """Per method, its fold predictions and their sibling metrics.json (they name the cancer)."""
    base = (
        f"results/{{stage}}/{wildcards.encoder}/{wildcards.model}/{wildcards.endpoint}"
    )
    where = {
        "expert": (base.format(stage="experts"), CANCERS),
        "roupkt": (base.format(stage="roupkt"), ROUPKT_TARGETS),
    }
    files = {}
    for method in stats_methods():
        root, cancers = where.get(
            method, (f"{base.format(stage='baselines')}/{method}", CANCERS)
        )
        for kind in ("predictions.tsv", "metrics.json"):
            files[f"{method}_{kind.split('.')[0]}"] = expand(
                f"{root}/{{cancer}}/fold{{fold}}/{kind}", cancer=cancers, fold=FOLDS
            )
    return files


def get_routed_embeddings(wildcards):
    """A ROUPKT target's embedding cache, which its retrained null reads to retrain ROUPKT; none for
    another cancer (so with transfer.matrix false the retrained null needs no embedding job).
    """
    if wildcards.cancer not in ROUPKT_TARGETS:
        return []
    return path_of(
        "embeddings",
        encoder=wildcards.encoder,
        model=wildcards.model,
        endpoint=wildcards.endpoint,
        cancer=wildcards.cancer,
    )
