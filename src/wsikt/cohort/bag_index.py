"""One cancer's bag index: each slide's features file, patient and shape, checked to agree.

Every job that trains or runs models on a cancer (experts, embeddings, ROUPKT, baselines) reads
this one TSV instead of listing the cancer's feature files itself. It is built once per cancer and
encoder, and refuses a cohort whose feature files disagree on encoder, weights, dimension or
magnification (e.g. 20x and 40x features mixed after a config change), naming the odd slide.
In the workflow it also keeps the DAG small: one input per job instead of one per slide.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from wsikt.core.io import write_tsv
from wsikt.formats.features_h5 import describe_features

COLUMNS = ["slide_id", "patient_id", "features", "n_patches", "dim", "encoder", "weights_hash", "primary",
           "magnifications", "mpp", "flagged"]
MUST_AGREE = ("encoder", "weights_hash", "dim", "primary", "magnifications")


def build_bag_index(feature_paths: Sequence[str | Path], slides: Mapping[str, str]) -> pd.DataFrame:
    """One row per slide of ``slides`` (slide id → patient id); its features file is ``<slide id>.h5``.

    Raises ValueError naming the slide when a file is missing, unreadable, or disagrees with the
    cohort's majority on any of encoder, weights, feature dimension or magnifications.
    """
    by_slide = {Path(p).name[: -len(".h5")]: Path(p) for p in feature_paths}
    missing = sorted(set(slides) - set(by_slide))
    if missing:
        raise ValueError(f"no features file for slide(s) {', '.join(missing[:5])} (given: {len(by_slide)} files); "
                         "run feature extraction for them")
    rows = [dict(slide_id=s, patient_id=str(slides[s]), **describe_features(by_slide[s])) for s in sorted(slides)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    have = df[df["n_patches"] > 0]  # a failed or tissue-less slide's empty file says little about its encoder
    for key in MUST_AGREE:
        counts = Counter(have[key])
        if len(counts) > 1:
            usual = counts.most_common(1)[0][0]
            odd = have[have[key] != usual].iloc[0]
            raise ValueError(
                f"{odd['features']}: {key} is {odd[key]!r} but {counts[usual]} of {len(have)} slides of this cohort have "
                f"{usual!r}; features of one cohort must come from one encoder and preprocessing config — delete the odd "
                "file(s) and rerun feature extraction"
            )
    return df


def write_bag_index(feature_paths: Sequence[str | Path], slides: Mapping[str, str], out_tsv: str | Path) -> pd.DataFrame:
    """Build the index and write it atomically as TSV."""
    df = build_bag_index(feature_paths, slides)
    write_tsv(df, out_tsv)
    return df


def read_bag_index(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """(slides: slide_id, patient_id) and slide id → features path, as ``load_patient_bags`` takes them."""
    df = pd.read_csv(path, sep="\t", dtype={"slide_id": str, "patient_id": str, "features": str})
    missing = [c for c in ("slide_id", "patient_id", "features") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it is not a bag index — delete it and rerun the bag_index rule")
    return df[["slide_id", "patient_id"]].copy(), dict(zip(df["slide_id"], df["features"]))
