"""Patch feature extraction: a DataLoader reads patches by coordinates, the encoder embeds them."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import h5py
import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsikt.encoders import build_encoder
from wsikt.io import atomic_path
from wsikt.slide import MissingMppError, SlideError, open_slide, read_region_rgb, slide_mpp

log = logging.getLogger("wsikt.features")


class PatchDataset(Dataset):
    """Patches of one slide by level-0 coords; each DataLoader worker opens its own slide handle once."""

    def __init__(self, slide_path: str | Path, coords: np.ndarray, level: int, read_size: int, patch_size: int):
        self.slide_path = str(slide_path)
        self.coords = coords
        self.level, self.read_size, self.patch_size = level, read_size, patch_size
        self._slide: openslide.OpenSlide | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def _read(self, x: int, y: int) -> np.ndarray:
        if self._slide is None:
            self._slide = open_slide(self.slide_path)
        return read_region_rgb(self._slide, x, y, self.level, self.read_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        x, y = (int(v) for v in self.coords[i])
        try:
            rgb = self._read(x, y)
            ok = True
        except openslide.OpenSlideError:
            # OpenSlide errors are sticky: reopen the handle and retry once, then flag the tile.
            self._slide = None
            try:
                rgb = self._read(x, y)
                ok = True
            except (openslide.OpenSlideError, SlideError):
                self._slide = None
                rgb = np.full((self.read_size, self.read_size, 3), 255, np.uint8)
                ok = False
        if rgb.shape[0] != self.patch_size:
            rgb = cv2.resize(rgb, (self.patch_size, self.patch_size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(rgb).permute(2, 0, 1), ok


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


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
) -> int:
    """Embed every patch of ``patches_h5`` with ``encoder``; write features and coords atomically."""
    with h5py.File(patches_h5, "r") as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    dev = resolve_device(device)
    model, spec, whash = build_encoder(encoder, weights, allow_hub)
    model = model.to(dev)
    if spec.is_cnn and dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    level, read_size, target_size = read_geometry(attrs, str(patches_h5))
    dataset = PatchDataset(slide_path, coords, level, read_size, target_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
    )
    mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
    feats = np.zeros((len(coords), spec.dim), np.float32)
    flagged = np.zeros(len(coords), bool)
    start = 0
    with torch.inference_mode():
        for batch, ok in tqdm(loader, desc=Path(slide_path).stem, mininterval=5, disable=len(coords) == 0):
            x = batch.to(dev, non_blocking=True).float().div_(255.0)
            if x.shape[-1] != spec.input_size:
                x = torch.nn.functional.interpolate(x, size=spec.input_size, mode="bilinear", antialias=True)
            x = (x - mean) / std
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None and dev.type == "cuda"):
                out = model(x)
            n = len(batch)
            feats[start:start + n] = out.float().cpu().numpy()
            flagged[start:start + n] = ~ok.numpy()
            start += n
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(1).sum())
        raise ValueError(f"{slide_path}: encoder '{encoder}' produced NaN/inf for {bad} patches")
    if flagged.any():
        log.warning("%s: %d unreadable tiles flagged (dataset 'flagged')", slide_path, int(flagged.sum()))
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            c = f.create_dataset("coords", data=coords)
            for k, v in attrs.items():
                c.attrs[k] = v
            f.create_dataset("flagged", data=flagged)
            f.attrs.update(encoder=spec.name, dim=spec.dim, mpp=_patch_mpp(slide_path, attrs, level, read_size, target_size), weights_hash=whash)
    log.info("%s: %d patches → %s (%s, dim %d, %s)", Path(slide_path).stem, len(coords), out_h5, encoder, spec.dim, dev)
    return len(coords)


def load_features(path: str | Path) -> np.ndarray:
    """The (N, D) feature matrix of one slide's h5."""
    with h5py.File(path, "r") as f:
        return f["features"][:]
