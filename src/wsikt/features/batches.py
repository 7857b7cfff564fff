"""Which slides one feature-extraction job embeds: content-defined batches that stay put as a cohort grows.

Fixed chunks of a sorted slide list shift when a slide is added, and every later chunk would be
re-embedded. Here, as in rsync's content-defined chunking, a batch ends after each slide whose id
hashes to 0 modulo ``slides_per_job``: the cut points depend on the slides themselves, so adding
or removing a slide changes only the batch it falls in (adding one whose own hash is a cut splits
that batch in two). Batch sizes then vary around ``slides_per_job`` (geometrically). Pure Python,
no torch: the Snakefile calls it while it parses.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping, Sequence


def _hash(slide_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(slide_id.encode(), digest_size=8).digest(), "big")


def is_cut(slide_id: str, slides_per_job: int) -> bool:
    """Whether a batch ends after this slide (a stable hash, the same in every process)."""
    return _hash(slide_id) % slides_per_job == 0


def plan_batches(slides_by_group: Mapping[str, Sequence[str]], slides_per_job: int) -> dict[str, list[str]]:
    """Batch name → its slide ids (sorted), within each group (cancer), in order.

    A name is an identifier ``<group>_<8 hex digits of its first slide's hash>``: it stays the same
    while the batch keeps its first slide, so adding a slide renames no other batch (and no other
    rule, log or benchmark file). ``slides_per_job`` ≤ 1 gives one slide per batch.
    """
    if int(slides_per_job) != slides_per_job:
        raise ValueError(f"features.slides_per_job must be a whole number, got {slides_per_job!r}")
    n = max(1, int(slides_per_job))
    batches: dict[str, list[str]] = {}
    stems: dict[str, str] = {}
    for group in sorted(slides_by_group):
        stem = re.sub(r"\W", "_", str(group))
        if stems.setdefault(stem, group) != group:
            raise ValueError(f"cancers '{stems[stem]}' and '{group}' differ only in punctuation; rename one in the sample sheet")
        chunks: list[list[str]] = [[]]
        for slide in sorted(slides_by_group[group]):
            chunks[-1].append(slide)
            if is_cut(slide, n):
                chunks.append([])
        for chunk in chunks:
            if chunk:
                name = f"{stem}_{_hash(chunk[0]) % 16**8:08x}"
                while name in batches:  # two first slides with one 32-bit hash: a second, stable name
                    name += "_"
                batches[name] = chunk
    return batches
