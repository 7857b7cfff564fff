"""Config and sample-sheet validation: JSON schema, defaults filled in, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from wsikt.core.mags import mag_name
from wsikt.core.model_facts import PRIMARY, model_scales


class ConfigError(ValueError):
    """The config or sample sheet is invalid; the message names the key and the fix."""


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Insert schema defaults for absent keys, recursively (before validation)."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = sub["default"]
        if key in instance:
            _fill_defaults(instance[key], sub)


def validate_config(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Fill defaults and validate ``config`` in place; raise ConfigError naming the offending key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_one_line(errors[0], source))
    check_consistency(config, source)
    return config


def check_consistency(config: dict, source: str = "config") -> None:
    """Rules across sections that a schema cannot state: each raises ConfigError naming the key and the fix.

    A stage's own rules live in its settings object (``PatchSettings``, ``TrainSettings``, ``NullGate``…),
    which the workflow builds from each section before any job (common.smk, ``check_settings``).
    """
    pre, exp = config.get("preprocess", {}), config.get("experts", {})
    target, context = pre.get("target_mpp"), pre.get("context_mpp", [])
    mthresh = pre.get("segmentation", {}).get("mthresh")
    if mthresh is not None and mthresh % 2 == 0:
        raise ConfigError(f"{source}: preprocess.segmentation.mthresh {mthresh} must be odd (a median-blur kernel)")
    source_fold, folds = config.get("roupkt", {}).get("source_folds"), exp.get("folds")
    if isinstance(source_fold, int) and not isinstance(source_fold, bool) and folds is not None and source_fold >= folds:
        raise ConfigError(f"{source}: roupkt.source_folds {source_fold} names a fold the experts do not have "
                          f"(experts.folds {folds}): use a fold in 0..{folds - 1} (CROPKT: 0), matched or all")
    check_transfer_matrix(config, source)
    feats = config.get("features", {})
    if feats.get("ingest") and feats.get("color_norm", "none") != "none":
        raise ConfigError(f"{source}: features.color_norm '{feats['color_norm']}' cannot reach ingested features "
                          f"(features.ingest '{feats['ingest']}': no patch is read): set features.color_norm: none, or "
                          "features.ingest: null to extract normalised features from the slides")
    if "model" in exp and target is not None:
        have = {mag_name(target), *(mag_name(m) for m in context)}
        need = [s for s in model_scales(exp["model"], **exp.get("model_params", {})) if s != PRIMARY]
        missing = [s for s in need if s not in have]
        if missing:
            mpps = ", ".join(f"{10 / float(s[:-1]):g}" for s in missing)
            raise ConfigError(f"{source}: experts.model '{exp['model']}' reads magnifications {need}, but patches "
                              f"have only {sorted(have)}: add [{mpps}] to preprocess.context_mpp")


def check_transfer_matrix(config: dict, source: str = "config") -> None:
    """``transfer.matrix: false`` runs no embedding job, so nothing that reads the expert embeddings may be on:
    ROUPKT (``roupkt.targets``), the fine-tuning baselines (``baselines.methods``) and HistoKT's fine-tuned
    matrix (``transfer.finetuned``). Raises ConfigError naming the keys that are on and the fix."""
    if config.get("transfer", {}).get("matrix", True):
        return
    readers = {"roupkt.targets": config.get("roupkt", {}).get("targets"),
               "baselines.methods": config.get("baselines", {}).get("methods"),
               "transfer.finetuned": config.get("transfer", {}).get("finetuned")}
    on = {key: value for key, value in readers.items() if value}
    if on:
        named = " and ".join(f"{key} {value!r}" for key, value in on.items())
        fix = ", ".join(f"{key}: []" for key in on)
        raise ConfigError(f"{source}: transfer.matrix is false (no expert embeddings are computed), but {named} "
                          f"{'need' if len(on) > 1 else 'needs'} them: set {fix}, or transfer.matrix: true")


def write_config(config: dict, path: str | Path) -> None:
    """Write a (validated) config as YAML atomically, keys in the config's order."""
    from wsikt.core.io import write_text

    write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), path)


def _one_line(err: jsonschema.ValidationError, source: str) -> str:
    key = _key(err.absolute_path)
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        full = f"{key}.{missing}" if err.absolute_path else missing
        return f"{source}: missing required key '{full}'; add it (see config/config.yaml for an example)"
    if err.validator == "additionalProperties":
        return f"{source}: {err.message} under '{key}'; remove or correct the key (typo?)"
    if err.validator == "enum":
        allowed = ", ".join(map(str, err.validator_value))
        return f"{source}: key '{key}' = {err.instance!r} is not one of: {allowed}"
    if err.validator == "type":
        return f"{source}: key '{key}' = {err.instance!r} must be of type {err.validator_value}"
    return f"{source}: key '{key}': {err.message}"


SAMPLE_COLUMNS = ("slide_id", "patient_id", "cancer", "path")
_TEXT_COLUMNS = ("slide_id", "patient_id", "cancer", "path", "file_id", "file_name", "md5", "site", "cohort")


def read_samples(path: str | Path, schema_path: str | Path) -> pd.DataFrame:
    """Read a sample sheet TSV (id-like columns kept as text, e.g. md5 '00…') and validate it."""
    if not Path(path).exists():
        raise ConfigError(f"sample sheet {path} (config key 'samples') not found; create it or set demo.enabled: true")
    df = pd.read_csv(path, sep="\t", dtype={c: str for c in _TEXT_COLUMNS})
    return validate_samples(df, schema_path, source=str(path))


def validate_samples(samples: pd.DataFrame, schema_path: str | Path, source: str) -> pd.DataFrame:
    """Check a sample sheet against its schema row by row; unique slide ids; returns it typed."""
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise ConfigError(f"{source}: missing column(s) {missing}; a sample sheet has {', '.join(SAMPLE_COLUMNS)}")
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for i, row in enumerate(samples.to_dict("records")):
        record = {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
        err = next(iter(validator.iter_errors(record)), None)
        if err is not None:
            raise ConfigError(f"{source}: row {i + 2} (slide {row.get('slide_id')}): column '{_key(err.absolute_path) if err.absolute_path else err.message}': {err.message}")
    dup = samples["slide_id"][samples["slide_id"].duplicated()]
    if len(dup):
        raise ConfigError(f"{source}: slide_id '{dup.iloc[0]}' appears twice; slide ids must be unique")
    return samples


def check_folds(samples: pd.DataFrame, folds: int, source: str) -> None:
    """Every cancer of the sample sheet has at least ``folds`` patients (config key experts.folds)."""
    counts = samples.groupby("cancer")["patient_id"].nunique()
    few = counts[counts < folds]
    if len(few):
        cancer, n = few.index[0], int(few.iloc[0])
        raise ConfigError(f"{source}: cancer {cancer} has {n} patient(s), fewer than experts.folds {folds}; "
                          f"lower experts.folds or drop the cancer's rows from the sample sheet")


def missing_slides(samples: pd.DataFrame) -> pd.DataFrame:
    """Sample-sheet rows whose slide file does not exist: ``row`` (the TSV's line), ``slide_id``, ``path``."""
    rows = [(i + 2, sid, path) for i, (sid, path) in enumerate(zip(samples["slide_id"], samples["path"]))
            if not Path(str(path)).is_file()]
    return pd.DataFrame(rows, columns=["row", "slide_id", "path"])


def missing_slide_line(line: int, slide_id: str, path: str, source: str) -> str:
    """One line naming a missing slide's sample-sheet row, slide and path, and the fix."""
    return (f"{source}: row {line} (slide {slide_id}): slide file {path} not found; correct the 'path' column or "
            "remove the row (preprocess.on_error: skip excludes the slide instead)")


def slide_path_pattern(slide_ids: "pd.Series | list[str]", paths: "pd.Series | list[str]") -> str | None:
    """A Snakemake pattern ``<prefix>{slide}<suffix>`` that gives every slide's path, or None.

    Sample sheets usually keep slides in one folder named by slide id (GDC downloads and the demo
    do); then the per-slide rules take this pattern instead of an input function, which Snakemake
    would call once per slide and job while building the DAG. Any row that does not fit → None.
    """
    ids, ps = [str(s) for s in slide_ids], [str(p) for p in paths]
    if not ids:
        return None
    first_id, first_path = ids[0], ps[0]
    at = first_path.rfind(first_id)
    if at < 0:
        return None
    prefix, suffix = first_path[:at], first_path[at + len(first_id):]
    if any(c in prefix + suffix for c in "{}\\"):
        return None  # braces would be read as wildcards; keep Windows-style paths on the lookup
    if all(p == prefix + s + suffix for s, p in zip(ids, ps)):
        return prefix + "{slide}" + suffix
    return None
