"""Encoder registry: one small spec per model (its facts) and one factory from a config name.

Adding a model means adding one ``EncoderSpec`` here; the pipeline never changes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """Facts about a patch encoder, as TRIDENT states them."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float  # microns per pixel the model was trained at
    patch_size: int  # patch side in pixels at ``mpp``
    precision: str  # 'fp32', 'bf16' or 'fp16' under autocast on GPU
    weights: str  # where the weights come from, for users
    build: Callable[..., nn.Module] = field(repr=False, compare=False)
    is_cnn: bool = False
    needs_weights: bool = True  # False only for encoders defined by their code (the demo encoder)


class DemoEncoder(nn.Module):
    """A CPU-fast fixed encoder for the demo: stain, darkness and blob statistics plus seeded random filters.

    It needs no downloaded weights: every parameter is a fixed buffer derived from a seed, so the
    same name always gives the same features. Output dim 64; inputs are RGB in [0, 1].
    """

    # Ruifrok & Johnston H&E-DAB optical-density vectors.
    _STAINS = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])

    def __init__(self, seed: int = 0, n_random: int = 46) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        stains = self._STAINS / self._STAINS.norm(dim=1, keepdim=True)
        self.register_buffer("unmix", torch.linalg.inv(stains))
        self.register_buffer("random_filters", torch.randn(n_random, 3, 7, 7, generator=gen) / math.sqrt(3 * 49))
        self.register_buffer("random_bias", torch.randn(n_random, generator=gen) * 0.1)
        for sigma in (1.5, 3.0, 6.0):
            self.register_buffer(f"gauss_{str(sigma).replace('.', '_')}", _gauss_1d(sigma))
        self.dim = 18 + n_random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x.float(), 2)
        od = -torch.log(x.clamp(1.0 / 255.0, 1.0))
        conc = torch.einsum("bchw,cd->bdhw", od, self.unmix)
        hema, eosin = conc[:, 0:1], conc[:, 1:2]
        dark = od.mean(1, keepdim=True)
        feats = [
            x.mean((2, 3)), x.std((2, 3)),
            hema.mean((2, 3)), eosin.mean((2, 3)), hema.std((2, 3)), eosin.std((2, 3)),
        ]
        for t in (0.6, 0.9, 1.2):
            feats.append(10.0 * (dark > t).float().mean((2, 3)))
        blur = {s: _blur(dark, k) for s, k in (("1.5", self.gauss_1_5), ("3", self.gauss_3_0), ("6", self.gauss_6_0))}
        for fine, coarse in (("1.5", "3"), ("3", "6")):  # difference of Gaussians: nucleus-sized blobs
            resp = blur[fine] - blur[coarse]
            feats.append(10.0 * resp.clamp(min=0).mean((2, 3)))
            feats.append(resp.flatten(1).quantile(0.99, dim=1, keepdim=True))
        feats.append(10.0 * (hema > 0.8).float().mean((2, 3)))
        rnd = F.relu(F.conv2d(od, self.random_filters, self.random_bias, stride=2, padding=3))
        feats.append(rnd.mean((2, 3)))
        return torch.cat(feats, dim=1)


def _gauss_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel of radius 3σ."""
    half = int(math.ceil(3 * sigma))
    ax = torch.arange(-half, half + 1, dtype=torch.float32)
    g = torch.exp(-(ax**2) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of a (B, 1, H, W) map with reflect padding."""
    pad = kernel.numel() // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))


class ResNet50Trunk(nn.Module):
    """ImageNet ResNet-50 truncated after layer3 + global average pool → 1024-d (CLAM's/TRIDENT's resnet50)."""

    TIMM_NAME = "resnet50.tv_in1k"

    def __init__(self, pretrained_hub: bool = False) -> None:
        super().__init__()
        import timm  # optional extra 'encoders'

        net = timm.create_model(self.TIMM_NAME, pretrained=pretrained_hub)
        self.net = net

    def load_full_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a full ResNet-50 checkpoint (fc included or not); shape mismatches name the key."""
        own = self.net.state_dict()
        for key, value in state.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"{source}: weight '{key}' has shape {tuple(value.shape)}, resnet50 expects "
                    f"{tuple(own[key].shape)}; this checkpoint is not a ResNet-50"
                )
        missing = [k for k in own if k not in state and not k.startswith("fc.")]
        if missing:
            raise ValueError(f"{source}: {len(missing)} ResNet-50 weights missing (e.g. '{missing[0]}'); not a ResNet-50 checkpoint")
        self.net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.act1(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch checkpoint (plain or under 'state_dict'/'model')."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: encoder weights not found (config key features.weights)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict (config key features.weights)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _build_resnet50(weights: str | None = None, allow_hub: bool = False) -> nn.Module:
    if weights:
        model = ResNet50Trunk(pretrained_hub=False)
        model.load_full_state_dict(read_state_dict(weights), weights)
        return model
    if allow_hub:
        return ResNet50Trunk(pretrained_hub=True)
    raise ValueError(
        "encoder 'resnet50' needs ImageNet weights: set features.weights to a local .safetensors/.pth of "
        f"timm's {ResNet50Trunk.TIMM_NAME}, or features.hub: true on a machine with internet"
    )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REGISTRY: dict[str, EncoderSpec] = {
    "demo": EncoderSpec(
        name="demo", dim=64, input_size=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=0.5,
        patch_size=256, precision="fp32", weights="none: fixed filters from seed 0",
        build=lambda weights=None, allow_hub=False: DemoEncoder(), needs_weights=False,
    ),
    "resnet50": EncoderSpec(
        name="resnet50", dim=1024, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, mpp=0.5,
        patch_size=256, precision="fp16", weights=f"timm {ResNet50Trunk.TIMM_NAME} (local file or hub)",
        build=_build_resnet50, is_cnn=True,
    ),
}


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``, or a clear error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown encoder '{name}' (config key features.encoder); known: {', '.join(sorted(REGISTRY))}"
        ) from None


def build_encoder(name: str, weights: str | None = None, allow_hub: bool = False) -> tuple[nn.Module, EncoderSpec, str]:
    """Build the encoder in eval mode; check its output dim with a dummy forward; return a weights hash.

    Weights come from ``weights`` (a local file) first, then the hub only when ``allow_hub``.
    """
    spec = get_encoder_spec(name)
    model = spec.build(weights=weights, allow_hub=allow_hub).eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, spec.input_size, spec.input_size))
    if out.shape != (1, spec.dim):
        raise ValueError(f"encoder '{name}' produced shape {tuple(out.shape)}, expected (1, {spec.dim})")
    return model, spec, weights_hash(model)


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex) over parameters and buffers, to tie features to the exact weights."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
