"""Feature extraction: one process embeds many slides with the encoder built once, one h5 per slide.

The slides of a batch (one workflow job; ``features.slides_per_job``) form one patch stream, so the
weights are read once, the DataLoader workers read the next slide while the device embeds this
one, and no gap opens between slides. Each slide's h5 is written into a temporary file next to
its output and, when its last row arrives, hard-linked into a resume journal
(``<out dir>/.resume``) and renamed onto the output: a killed or failed batch keeps every slide
it finished, and the rerun (which Snakemake starts with the batch's outputs removed) takes them
back from the journal instead of embedding them again. A batch that completes clears its journal.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

import wsikt
from wsikt.core.device import resolve_device
from wsikt.core.io import atomic_path
from wsikt.features.encoders import EncoderSpec, build_encoder, get_encoder_spec
from wsikt.features.patch_stream import PatchDataset, embed, loader_chunk, make_loader
from wsikt.features.stain import build_stain
from wsikt.formats.features_h5 import FeatureWriter, count_rows
from wsikt.formats.patches_h5 import PatchFile, read_patch_file
from wsikt.preprocess.slide import MissingMppError, open_slide, slide_mpp

log = logging.getLogger("wsikt.features.extract")

RESUME_DIR = ".resume"


class ExtractionError(RuntimeError):
    """Some slides of a batch could not be embedded; the others are written (and kept for a rerun)."""


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed: the slide file, its patch h5 and the features h5 to write."""

    slide: Path
    patches: Path
    out: Path

    @classmethod
    def of(cls, slide: str | os.PathLike, patches: str | os.PathLike, out: str | os.PathLike) -> "SlideJob":
        return cls(Path(slide), Path(patches), Path(out))

    @property
    def name(self) -> str:
        return self.out.stem


# ------------------------------------------------------------------------------------ resume journal


def resume_key(job: SlideJob, encoder: str, weights: str | None, precision: str | None, device: str,
               stain: dict | None = None) -> str:
    """What a finished slide's features depend on: encoder, weights file, precision, device type, colour
    normalisation (``stain``: its h5 attributes) and both inputs.

    The patch h5 is hashed (kilobytes to a few megabytes); the slide and the weights by size and
    modification time, as Snakemake judges inputs.
    """
    h = hashlib.sha256()
    h.update(job.patches.read_bytes())
    stat = job.slide.stat()
    wstat = os.stat(weights) if weights and os.path.exists(weights) else None
    h.update(json.dumps(dict(
        encoder=encoder, weights=str(weights), wstat=[wstat.st_size, wstat.st_mtime_ns] if wstat else None,
        precision=precision, device=device, slide=[str(job.slide), stat.st_size, stat.st_mtime_ns],
        wsikt=wsikt.__version__, stain={k: np.asarray(v).tolist() for k, v in (stain or {}).items()},
    ), sort_keys=True).encode())
    return h.hexdigest()[:24]


def journal_path(out: Path, key: str) -> Path:
    """Where a finished slide's h5 waits for its batch to complete."""
    return out.parent / RESUME_DIR / f"{out.name}.{key}"


def _take_from_journal(out: Path, key: str) -> bool:
    """Put back a slide that an interrupted run of this batch finished; drop journal entries of older keys."""
    entry = journal_path(out, key)
    for stale in entry.parent.glob(f"{out.name}.*"):
        if stale != entry:
            stale.unlink(missing_ok=True)
    if not entry.exists():
        return False
    with atomic_path(out) as tmp:
        tmp.unlink()
        os.link(entry, tmp)
    return True


def _clear_journal(out: Path) -> None:
    for entry in (out.parent / RESUME_DIR).glob(f"{out.name}.*"):
        entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only when empty: other batches may be journaling there
        (out.parent / RESUME_DIR).rmdir()


def _journal(tmp: Path, entry: Path) -> None:
    """Hard-link a finished slide's file into the journal (the directory may vanish under a concurrent clear)."""
    for attempt in range(3):
        entry.parent.mkdir(exist_ok=True)
        entry.unlink(missing_ok=True)
        try:
            os.link(tmp, entry)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def _remove_stale_partials(out_h5: Path) -> None:
    """Temporary files left by a killed earlier run of this output (atomic_path's naming)."""
    for stale in out_h5.parent.glob(f".{out_h5.name}.*.partial"):
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- one slide's h5


def _patch_mpp(slide_path: Path, attrs: dict, level: int, read_size: int, target_size: int) -> float:
    """µm/px of what the encoder saw: recorded by wsikt's patcher, else derived from the slide (CLAM h5)."""
    if "target_mpp" in attrs:
        return float(attrs["target_mpp"])
    slide = open_slide(slide_path)
    try:
        return slide_mpp(slide, name=str(slide_path)) * float(slide.level_downsamples[level]) * read_size / target_size
    except MissingMppError:
        log.warning("%s: no mpp metadata; features attr 'mpp' is NaN", slide_path)
        return math.nan
    finally:
        slide.close()


@dataclass
class SlidePlan:
    """A slide to embed: its patches, the µm/px of each magnification and its resume key."""

    job: SlideJob
    patches: PatchFile
    mpps: list[float]
    key: str

    @property
    def offsets(self) -> np.ndarray:
        """Row where each magnification starts in the slide's stream, and the total."""
        return np.cumsum([0] + [len(m.coords) for m in self.patches.mags])


def _journal_hook(plan: SlidePlan) -> Callable[[Path], None]:
    """Hard-link a finished slide's file into the journal before its rename: a kill in between still resumes it."""

    def hook(tmp: Path) -> None:
        entry = journal_path(plan.job.out, plan.key)
        try:
            _journal(tmp, entry)
        except OSError as exc:  # a file system without hard links: no resume, nothing else lost
            log.warning("%s: no resume journal (%s); an interrupted batch re-embeds this slide", entry, exc)

    return hook


# ------------------------------------------------------------------------------------- many slides


def _plan(jobs: Sequence[SlideJob], encoder: str, weights: str | None, precision: str | None, device: str,
          stain: dict | None = None) -> tuple[list[SlidePlan], list[SlideJob], dict[str, str]]:
    """(slides to embed, slides taken back from the resume journal, failures: slide → one line)."""
    todo, resumed, failed = [], [], {}
    for job in jobs:
        _remove_stale_partials(job.out)
        try:
            key = resume_key(job, encoder, weights, precision, device, stain)
            if _take_from_journal(job.out, key):
                resumed.append(job)
                continue
            pf = read_patch_file(job.patches)
            mpps = [_patch_mpp(job.slide, m.attrs, m.level, m.read_size, m.target_size) for m in pf.mags]
        except (OSError, ValueError, KeyError) as exc:
            failed[job.name] = f"{type(exc).__name__}: {exc}"
            log.error("%s: cannot be embedded: %s", job.name, failed[job.name])
            continue
        todo.append(SlidePlan(job, pf, mpps, key))
    return todo, resumed, failed


def _stream(plans: Sequence[SlidePlan]) -> tuple[PatchDataset, np.ndarray]:
    """One patch stream over every magnification of every slide, and the row where each slide starts."""
    sizes = {p.patches.mags[0].target_size for p in plans}
    if len(sizes) > 1:
        raise ValueError(f"slides of one batch have patch sizes {sorted(sizes)}; patch them with one preprocess.patch_size")
    parts = [(k, m) for k, p in enumerate(plans) for m in p.patches.mags]
    coords = np.concatenate([m.coords for _, m in parts]) if parts else np.zeros((0, 2), np.int64)
    index = np.concatenate([np.full(len(m.coords), k) for k, m in parts]) if parts else np.zeros(0, np.int64)
    level = np.concatenate([np.full(len(m.coords), m.level) for _, m in parts]) if parts else np.zeros(0, np.int64)
    size = np.concatenate([np.full(len(m.coords), m.read_size) for _, m in parts]) if parts else np.zeros(0, np.int64)
    starts = np.cumsum([0] + [p.patches.n_patches for p in plans])
    dataset = PatchDataset([p.job.slide for p in plans], coords, level, size, sizes.pop() if sizes else 256, index)
    return dataset, starts


def _used_precision(default: str, precision: str | None, device: torch.device) -> str:
    """The precision a run embeds at: fp32 on CPU, else the setting or the encoder's own (``default``)."""
    return (precision or default) if device.type == "cuda" else "fp32"


def extract_slides(
    jobs: Sequence[SlideJob],
    encoder: str,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    weights: str | None = None,
    allow_hub: bool = False,
    precision: str | None = None,
    compile: bool = False,
    prefetch: int = 2,
    encoder_model: tuple[torch.nn.Module, EncoderSpec, str] | None = None,
    color_norm: str = "none",
    color_norm_reference: str | None = None,
) -> list[int]:
    """Embed every patch of every magnification of each slide with ``encoder`` built once; one h5 per slide.

    Returns each slide's number of primary-magnification patches. Slides that cannot be read are
    named in one ``ExtractionError`` raised after the others are written. ``encoder_model`` is a
    ``build_encoder`` result to reuse (``encoder`` then only keys the resume journal). ``color_norm``
    names a stain normaliser (``wsikt.features.stain``) applied to every patch before the encoder;
    its fit is stored in each h5.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    stain = build_stain(color_norm, color_norm_reference)
    default = encoder_model[1].precision if encoder_model else get_encoder_spec(encoder).precision
    plans, resumed, failed = _plan(jobs, encoder, weights, _used_precision(default, precision, dev), dev.type,
                                   stain.attrs() if stain else None)
    if resumed:
        log.info("%d of %d slides were finished by an interrupted run: taken from %s", len(resumed), len(jobs), RESUME_DIR)
    if plans:
        _embed_slides(plans, encoder, batch_size, num_workers, dev, weights, allow_hub, precision, compile,
                      prefetch, encoder_model, stain)
    if failed:
        raise ExtractionError(
            f"{len(failed)} of {len(jobs)} slides could not be embedded ({'; '.join(f'{k}: {v}' for k, v in failed.items())}); "
            f"the other {len(jobs) - len(failed)} are written and kept for the rerun, which embeds only the failed ones")
    for job in jobs:
        _clear_journal(job.out)
    log.info("%d slides done in %.1f s (%d embedded, %d resumed)", len(jobs), time.perf_counter() - t0, len(plans), len(resumed))
    counts = {p.job.out: len(p.patches.mags[0].coords) for p in plans}
    return [counts[j.out] if j.out in counts else count_rows(j.out) for j in jobs]


class SlideStream:
    """Routes the rows of one patch stream over many slides to per-slide writers, in order.

    A slide's writer opens when its first rows arrive and publishes the file when its last row is
    written; ``abort`` drops the files of slides still open (a failure or interrupt mid-slide).
    """

    def __init__(self, plans: list[SlidePlan], starts: np.ndarray, dim: int, attrs: dict, bar: tqdm) -> None:
        self.plans, self.starts, self.dim, self.attrs, self.bar = plans, starts, dim, attrs, bar
        self.writers: dict[int, FeatureWriter] = {}
        self.done = 0

    def _writer(self, k: int) -> FeatureWriter:
        if k not in self.writers:
            p = self.plans[k]
            self.writers[k] = FeatureWriter(p.job.out, p.patches.mags, self.dim, multi=p.patches.has_mags)
        return self.writers[k]

    def _finish(self, k: int) -> None:
        w, p = self.writers.pop(k), self.plans[k]
        w.close(self.attrs, p.mpps, before_publish=_journal_hook(p))
        self.done += 1
        if w.flagged:
            log.warning("%s: %d unreadable tiles flagged (dataset 'flagged')", p.job.slide, w.flagged)
        log.info("%s: %d patches (%s) → %s", p.job.name, len(p.patches.mags[0].coords),
                 ", ".join(f"{m.name}: {len(m.coords)}" for m in p.patches.mags), p.job.out)

    def write_empty(self) -> None:
        """Slides without patches: nothing to embed, an empty file each."""
        for k, p in enumerate(self.plans):
            if p.patches.n_patches == 0:
                self._writer(k)
                self._finish(k)

    def sink(self, start: int, values: np.ndarray, ok: np.ndarray) -> None:
        """``embed``'s sink: rows ``start …`` of the stream."""
        starts, end = self.starts, start + len(values)
        k = bisect.bisect_right(starts, start) - 1
        while k < len(self.plans) and starts[k] < end:
            lo, hi = max(start, starts[k]), min(end, starts[k + 1])
            if lo < hi:
                self._writer(k).write(lo - starts[k], values[lo - start:hi - start], ok[lo - start:hi - start])
                if self.writers[k].complete:
                    self._finish(k)
            k += 1
        self.bar.update(len(values))

    def slide_of(self, row: int) -> str:
        """The slide a stream row belongs to (named in errors)."""
        return str(self.plans[bisect.bisect_right(self.starts, row) - 1].job.slide)

    def abort(self, exc: BaseException) -> BaseException:
        """Drop the unfinished slides' files; the error to raise, naming them and what was kept."""
        open_slides = [self.plans[k].job.name for k in self.writers]
        for w in self.writers.values():
            w.abort()
        if not isinstance(exc, Exception):
            return exc
        return ExtractionError(f"embedding stopped in {', '.join(open_slides) or 'the first slide'} "
                               f"({type(exc).__name__}: {exc}); {self.done} of {len(self.plans)} slides were finished "
                               "and are kept for the rerun, which embeds only the rest")


def _embed_slides(plans: list[SlidePlan], encoder: str, batch_size: int, num_workers: int, dev: torch.device,
                  weights: str | None, allow_hub: bool, precision: str | None, compile: bool, prefetch: int,
                  encoder_model: tuple[torch.nn.Module, EncoderSpec, str] | None, stain=None) -> None:
    """The engine behind ``extract_slides``: one encoder, one loader, slide writers opened and closed in turn."""
    t_build = time.perf_counter()
    model, spec, whash = encoder_model or build_encoder(encoder, weights, allow_hub, device=dev)
    log.info("encoder '%s' built once for %d slides on %s in %.1f s (dim %d, weights %s)", spec.name, len(plans), dev,
             time.perf_counter() - t_build, spec.dim, whash[:12])
    attrs = dict(encoder=spec.name, dim=spec.dim, weights_hash=whash, precision=_used_precision(spec.precision, precision, dev))
    if stain is not None:
        attrs.update(stain.attrs())
    dataset, starts = _stream(plans)
    bar = tqdm(total=len(dataset), unit="tile", desc=f"{len(plans)} slides", file=sys.stderr, mininterval=10,
               ascii=True, disable=len(dataset) == 0)
    stream = SlideStream(plans, starts, spec.dim, attrs, bar)
    try:
        stream.write_empty()
        chunk = loader_chunk(batch_size, num_workers)
        loader = make_loader(dataset, chunk, num_workers, pin=dev.type == "cuda", prefetch=prefetch * batch_size // chunk,
                             starts=starts)
        stats = embed(model, spec, loader, dev, stream.sink, precision, compile, label=stream.slide_of,
                      batch_size=batch_size, starts=starts, stain=stain)
    except BaseException as exc:
        error = stream.abort(exc)
        if error is exc:
            raise
        raise error from exc
    finally:
        bar.close()
    if stats.fp32_retries:
        log.warning("%d patches overflowed under %s and were recomputed in fp32", stats.fp32_retries,
                    precision or spec.precision)
    log.info("%d slides, %d patches on %s (%s, dim %d): %.1f tiles/s", len(plans), stats.n, dev, spec.name, spec.dim,
             stats.tiles_per_s)
    if stain is not None and stain.fallbacks:
        log.warning("%d of %d patches had no estimable stain (background or pen) and were embedded without "
                    "colour normalisation", stain.fallbacks, stats.n)


def extract_features(slide_path: str | Path, patches_h5: str | Path, out_h5: str | Path, encoder: str,
                     **settings) -> int:
    """One slide: ``extract_slides`` with a batch of one; returns the primary magnification's N."""
    return extract_slides([SlideJob.of(slide_path, patches_h5, out_h5)], encoder, **settings)[0]
