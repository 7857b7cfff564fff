"""Encoder registry: one small spec per model (its facts) and one factory from a config name.

Adding a model means adding one ``EncoderSpec`` here; the pipeline never changes. Every entry loads
its weights through one path: a local file (config key ``features.weights``) first, then the Hugging
Face hub only when ``features.hub`` is true; the architecture is built on the meta device and the
checkpoint tensors are assigned into it, so a 1.1 B-parameter model needs its weights' memory once.
Architectures and kwargs follow TRIDENT's ``patch_encoder_models/load.py`` and the model cards.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("wsikt.features.encoders")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
# Prefixes training frameworks put in front of every key (DDP, Lightning, HF task heads, torch.compile).
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "vit.", "backbone.", "trunk.", "base_model.")
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")


@dataclass(frozen=True)
class EncoderSpec:
    """Facts about a patch encoder (as TRIDENT and the model cards state them) and how to build it."""

    name: str
    dim: int
    input_size: int  # pixels the network sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float  # microns per pixel the model was trained at
    patch_size: int  # patch side in pixels at ``mpp``, before the resize to ``input_size``
    precision: str  # 'fp32', 'bf16' or 'fp16' under autocast on GPU
    weights: str  # where the weights come from, for users
    build: Callable[[], nn.Module] = field(repr=False, compare=False)  # architecture, random init
    arch: str = ""  # timm architecture (or a description)
    hf_repo: str | None = None  # Hugging Face repo holding the weights
    gated: bool = False  # the repo asks users to request access first
    is_cnn: bool = False
    needs_weights: bool = True  # False only for encoders defined by their code (the demo encoder)
    crop: float = 1.0  # centre-crop fraction of the patch before the resize (GigaPath: 224/256)
    interpolation: str = "bilinear"  # resize filter of the model's eval transform
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False, compare=False
    )  # checkpoint layout → this module's keys (e.g. Hugging Face ViT → timm)
    ignore: tuple[str, ...] = ()  # checkpoint key prefixes that are not part of the encoder (heads)

    @property
    def url(self) -> str:
        """The model page, where gated access is requested."""
        return f"https://huggingface.co/{self.hf_repo}" if self.hf_repo else ""


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


# ------------------------------------------------------------------------------------ architectures


class ResNet50Trunk(nn.Module):
    """ImageNet ResNet-50 truncated after layer3 + global average pool → 1024-d (CLAM's/TRIDENT's resnet50)."""

    TIMM_NAME = "resnet50.tv_in1k"

    def __init__(self) -> None:
        super().__init__()
        import timm  # optional extra 'encoders'

        self.net = timm.create_model(self.TIMM_NAME, pretrained=False)
        self.net.layer4 = nn.Identity()  # unused by the trunk: not loaded, not hashed, not on the GPU
        self.net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.act1(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class TimmViT(nn.Module):
    """A timm ViT in ``self.net`` with its pooling: 'token' (the model's own head-less output) or
    'cls_mean' (class token ⊕ mean of the patch tokens after ``skip`` prefix tokens: Virchow2)."""

    def __init__(self, arch: str, pool: str = "token", skip: int = 1, **kwargs) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(arch, pretrained=False, **kwargs)
        self.pool, self.skip = pool, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.pool == "cls_mean":  # global_pool='' → (B, tokens, D)
            return torch.cat([out[:, 0], out[:, self.skip:].mean(1)], dim=-1)
        return out


def _uni_v1() -> nn.Module:
    return TimmViT("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                   dynamic_img_size=True)


def _uni_v2() -> nn.Module:
    from timm.layers import SwiGLUPacked

    return TimmViT(
        "vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
        embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU, reg_tokens=8, dynamic_img_size=True,
    )


def _phikon() -> nn.Module:
    # Hugging Face ViTModel (owkin/phikon): ViT-B/16, LayerNorm eps 1e-12, output = CLS after the final norm.
    return TimmViT("vit_base_patch16_224", img_size=224, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-12))


def _phikon_v2() -> nn.Module:
    # Hugging Face Dinov2Model (owkin/phikon-v2): ViT-L/16 with LayerScale; output = CLS after the final norm.
    return TimmViT("vit_large_patch16_224", img_size=224, num_classes=0, init_values=1e-5)


def _virchow2() -> nn.Module:
    from timm.layers import SwiGLUPacked

    return TimmViT(
        "vit_huge_patch14_224", pool="cls_mean", skip=5, img_size=224, init_values=1e-5, num_classes=0,
        reg_tokens=4, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
    )


def _hoptimus0() -> nn.Module:
    return TimmViT("vit_giant_patch14_reg4_dinov2", img_size=224, num_classes=0, global_pool="token",
                   init_values=1e-5, dynamic_img_size=False)


def _gigapath() -> nn.Module:
    # prov-gigapath's hub config: timm's ViT-g/14 DINOv2 class with 16-px patches.
    return TimmViT(
        "vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
        num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0,
    )


# ------------------------------------------------------------------------- checkpoint key mapping

_HF_VIT_RULES = [  # (Hugging Face ViTModel / Dinov2Model key, timm VisionTransformer key)
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.(?:layernorm_before|norm1)\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.(?:layernorm_after|norm2)\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale1\.lambda1", r"blocks.\1.ls1.gamma"),
    (r"encoder\.layer\.(\d+)\.layer_scale2\.lambda1", r"blocks.\1.ls2.gamma"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)")
_QKV_NAME = {"q": "query", "k": "key", "v": "value"}
_HF_DROP = re.compile(r"(embeddings\.mask_token|pooler\..*)")


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ViTModel/Dinov2Model state dict onto timm's VisionTransformer keys.

    q, k and v are concatenated into timm's fused ``qkv``; the pooler and mask token are dropped.
    Both the hub files' layout and transformers 5's in-memory names (``layers.N.attention.q_proj``)
    are read. A state dict already in timm's layout passes through unchanged.
    """
    if not any(k.startswith(("embeddings.", "encoder.layer.", "layers.")) for k in state):
        return state
    state = {re.sub(r"^layers\.", "encoder.layer.", k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _HF_DROP.fullmatch(key):
            continue
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m[1], m[4]), {})[m[2] or _QKV_NAME[m[3]]] = value
            continue
        for pattern, repl in _HF_VIT_RULES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            out[key] = value  # left as is: the loader names it as unexpected
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {layer}: attention {kind} lacks one of query/key/value ({sorted(parts)})")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes ('module.', 'model.', ...) that every key shares."""
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


# ------------------------------------------------------------------------------------- the registry


def _spec(name: str, dim: int, build: Callable[[], nn.Module], arch: str, repo: str, gated: bool,
          precision: str, **kw) -> EncoderSpec:
    how = f"{repo} on the Hugging Face hub{' (gated: request access on its page)' if gated else ''}"
    defaults = dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, mpp=0.5, patch_size=256)
    return EncoderSpec(name=name, dim=dim, build=build, arch=arch, hf_repo=repo, gated=gated,
                       precision=precision, weights=f"features.weights or {how}", **{**defaults, **kw})


REGISTRY: dict[str, EncoderSpec] = {
    "demo": EncoderSpec(
        name="demo", dim=64, input_size=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=0.5,
        patch_size=256, precision="fp32", weights="none: fixed filters from seed 0",
        build=DemoEncoder, arch="wsikt DemoEncoder (stain statistics + seeded filters)", needs_weights=False,
    ),
    "resnet50": _spec("resnet50", 1024, ResNet50Trunk, "resnet50.tv_in1k (to layer3 + avg pool)",
                      "timm/resnet50.tv_in1k", False, "fp16", is_cnn=True, ignore=("fc.", "layer4.")),
    "uni_v1": _spec("uni_v1", 1024, _uni_v1, "vit_large_patch16_224", "MahmoodLab/UNI", True, "fp16"),
    "uni_v2": _spec("uni_v2", 1536, _uni_v2, "vit_giant_patch14_224 (UNI2-h kwargs)", "MahmoodLab/UNI2-h",
                    True, "bf16"),
    "phikon": _spec("phikon", 768, _phikon, "vit_base_patch16_224 (from HF ViTModel)", "owkin/phikon",
                    False, "fp32", convert=hf_vit_to_timm),
    "phikon_v2": _spec("phikon_v2", 1024, _phikon_v2, "vit_large_patch16_224 (from HF Dinov2Model)",
                       "owkin/phikon-v2", False, "fp32", convert=hf_vit_to_timm),
    "virchow2": _spec("virchow2", 2560, _virchow2, "vit_huge_patch14_224 (Virchow2 kwargs), CLS ⊕ mean patch",
                      "paige-ai/Virchow2", True, "fp16", interpolation="bicubic"),
    "hoptimus0": _spec("hoptimus0", 1536, _hoptimus0, "vit_giant_patch14_reg4_dinov2", "bioptimus/H-optimus-0",
                       True, "fp16", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD),
    "gigapath": _spec("gigapath", 1536, _gigapath, "vit_giant_patch14_dinov2 (16-px patches)",
                      "prov-gigapath/prov-gigapath", True, "fp16", crop=224 / 256, interpolation="bicubic"),
}


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``, or a clear error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown encoder '{name}' (config key features.encoder); known: {', '.join(sorted(REGISTRY))}"
        ) from None


# ---------------------------------------------------------------------------------------- loading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, a torch checkpoint (plain or under 'state_dict'/'model')
    or a downloaded model directory; shared wrapper prefixes are stripped."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: encoder weights not found (config key features.weights)")
    if p.is_dir():
        found = [p / n for n in CHECKPOINT_NAMES if (p / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(CHECKPOINT_NAMES)} in this directory (features.weights)")
        p = found[0]
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(p))
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch format cannot be memory-mapped
            obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors (config key features.weights)")
    return strip_prefixes(dict(obj))


def _hub_state_dict(spec: EncoderSpec) -> tuple[dict[str, torch.Tensor], str]:
    """Download the checkpoint of ``spec`` from the Hugging Face hub (cached by huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, GatedRepoError
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        raise ValueError(f"encoder '{spec.name}': features.hub needs the huggingface_hub package") from None
    for filename in CHECKPOINT_NAMES:
        try:
            path = hf_hub_download(spec.hf_repo, filename)
        except EntryNotFoundError:
            continue
        except GatedRepoError:
            raise ValueError(
                f"encoder '{spec.name}': {spec.hf_repo} is gated; request access at {spec.url}, then log in "
                "(huggingface-cli login or HF_TOKEN) or download it and set features.weights"
            ) from None
        except Exception as exc:  # network down, proxy, no DNS on a compute node
            raise ValueError(
                f"encoder '{spec.name}': could not download from {spec.url} ({type(exc).__name__}: {exc}); "
                "download it on a machine with internet and set features.weights to the file"
            ) from exc
        return read_state_dict(path), f"hf://{spec.hf_repo}/{filename}"
    raise ValueError(f"encoder '{spec.name}': {spec.url} has none of {CHECKPOINT_NAMES}; set features.weights")


def _missing_weights_error(spec: EncoderSpec) -> ValueError:
    """One line: which config keys, which file, and how to get gated access."""
    access = f"; it is gated: request access at {spec.url} and log in (huggingface-cli login)" if spec.gated else ""
    return ValueError(
        f"encoder '{spec.name}' needs weights: set features.weights to a local copy of {spec.hf_repo}'s "
        f"checkpoint (.safetensors, .bin/.pth state dict or its directory), or features.hub: true on a "
        f"machine with internet{access}"
    )


def load_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], spec: EncoderSpec, source: str) -> None:
    """Assign ``state`` into ``model``'s inner ``net`` (possibly on the meta device), checking every key.

    A wrong shape names the key, its shape and the expected shape; missing or unexpected keys are
    listed. Tensors are assigned, not copied, so a model built on the meta device never allocates twice.
    """
    net = model.net
    if spec.convert is not None:
        state = spec.convert(state)
    state = {k: v for k, v in state.items() if not k.startswith(spec.ignore or ("\0",))}
    own = net.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = _resample_pos_embed(state["pos_embed"], own["pos_embed"], net, source)
    what = f"this checkpoint is not a {spec.name} ({spec.arch}) checkpoint"
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{source}: weight '{key}' has shape {tuple(value.shape)}, {spec.name} expects "
                f"{tuple(own[key].shape)}; {what}"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{source}: {len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); {what}"
        )
    net.load_state_dict(state, strict=True, assign=True)
    model.float()
    meta = [n for n, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise RuntimeError(f"encoder '{spec.name}': tensors left unset after loading: {meta[:3]}")


def _resample_pos_embed(pos: torch.Tensor, own: torch.Tensor, net: nn.Module, source: str) -> torch.Tensor:
    """Resize a square position-embedding grid (e.g. a 518-px DINOv2 checkpoint) to the model's grid."""
    from timm.layers import resample_abs_pos_embed

    n_prefix = 0 if getattr(net, "no_embed_class", False) else getattr(net, "num_prefix_tokens", 1)
    old = int(math.isqrt(pos.shape[1] - n_prefix))
    new = int(math.isqrt(own.shape[1] - n_prefix))
    if old * old + n_prefix != pos.shape[1] or new * new + n_prefix != own.shape[1] or pos.shape[2] != own.shape[2]:
        return pos  # not a square grid of the same width: the shape check names it
    log.warning("%s: resampling position embeddings from a %dx%d to a %dx%d grid", source, old, old, new, new)
    return resample_abs_pos_embed(pos.float(), (new, new), (old, old), num_prefix_tokens=n_prefix)


def build_encoder(
    name: str, weights: str | None = None, allow_hub: bool = False, device: str | torch.device = "cpu"
) -> tuple[nn.Module, EncoderSpec, str]:
    """Build the encoder in eval mode on ``device``; check its output dim with a dummy forward; return a weights hash.

    Weights come from ``weights`` (a local file, config key features.weights) first, then the hub only
    when ``allow_hub`` (features.hub); otherwise the error says how to get them.
    """
    spec = get_encoder_spec(name)
    if not spec.needs_weights:
        model = spec.build()
    else:
        if weights:
            state, source = read_state_dict(weights), str(weights)
        elif allow_hub and spec.hf_repo:
            state, source = _hub_state_dict(spec)
        else:
            raise _missing_weights_error(spec)
        with torch.device("meta"):
            model = spec.build()
        load_checkpoint(model, state, spec, source)
        del state
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        out = model(torch.rand(1, 3, spec.input_size, spec.input_size, device=device))
    if out.shape != (1, spec.dim):
        raise ValueError(f"encoder '{name}' produced shape {tuple(out.shape)}, expected (1, {spec.dim})")
    if not torch.isfinite(out).all():
        raise ValueError(f"encoder '{name}': the check forward gave NaN/inf; the weights file may be corrupt")
    return model, spec, weights_hash(model)


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex) over parameters and buffers, to tie features to the exact weights."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()[:16]
