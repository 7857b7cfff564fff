"""Colour (stain) normalisation of patches before the encoder, on the device that embeds them.

DSCA extracts its features from Macenko-normalised patches (CLAM's ``--color_norm``, torchstain).
The normaliser here wraps torchstain's own Macenko implementation (the torch backend, so it runs on
the GPU next to the encoder): every patch's stain vectors and concentrations are estimated and the
patch is re-rendered with a reference stain matrix and maximum concentrations (the *fit*). The fit
comes from a reference image (``features.color_norm_reference``) or is torchstain's default (the
reference values of Macenko et al., ISBI 2009), and it is stored in every features h5, so a reader
knows exactly what the encoder saw. A patch whose stain cannot be estimated (background, pen, too
few stained pixels) is embedded as read and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsikt.features.settings import STAIN_METHODS, check_color_norm

log = logging.getLogger("wsikt.features.stain")

METHODS = STAIN_METHODS
DEFAULT_REFERENCE = "torchstain default (Macenko et al., ISBI 2009)"


class MacenkoStain:
    """Macenko normalisation of uint8 (B, 3, H, W) patches on their device, with a fixed reference fit.

    ``io``, ``alpha`` and ``beta`` are torchstain's (transmitted light, angle percentile, optical
    density threshold), at torchstain's defaults unless given.
    """

    def __init__(self, reference: str | Path | None = None, io: float = 240.0, alpha: float = 1.0,
                 beta: float = 0.15) -> None:
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        self.io, self.alpha, self.beta = io, alpha, beta
        self._norm = TorchMacenkoNormalizer()
        self.reference = DEFAULT_REFERENCE
        if reference is not None:
            self._norm.fit(_read_reference(Path(reference)), Io=io, alpha=alpha, beta=beta)
            self.reference = str(reference)
        self.fallbacks = 0
        self._device: torch.device | None = None

    @property
    def he_ref(self) -> np.ndarray:
        """The reference stain matrix (3 × 2: optical density of haematoxylin and eosin per RGB channel)."""
        return self._norm.HERef.detach().cpu().numpy().astype(np.float64)

    @property
    def max_c_ref(self) -> np.ndarray:
        """The reference 99th-percentile concentrations of haematoxylin and eosin."""
        return self._norm.maxCRef.detach().cpu().numpy().astype(np.float64)

    def attrs(self) -> dict:
        """The fit, as features-h5 attributes."""
        return {"color_norm": "macenko", "color_norm_reference": self.reference, "color_norm_he_ref": self.he_ref,
                "color_norm_max_c_ref": self.max_c_ref,
                "color_norm_params": np.array([self.io, self.alpha, self.beta], np.float64)}

    def _on(self, device: torch.device) -> None:
        if self._device != device:
            self._norm.HERef = self._norm.HERef.to(device)
            self._norm.maxCRef = self._norm.maxCRef.to(device)
            self._device = device

    def normalise_one(self, patch: torch.Tensor) -> torch.Tensor | None:
        """One uint8 (3, H, W) patch normalised (uint8), or None when its stain cannot be estimated."""
        self._on(patch.device)
        try:
            out, _, _ = self._norm.normalize(patch, Io=self.io, alpha=self.alpha, beta=self.beta, stains=False)
        except (RuntimeError, IndexError, ValueError):  # no stained pixels: empty covariance or percentile
            return None
        if not torch.isfinite(out.float()).all():
            return None
        return out.clamp(0, 255).to(torch.uint8).permute(2, 0, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Every patch of a uint8 (B, 3, H, W) batch normalised; patches that cannot be are kept as read."""
        out = batch.clone()
        for i in range(len(batch)):
            norm = self.normalise_one(batch[i])
            if norm is None:
                self.fallbacks += 1
            else:
                out[i] = norm
        return out


def _read_reference(path: Path) -> torch.Tensor:
    """A reference image as a uint8 (3, H, W) tensor; a missing or unreadable file is named with the key to fix."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if image is None:
        raise ValueError(f"features.color_norm_reference: cannot read image '{path}'; give an RGB tile (PNG/JPEG/TIFF) "
                         "of well-stained tissue, or null for torchstain's default reference")
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)))


def build_stain(method: str, reference: str | None = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The normaliser a config names (``features.color_norm``), or None for ``none``."""
    check_color_norm(method, reference)
    return None if method == "none" else MacenkoStain(reference)
