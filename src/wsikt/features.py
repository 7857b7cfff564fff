"""Patch feature extraction at the speed of the model.

DataLoader workers each open their own OpenSlide handle once and read patches by coordinates (every
magnification of the patch h5 in one stream); batches travel as pinned uint8, are copied without
blocking, resized and normalised on the device and embedded under autocast at the encoder's
precision. Outputs are copied back asynchronously and written one batch behind the forward, so
reading, compute and writing overlap. One h5 per slide per encoder, written into a temporary file
and renamed at the end: a killed run leaves no file that looks complete.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import h5py
import numpy as np
import openslide
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from wsikt.encoders import EncoderSpec, build_encoder
from wsikt.io import atomic_path
from wsikt.slide import MissingMppError, SlideError, open_slide, read_region_rgb, slide_mpp

log = logging.getLogger("wsikt.features")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class PatchDataset(Dataset):
    """Patches of one slide by level-0 coords; each DataLoader worker opens its own slide handle once.

    ``level`` and ``read_size`` are one value or one per patch (several magnifications in one
    stream); every patch is returned at ``patch_size`` px as uint8 (3, H, W) with a readable flag.
    """

    def __init__(self, slide_path: str | Path, coords: np.ndarray, level: int | np.ndarray,
                 read_size: int | np.ndarray, patch_size: int):
        self.slide_path = str(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        n = len(self.coords)
        self.levels = np.broadcast_to(np.asarray(level, dtype=np.int64), (n,))
        self.read_sizes = np.broadcast_to(np.asarray(read_size, dtype=np.int64), (n,))
        self.patch_size = int(patch_size)
        self._slide: openslide.OpenSlide | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_slide"] = None  # a handle never crosses a process boundary
        return state

    def _read(self, x: int, y: int, level: int, size: int) -> np.ndarray:
        if self._slide is None:
            self._slide = open_slide(self.slide_path)
        return read_region_rgb(self._slide, x, y, level, size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        x, y = (int(v) for v in self.coords[i])
        level, size = int(self.levels[i]), int(self.read_sizes[i])
        try:
            rgb, ok = self._read(x, y, level, size), True
        except openslide.OpenSlideError:
            # OpenSlide errors are sticky: reopen the handle and retry once, then flag the tile.
            self._slide = None
            try:
                rgb, ok = self._read(x, y, level, size), True
            except (openslide.OpenSlideError, SlideError):
                self._slide = None
                rgb, ok = np.full((size, size, 3), 255, np.uint8), False
        if rgb.shape[0] != self.patch_size:
            rgb = cv2.resize(rgb, (self.patch_size, self.patch_size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(rgb).permute(2, 0, 1), ok


def _worker_init(_: int) -> None:
    """One torch thread per worker (workers are the parallelism) and a fresh slide handle.

    OpenCV's thread count is left alone: cv2.setNumThreads in a forked child whose parent already
    used OpenCV's pthreads pool deadlocks (cv2 5.0); cv2.resize itself is fork-safe.
    """
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None:
        info.dataset._slide = None


# ------------------------------------------------------------------------------------ patch h5


@dataclass
class Magnification:
    """One magnification of a patch h5: its coords (with attrs) and how to read them."""

    name: str
    coords: np.ndarray
    attrs: dict
    level: int
    read_size: int
    target_size: int
    parents: dict[str, np.ndarray] = field(default_factory=dict)  # 'parent_<coarse>' → row indices


def read_geometry(attrs: dict, source: str) -> tuple[int, int, int]:
    """(level, pixels read at level, pixels the encoder sees) from a patch h5's coords attrs.

    wsikt writes read_level/read_size/target_patch_size; a CLAM h5 has only patch_level and
    patch_size (read at patch_level, no resize), which is used as is.
    """
    try:
        level = int(attrs["read_level"] if "read_level" in attrs else attrs["patch_level"])
        read_size = int(attrs["read_size"] if "read_size" in attrs else attrs["patch_size"])
    except KeyError:
        raise ValueError(f"{source}: coords lack patch_level/patch_size attrs; re-run patching or add them") from None
    return level, read_size, int(attrs.get("target_patch_size", read_size))


def mag_name(mpp: float) -> str:
    """'20x' for 0.5 µm/px, '10x' for 1.0, '5x' for 2.0 (the patch h5 contract)."""
    return f"{10 / mpp:g}x" if np.isfinite(mpp) and mpp > 0 else "primary"


def read_patch_h5(path: str | Path) -> tuple[list[Magnification], list[str]]:
    """Every magnification of a patch h5 (primary first) and all names in the file's order (fine → coarse).

    A file without ``mags`` (CLAM's own, or older wsikt) is one magnification: its top-level coords.
    """
    mags: list[Magnification] = []
    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise ValueError(f"{path}: no 'coords' dataset; not a patch h5 (run preprocessing first)")
        if "mags" not in f:
            attrs = dict(f["coords"].attrs)
            mpp = float(attrs.get("target_mpp", math.nan))
            mags.append(Magnification(mag_name(mpp), f["coords"][:], attrs, *read_geometry(attrs, str(path))))
            return mags, [mags[0].name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("magnifications", list(f["mags"]))]
        primary = f.attrs.get("primary", names[0])
        primary = primary.decode() if isinstance(primary, bytes) else str(primary)
        if primary not in names:
            raise ValueError(f"{path}: primary magnification '{primary}' not among {names}")
        for name in [primary] + [n for n in names if n != primary]:
            g = f["mags"][name]
            attrs = dict(g["coords"].attrs)
            parents = {k: g[k][:] for k in g if k.startswith("parent_")}
            mags.append(Magnification(name, g["coords"][:], attrs, *read_geometry(attrs, f"{path}:mags/{name}"), parents))
        if not np.array_equal(mags[0].coords, f["coords"][:]):
            raise ValueError(f"{path}: top-level coords differ from mags/{primary}/coords; re-run preprocessing")
    return mags, names


def _patch_mpp(slide_path: str | Path, attrs: dict, level: int, read_size: int, target_size: int) -> float:
    """µm/px of what the encoder saw: recorded by wsikt's patcher, else derived from the slide (CLAM h5)."""
    if "target_mpp" in attrs:
        return float(attrs["target_mpp"])
    slide = open_slide(slide_path)
    try:
        return slide_mpp(slide, name=str(slide_path)) * float(slide.level_downsamples[level]) * read_size / target_size
    except MissingMppError:
        log.warning("%s: no mpp metadata; features attr 'mpp' is NaN", slide_path)
        return float("nan")
    finally:
        slide.close()


# ------------------------------------------------------------------------------------- the engine


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool, prefetch: int = 2) -> DataLoader:
    """The DataLoader the pipeline uses: per-worker handles, pinned batches, ``prefetch`` batches per worker."""
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin, shuffle=False,
        worker_init_fn=_worker_init if num_workers > 0 else None, persistent_workers=False,
        prefetch_factor=prefetch if num_workers > 0 else None,
    )


def embed(
    model: torch.nn.Module,
    spec: EncoderSpec,
    loader: DataLoader,
    device: torch.device,
    sink: Callable[[int, np.ndarray, np.ndarray], None],
    precision: str | None = None,
    compile: bool = False,
    label: str = "",
    batch_size: int | None = None,
) -> RunStats:
    """Embed every batch of ``loader`` in order; ``sink(start_row, features (n, D) float32, ok (n,))``.

    Loader batches are copied to the device as they come and regrouped there into forwards of
    ``batch_size`` rows (default: the loader's batch size).

    The forward of batch k is queued before batch k-1's outputs are waited for and handed to the
    sink, so the device never idles on the host's writes. Rows that come out non-finite under
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
        feats = out.numpy()
        bad = ~np.isfinite(feats).all(1)
        if bad.any() and amp is not None:  # fp16 overflow: recompute those rows in full precision
            idx = torch.from_numpy(np.flatnonzero(bad)).to(device)
            with torch.autocast(device.type, enabled=False):
                feats = feats.copy()
                feats[bad] = model(x[idx].float()).float().cpu().numpy()
            stats.fp32_retries += int(bad.sum())
            bad = ~np.isfinite(feats).all(1)
        if bad.any():
            raise ValueError(f"{label}: encoder '{spec.name}' produced NaN/inf for {int(bad.sum())} patches "
                             f"(rows from {start}); check the weights file (features.weights)")
        sink(start, feats, ok)
        stats.flagged += int((~ok).sum())

    def regrouped():
        """(uint8 batch on the device, ok flags) of ``batch_size`` rows (the last may be shorter)."""
        chunks, oks, n = [], [], 0
        for batch, ok in loader:
            chunks.append(batch.to(device, non_blocking=True))
            oks.append(ok)
            n += len(batch)
            if n >= batch_size:
                yield (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), torch.cat(oks)
                chunks, oks, n = [], [], 0
        if chunks:
            yield torch.cat(chunks), torch.cat(oks)

    with torch.inference_mode():
        start = 0
        for batch, ok in regrouped():
            x = prep(batch)
            y = run(x)
            if cuda:
                out = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
                out.copy_(y, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                out, event = y, None
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


# -------------------------------------------------------------------------------- slide → h5


def _remove_stale_partials(out_h5: Path) -> None:
    """Temporary files left by a killed earlier run of this output (atomic_path's naming)."""
    for stale in out_h5.parent.glob(f".{out_h5.name}.*.partial"):
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def extract_features(
    slide_path: str | Path,
    patches_h5: str | Path,
    out_h5: str | Path,
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
) -> int:
    """Embed every patch of every magnification of ``patches_h5`` with ``encoder``; write one h5 atomically.

    Layout: ``features`` (N, D) float32, ``coords`` (attrs copied) and ``flagged`` (N,) for the
    primary magnification; ``mags/<name>/{features,coords,flagged,parent_*}`` for each magnification
    when the patch h5 has ``mags`` (the primary's features are hard links, not copies); root attrs
    encoder, dim, mpp, weights_hash, magnifications, primary, precision. Returns the primary's N.
    ``encoder_model`` is a ``build_encoder`` result to reuse across slides (``encoder`` is then ignored).
    """
    out_h5 = Path(out_h5)
    mags, names = read_patch_h5(patches_h5)
    has_mags = len(mags) > 1 or _has_mags(patches_h5)
    dev = resolve_device(device)
    model, spec, whash = encoder_model or build_encoder(encoder, weights, allow_hub, device=dev)
    patch_size = mags[0].target_size
    coords = np.concatenate([m.coords for m in mags]) if mags else np.zeros((0, 2), np.int64)
    dataset = PatchDataset(
        slide_path, coords, np.concatenate([np.full(len(m.coords), m.level) for m in mags]),
        np.concatenate([np.full(len(m.coords), m.read_size) for m in mags]), patch_size,
    )
    offsets = np.cumsum([0] + [len(m.coords) for m in mags])
    mpps = [_patch_mpp(slide_path, m.attrs, m.level, m.read_size, m.target_size) for m in mags]
    _remove_stale_partials(out_h5)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as f:
        feats, flags = [], []
        for i, m in enumerate(mags):
            g = f if i == 0 else f.require_group(f"mags/{m.name}")
            feats.append(g.create_dataset("features", shape=(len(m.coords), spec.dim), dtype=np.float32))
            flags.append(g.create_dataset("flagged", shape=(len(m.coords),), dtype=bool))

        def sink(start: int, values: np.ndarray, ok: np.ndarray) -> None:
            end = start + len(values)
            for i in range(len(mags)):  # a batch may span two magnifications
                lo, hi = max(start, offsets[i]), min(end, offsets[i + 1])
                if lo < hi:
                    feats[i][lo - offsets[i]:hi - offsets[i]] = values[lo - start:hi - start]
                    flags[i][lo - offsets[i]:hi - offsets[i]] = ~ok[lo - start:hi - start]

        chunk = loader_chunk(batch_size, num_workers)
        loader = make_loader(dataset, chunk, num_workers, pin=dev.type == "cuda", prefetch=prefetch * batch_size // chunk)
        stats = embed(model, spec, loader, dev, sink, precision, compile, label=str(slide_path), batch_size=batch_size)
        _write_coords(f, "coords", mags[0])
        if has_mags:
            for i, m in enumerate(mags):
                g = f.require_group(f"mags/{m.name}")
                if i == 0:
                    g["features"], g["flagged"] = f["features"], f["flagged"]  # hard links: stored once
                _write_coords(g, "coords", m)
                for key, parent in m.parents.items():
                    g.create_dataset(key, data=parent)
                g.attrs["mpp"] = mpps[i]
        f.attrs.update(
            encoder=spec.name, dim=spec.dim, mpp=mpps[0], weights_hash=whash, primary=mags[0].name,
            magnifications=names, precision=_used_precision(spec, precision, dev),
        )
    if stats.flagged:
        log.warning("%s: %d unreadable tiles flagged (dataset 'flagged')", slide_path, stats.flagged)
    if stats.fp32_retries:
        log.warning("%s: %d patches overflowed under %s and were recomputed in fp32", slide_path,
                    stats.fp32_retries, precision or spec.precision)
    log.info("%s: %d patches (%s) → %s (%s, dim %d, %s): %.1f tiles/s", Path(slide_path).stem, stats.n,
             ", ".join(f"{m.name}: {len(m.coords)}" for m in mags), out_h5, spec.name, spec.dim, dev, stats.tiles_per_s)
    return len(mags[0].coords)


def _has_mags(path: str | Path) -> bool:
    with h5py.File(path, "r") as f:
        return "mags" in f


def _used_precision(spec: EncoderSpec, precision: str | None, device: torch.device) -> str:
    return (precision or spec.precision) if device.type == "cuda" else "fp32"


def _write_coords(group: h5py.Group, key: str, mag: Magnification) -> None:
    d = group.create_dataset(key, data=mag.coords)
    for k, v in mag.attrs.items():
        d.attrs[k] = v


def load_features(path: str | Path, magnification: str | None = None) -> np.ndarray:
    """The (N, D) feature matrix of one slide's h5 (the primary magnification unless named)."""
    with h5py.File(path, "r") as f:
        if magnification is None:
            return f["features"][:]
        if "mags" not in f or magnification not in f["mags"]:
            have = list(f["mags"]) if "mags" in f else [f.attrs.get("primary", "primary")]
            raise KeyError(f"{path}: no magnification '{magnification}' (has {have})")
        return f["mags"][magnification]["features"][:]
