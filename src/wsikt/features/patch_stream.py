"""Patch embedding at the speed of the model, for one slide or many in one stream.

DataLoader workers open each slide once (a small per-worker cache of handles) and read patches by
level-0 coordinates; items from several slides and magnifications form one stream, so workers read
the next slide while the device embeds this one. Batches travel as pinned uint8, are copied without
blocking, resized and normalised on the device and embedded under autocast at the encoder's
precision. Outputs are copied back asynchronously and handed to a sink one batch behind the
forward, so reading, compute and writing overlap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import openslide
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from wsikt.features.encoders import EncoderSpec
from wsikt.preprocess.slide import SlideError, open_slide, read_region_rgb

log = logging.getLogger("wsikt.features.extract")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class PatchDataset(Dataset):
    """Patches of one or more slides by level-0 coords, as one stream in the order given.

    ``slide_path`` is one slide, or a list of slides with ``slide_index`` (per patch) pointing into
    it. ``level`` and ``read_size`` are one value or one per patch (several magnifications in one
    stream); every patch is returned at ``patch_size`` px as uint8 (3, H, W) with a readable flag.
    Each DataLoader worker opens a slide once and keeps at most ``MAX_OPEN`` handles: the stream
    moves from slide to slide, so older handles are closed.
    """

    MAX_OPEN = 2

    def __init__(self, slide_path: str | Path | Sequence[str | Path], coords: np.ndarray, level: int | np.ndarray,
                 read_size: int | np.ndarray, patch_size: int, slide_index: np.ndarray | None = None):
        several = not isinstance(slide_path, (str, Path))
        self.slide_paths = [str(p) for p in slide_path] if several else [str(slide_path)]
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(self.coords)
        if slide_index is None and several and len(self.slide_paths) != 1:
            raise ValueError("PatchDataset: several slides need slide_index (one entry per patch)")
        self.slide_index = np.broadcast_to(np.asarray(0 if slide_index is None else slide_index, dtype=np.int64), (n,))
        self.levels = np.broadcast_to(np.asarray(level, dtype=np.int64), (n,))
        self.read_sizes = np.broadcast_to(np.asarray(read_size, dtype=np.int64), (n,))
        self.patch_size = int(patch_size)
        self._handles: dict[int, openslide.OpenSlide] = {}

    def __len__(self) -> int:
        return len(self.coords)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # a handle never crosses a process boundary
        return state

    def _handle(self, k: int) -> openslide.OpenSlide:
        if k not in self._handles:
            while len(self._handles) >= self.MAX_OPEN:
                self._drop(next(iter(self._handles)))
            self._handles[k] = open_slide(self.slide_paths[k])
        return self._handles[k]

    def _drop(self, k: int) -> None:
        handle = self._handles.pop(k, None)
        if handle is not None and hasattr(handle, "close"):
            handle.close()

    def _read(self, k: int, x: int, y: int, level: int, size: int) -> np.ndarray:
        return read_region_rgb(self._handle(k), x, y, level, size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        x, y = (int(v) for v in self.coords[i])
        k, level, size = int(self.slide_index[i]), int(self.levels[i]), int(self.read_sizes[i])
        try:
            rgb, ok = self._read(k, x, y, level, size), True
        except (openslide.OpenSlideError, SlideError):
            # OpenSlide errors are sticky: reopen the handle and retry once, then flag the tile.
            self._drop(k)
            try:
                rgb, ok = self._read(k, x, y, level, size), True
            except (openslide.OpenSlideError, SlideError):
                self._drop(k)
                rgb, ok = np.full((size, size, 3), 255, np.uint8), False
        if rgb.shape[0] != self.patch_size:
            rgb = cv2.resize(rgb, (self.patch_size, self.patch_size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(rgb).permute(2, 0, 1), ok


def _worker_init(_: int) -> None:
    """One torch thread per worker (workers are the parallelism) and no inherited slide handles.

    OpenCV's thread count is left alone: cv2.setNumThreads in a forked child whose parent already
    used OpenCV's pthreads pool deadlocks (cv2 5.0); cv2.resize itself is fork-safe.
    """
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None:
        info.dataset._handles = {}


class Preprocess(torch.nn.Module):
    """uint8 patches on the device → the encoder's input: centre crop, resize, normalise (as its eval transform)."""

    def __init__(self, spec: EncoderSpec, channels_last: bool = False) -> None:
        super().__init__()
        self.size, self.crop, self.mode = spec.input_size, spec.crop, spec.interpolation
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.crop < 1.0:
            side = x.shape[-1]
            c = int(round(side * self.crop))
            o = (side - c) // 2
            x = x[..., o:o + c, o:o + c]
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class RunStats:
    """What a run did: patches, flagged tiles, seconds, tiles per second."""

    n: int = 0
    flagged: int = 0
    seconds: float = 0.0
    fp32_retries: int = 0

    @property
    def tiles_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")


LOADER_CHUNK = 64  # at most this many tiles per worker batch: see loader_chunk


def loader_chunk(batch_size: int, num_workers: int) -> int:
    """Tiles per worker batch: the largest divisor of ``batch_size`` that is ≤ LOADER_CHUNK (with workers).

    A worker hands over a whole batch at once, so with 256-tile batches the first forward waits for
    256 reads (≈2 s on 15 workers of an H100 node) and every worker holds 256 tiles in flight. Workers
    fill smaller chunks instead and ``embed`` regroups them on the device into ``batch_size`` rows
    (a divisor, so a compiled model still sees one shape).
    """
    if num_workers == 0:
        return batch_size
    return max(d for d in range(1, min(batch_size, LOADER_CHUNK) + 1) if batch_size % d == 0)


def aligned_batches(starts: Sequence[int], batch_size: int) -> list[range]:
    """Row ranges of at most ``batch_size`` that restart at every slide start (``starts`` ends with the total)."""
    return [range(s, min(s + batch_size, end)) for begin, end in zip(starts[:-1], starts[1:])
            for s in range(int(begin), int(end), batch_size)]


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool, prefetch: int = 2,
                starts: Sequence[int] | None = None) -> DataLoader:
    """The DataLoader the pipeline uses: per-worker handles, pinned batches, ``prefetch`` batches per worker.

    With ``starts`` (the row where each slide begins, then the total) no loader batch spans two slides.
    """
    sampler = aligned_batches(starts, batch_size) if starts is not None else None
    return DataLoader(
        dataset, batch_size=1 if sampler is not None else batch_size, batch_sampler=sampler, num_workers=num_workers,
        pin_memory=pin, shuffle=False, worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=False, prefetch_factor=prefetch if num_workers > 0 else None,
    )


def regroup(loader: DataLoader, device: torch.device, batch_size: int, starts: Sequence[int] = ()):
    """(uint8 batch on the device, ok flags) of ``batch_size`` rows (the last may be shorter).

    Loader batches are copied to the device as they come. A forward never spans two slides (rows in
    ``starts`` begin a new one): each slide is then embedded in the same forwards whatever batch of
    slides it is in, so its features are too.
    """
    breaks = {int(s) for s in starts}
    chunks, oks, n, row = [], [], 0, 0
    for batch, ok in loader:
        if chunks and row in breaks:
            yield (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), torch.cat(oks)
            chunks, oks, n = [], [], 0
        row += len(batch)
        chunks.append(batch.to(device, non_blocking=True))
        oks.append(ok)
        n += len(batch)
        if n >= batch_size:
            yield (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), torch.cat(oks)
            chunks, oks, n = [], [], 0
    if chunks:
        yield torch.cat(chunks), torch.cat(oks)


def _to_host(y: torch.Tensor, cuda: bool) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
    """An asynchronous copy of the forward's output into pinned host memory, and the event that ends it."""
    if not cuda:
        return y, None
    out = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
    out.copy_(y, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return out, event


def _finite_rows(model: torch.nn.Module, spec: EncoderSpec, feats: np.ndarray, x: torch.Tensor, amp, stats: RunStats,
                 where: Callable[[int], str], start: int) -> np.ndarray:
    """``feats`` with rows that overflowed under autocast recomputed in fp32; still non-finite raises."""
    bad = ~np.isfinite(feats).all(1)
    if bad.any() and amp is not None:  # fp16 overflow: recompute those rows in full precision
        idx = torch.from_numpy(np.flatnonzero(bad)).to(x.device)
        with torch.autocast(x.device.type, enabled=False):
            feats = feats.copy()
            feats[bad] = model(x[idx].float()).float().cpu().numpy()
        stats.fp32_retries += int(bad.sum())
        bad = ~np.isfinite(feats).all(1)
    if bad.any():
        raise ValueError(f"{where(start + int(np.flatnonzero(bad)[0]))}: encoder '{spec.name}' produced NaN/inf for "
                         f"{int(bad.sum())} patches (rows from {start}); check the weights file (features.weights)")
    return feats


def embed(
    model: torch.nn.Module,
    spec: EncoderSpec,
    loader: DataLoader,
    device: torch.device,
    sink: Callable[[int, np.ndarray, np.ndarray], None],
    precision: str | None = None,
    compile: bool = False,
    label: str | Callable[[int], str] = "",
    batch_size: int | None = None,
    starts: Sequence[int] = (),
    stain: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> RunStats:
    """Embed every batch of ``loader`` in order; ``sink(start_row, features (n, D) float32, ok (n,))``.

    Loader batches are regrouped on the device into forwards of ``batch_size`` rows (default: the
    loader's batch size), restarting at each row of ``starts`` (see ``regroup``).

    The forward of batch k is queued before batch k-1's outputs are waited for and handed to the
    sink, so the device never idles on the host's writes. ``stain`` (uint8 batch → uint8 batch, on the
    device) normalises colour before the encoder's own preprocessing. Rows that come out non-finite under
    autocast are recomputed in fp32; still non-finite raises (a broken model or weights file).
    """
    precision = precision or spec.precision
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision '{precision}' (features.precision) must be one of {sorted(AMP_DTYPES)}")
    cuda = device.type == "cuda"
    amp = AMP_DTYPES[precision] if cuda else None  # CPU runs fp32: deterministic and as fast on most CPUs
    channels_last = spec.is_cnn and cuda
    prep = Preprocess(spec, channels_last).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False) if compile else model
    batch_size = batch_size or loader.batch_size or 1
    where = label if callable(label) else (lambda _row: label)
    stats = RunStats()
    pending: tuple | None = None
    t0 = time.perf_counter()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            n = len(x)
            if compile and n < batch_size:  # one static shape: no recompile for the last batch
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            return forward(x)[:n].float()

    def finish(item: tuple) -> None:
        out, event, start, ok, x = item
        if event is not None:
            event.synchronize()
        sink(start, _finite_rows(model, spec, out.numpy(), x, amp, stats, where, start), ok)
        stats.flagged += int((~ok).sum())

    with torch.inference_mode():
        start = 0
        for batch, ok in regroup(loader, device, batch_size, starts):
            x = prep(batch if stain is None else stain(batch))
            out, event = _to_host(run(x), cuda)
            if pending is not None:
                finish(pending)
            pending = (out, event, start, ok.numpy().astype(bool), x)
            start += len(batch)
        if pending is not None:
            finish(pending)
    if cuda:
        torch.cuda.synchronize(device)
    stats.n, stats.seconds = start, time.perf_counter() - t0
    return stats
