"""Command line for the per-slide and feature batch jobs: ``python -m wsikt.cli <rule> --option value ...``.

The workflow's per-slide rules (12,000 jobs each at TCGA scale) call these through ``shell:``
rather than ``script:``: Snakemake re-reads a ``script:`` file for every job while it builds the
DAG, about a fifth of a 12k-slide dry run. Each subcommand is named after its rule, takes paths and
values (settings as one JSON object, as the rule's ``params``) and writes one log file per job.
``extract_features`` takes one or many slides (``--slide``/``--patches``/``--out`` in the same
order) and builds the encoder once. The same commands process slides by hand, outside Snakemake.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from wsikt.core.logs import log_to


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}: {text[:80]!r}")
    return value


def _optional_float(text: str) -> float | None:
    """'', 'None' or 'none' → None (Snakemake renders a None param as 'None'), else a float."""
    if text.strip() in ("", "None", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or None, got {text!r}") from None


def preprocess_slide(a: argparse.Namespace) -> None:
    """Segment and patch one slide (a bad slide → empty outputs with its status)."""
    from wsikt.preprocess.pipeline import preprocess_slide as run
    from wsikt.preprocess.settings import PatchSettings

    run(a.slide, a.slide_id, a.tissue, a.patches, a.qc_tissue, a.qc, PatchSettings.from_config(a.settings),
        mpp_override=a.mpp_override, on_error=a.on_error)


def extract_features(a: argparse.Namespace) -> None:
    """Embed slides' patches (all magnifications) with one encoder, built once for all of them."""
    from wsikt.features.settings import FeatureSettings

    try:
        settings = FeatureSettings.from_config(a.settings)
    except ValueError as exc:
        raise SystemExit(f"extract_features --settings: {exc}") from None
    if not len(a.slide) == len(a.patches) == len(a.out):
        raise SystemExit(f"extract_features: {len(a.slide)} --slide, {len(a.patches)} --patches and {len(a.out)} --out "
                         "paths; give one of each per slide, in the same order")
    import torch

    from wsikt.features.extract import SlideJob, extract_slides

    if a.threads:
        torch.set_num_threads(a.threads)
    jobs = [SlideJob.of(s, p, o) for s, p, o in zip(a.slide, a.patches, a.out)]
    extract_slides(jobs, encoder=a.encoder, **settings.kwargs())  # absent keys: the library's defaults


def ingest_features(a: argparse.Namespace) -> None:
    """One slide's features from an external CLAM/TRIDENT/.pt directory → wsikt's features h5."""
    from wsikt.features.ingest import ingest_slide

    ingest_slide(a.source, a.slide_id, a.out, encoder=a.encoder, mpp=a.mpp)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m wsikt.cli", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="{preprocess_slide,extract_features,ingest_features}")

    p = sub.add_parser("preprocess_slide", help=preprocess_slide.__doc__)
    p.add_argument("--slide", required=True, nargs="?", const="",
                   help="the slide file (given empty: the sample sheet's path did not exist; the slide is recorded as failed)")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--tissue", required=True, help="output GeoJSON of tissue contours")
    p.add_argument("--patches", required=True, help="output patch h5")
    p.add_argument("--qc-tissue", required=True, help="output tissue QC PNG")
    p.add_argument("--qc", required=True, help="output patch QC PNG")
    p.add_argument("--settings", type=_json_object, required=True, help="config section preprocess (or part of it) as a JSON object")
    p.add_argument("--mpp-override", type=_optional_float, default=None)
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip")
    p.set_defaults(run=preprocess_slide)

    p = sub.add_parser("extract_features", help=extract_features.__doc__)
    p.add_argument("--slide", nargs="+", required=True, help="slide files (one or many: the encoder is built once)")
    p.add_argument("--patches", nargs="+", required=True, help="each slide's patch h5, in the same order")
    p.add_argument("--out", nargs="+", required=True, help="each slide's output features h5, in the same order")
    p.add_argument("--encoder", required=True)
    p.add_argument("--settings", type=_json_object, default={}, help="keys of config section features, as a JSON object: any of "
                   + "batch_size, num_workers, device, weights, hub, precision, compile, prefetch"
                   + " (wsikt.features.extract.extract_slides arguments) as a JSON object")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(run=extract_features)

    p = sub.add_parser("ingest_features", help=ingest_features.__doc__)
    p.add_argument("--source", required=True, help="the external features directory")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--mpp", type=_optional_float, default=None)
    p.set_defaults(run=ingest_features)

    for p in sub.choices.values():
        p.add_argument("--log", default=None, help="append logging, stdout and stderr here (default: the terminal)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = a.run
    with log_to(a.log):
        run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
