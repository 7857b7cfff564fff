"""Encoder registry: every entry loads saved random weights through the path a real checkpoint takes.

The four ~0.6-1.1 B-parameter models (uni_v2, virchow2, hoptimus0, gigapath) take 30-70 s each on a
2-core CPU and are marked ``slow``; the others run in the default suite.
"""

from __future__ import annotations

import gc
import re

import pytest
import torch

from wsikt.features.encoders import (
    REGISTRY,
    build_encoder,
    get_encoder_spec,
    hf_vit_to_timm,
    strip_prefixes,
    weights_hash,
)

timm = pytest.importorskip("timm")

GIANT = {"uni_v2", "virchow2", "hoptimus0", "gigapath"}
HF_LAYOUT = {"phikon", "phikon_v2"}  # owkin's checkpoints are Hugging Face ViTModel / Dinov2Model files
DOCUMENTED_DIM = {"resnet50": 1024, "uni_v1": 1024, "uni_v2": 1536, "phikon": 768, "phikon_v2": 1024,
                  "virchow2": 2560, "hoptimus0": 1536, "gigapath": 1536, "demo": 64}


def _random_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The registry architecture with seeded random weights (filled directly: timm's init of 1 B params is slow)."""
    with torch.device("meta"):
        model = REGISTRY[name].build()
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                t.zero_()
            elif key.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=gen)
            elif re.search(r"(norm\d*|bn\d*|fc_norm)\.weight$", key) or key.endswith("downsample.1.weight"):
                t.normal_(1.0, 0.02, generator=gen)
            else:
                t.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _timm_to_hf(state: dict[str, torch.Tensor], dinov2: bool) -> dict[str, torch.Tensor]:
    """Write a timm ViT state dict in Hugging Face's ViTModel (dinov2=False) or Dinov2Model layout."""
    out: dict[str, torch.Tensor] = {}
    names = ({"norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"} if dinov2 else
             {"norm1": "layernorm_before", "norm2": "layernorm_after", "fc1": "intermediate.dense", "fc2": "output.dense"})
    for key, v in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if key == "cls_token":
            out["embeddings.cls_token"] = v
        elif key == "pos_embed":
            out["embeddings.position_embeddings"] = v
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = v
        elif key.startswith("norm."):
            out["layernorm." + key.rsplit(".", 1)[1]] = v
        elif m:
            i, rest = m[1], m[2]
            p = f"encoder.layer.{i}."
            kind = rest.rsplit(".", 1)[1]
            if rest.startswith("attn.qkv."):
                for part, chunk in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[p + f"attention.attention.{part}.{kind}"] = chunk.clone()
            elif rest.startswith("attn.proj."):
                out[p + f"attention.output.dense.{kind}"] = v
            elif rest.startswith("ls1."):
                out[p + "layer_scale1.lambda1"] = v
            elif rest.startswith("ls2."):
                out[p + "layer_scale2.lambda1"] = v
            else:
                mod = rest.rsplit(".", 1)[0].removeprefix("mlp.")
                out[p + f"{names[mod]}.{kind}"] = v
        else:
            raise AssertionError(f"unmapped timm key {key}")
    if dinov2:
        out["embeddings.mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    else:
        d = state["cls_token"].shape[-1]
        out["pooler.dense.weight"], out["pooler.dense.bias"] = torch.zeros(d, d), torch.zeros(d)
    return out


def _roundtrip(name: str, tmp_path, fmt: str, compare_output: bool) -> None:
    spec = get_encoder_spec(name)
    model = _random_model(name)
    expected_hash = weights_hash(model)
    x = torch.rand(1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(3))
    ref = None
    if compare_output:
        with torch.inference_mode():
            ref = model(x)
    state = model.net.state_dict()
    if name in HF_LAYOUT:
        state = _timm_to_hf(state, dinov2=name == "phikon_v2")
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a torch checkpoint as training code writes it: nested, with a DDP prefix
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    del model, state
    gc.collect()
    loaded, spec2, whash = build_encoder(name, str(path))  # includes the dummy-forward dim check
    assert spec2.dim == DOCUMENTED_DIM[name]
    assert whash == expected_hash  # every tensor byte-identical to what was saved
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    if compare_output:
        with torch.inference_mode():
            out = loaded(x)
        assert out.shape == (1, spec.dim) and torch.isfinite(out).all()
        assert torch.allclose(out, ref, atol=1e-5)
    del loaded
    gc.collect()


def test_registry_covers_the_documented_encoders():
    assert set(REGISTRY) == set(DOCUMENTED_DIM)
    for name, spec in REGISTRY.items():
        assert spec.dim == DOCUMENTED_DIM[name]
        assert spec.precision in {"fp32", "fp16", "bf16"}
        assert spec.mpp > 0 and spec.patch_size >= spec.input_size * spec.crop - 1
        if spec.needs_weights:
            assert spec.hf_repo and spec.url.startswith("https://huggingface.co/")


@pytest.mark.parametrize(("name", "fmt", "compare_output"), [
    ("resnet50", "safetensors", True), ("phikon", "safetensors", True), ("phikon_v2", "pth", False),
    ("uni_v1", "pth", False),  # ViT-L: identical weight bytes (hash) imply identical outputs; saves 2 forwards
])
def test_encoder_reloads_saved_weights(name, fmt, compare_output, tmp_path):
    _roundtrip(name, tmp_path, fmt, compare_output)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GIANT))
def test_giant_encoder_reloads_saved_weights(name, tmp_path):
    _roundtrip(name, tmp_path, "pth", compare_output=False)


def test_resnet50_reloads_a_full_timm_checkpoint(tmp_path):
    # A real ImageNet checkpoint has layer4 and fc, which the layer3 trunk ignores.
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = timm.create_model("resnet50.tv_in1k", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "r50.safetensors"))
    model, spec, _ = build_encoder("resnet50", str(tmp_path / "r50.safetensors"))
    loaded = model.net.state_dict()
    assert set(loaded) == {k for k in full if not k.startswith(("fc.", "layer4."))}
    assert all(torch.equal(loaded[k], full[k]) for k in loaded)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1024) and torch.isfinite(out).all()


def test_resnet50_rejects_a_wrong_checkpoint(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"r18\.pth: weight '.*' has shape \(.*\), resnet50 expects \(.*\); this checkpoint is not a resnet50"):
        build_encoder("resnet50", str(path))


def test_wrong_shaped_vit_checkpoint_names_key_and_shapes(tmp_path):
    state = _random_model("phikon").net.state_dict()
    state["blocks.3.mlp.fc1.weight"] = torch.zeros(100, 768)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as exc:
        build_encoder("phikon", str(tmp_path / "bad.pth"))
    msg = str(exc.value)
    assert "'blocks.3.mlp.fc1.weight'" in msg and "(100, 768)" in msg and "(3072, 768)" in msg


def test_missing_keys_are_named(tmp_path):
    state = _random_model("phikon").net.state_dict()
    del state["norm.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 weights missing \(e.g. \['norm.weight'\]\)"):
        build_encoder("phikon", str(tmp_path / "partial.pth"))


def test_without_weights_says_how_to_get_them():
    with pytest.raises(ValueError, match="features.weights.*features.hub"):
        build_encoder("resnet50")
    with pytest.raises(ValueError) as exc:
        build_encoder("uni_v2")
    msg = str(exc.value)
    assert "gated" in msg and "https://huggingface.co/MahmoodLab/UNI2-h" in msg and "\n" not in msg


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.weights"):
        build_encoder("resnet50", str(tmp_path / "absent.safetensors"))


def test_hub_error_is_one_clear_line(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match=r"could not download from https://huggingface.co/owkin/phikon .*features.weights"):
        build_encoder("phikon", allow_hub=True)


def test_key_mapping_helpers():
    assert strip_prefixes({"module.model.a": torch.zeros(1), "module.model.b": torch.zeros(1)}).keys() == {"a", "b"}
    assert strip_prefixes({"model.a": torch.zeros(1), "b": torch.zeros(1)}).keys() == {"model.a", "b"}
    timm_state = {"cls_token": torch.zeros(1)}
    assert hf_vit_to_timm(timm_state) is timm_state  # timm layout passes through


@pytest.mark.slow  # 30-90 s where transformers is installed; skipped (no transformers) in CI
@pytest.mark.parametrize("name", ["phikon", "phikon_v2"])
def test_hf_mapping_matches_transformers(name, tmp_path):
    """Same numbers as the Hugging Face model owkin publishes (runs where transformers is installed)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "phikon":
        cfg = transformers.ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, image_size=224, patch_size=16, layer_norm_eps=1e-12)
        hf = transformers.ViTModel(cfg, add_pooling_layer=False)
    else:
        cfg = transformers.Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                                        image_size=224, patch_size=16, layerscale_value=0.5, layer_norm_eps=1e-6)
        hf = transformers.Dinov2Model(cfg)
    hf.eval()
    hf.save_pretrained(tmp_path / "hub")  # the layout of the files on the hub
    torch.save(hf.state_dict(), tmp_path / "in_memory.bin")  # transformers' own module names
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ref = hf(pixel_values=x).last_hidden_state[:, 0]
    for weights in (tmp_path / "hub", tmp_path / "in_memory.bin"):
        model, _, _ = build_encoder(name, str(weights))
        with torch.inference_mode():
            out = model(x)
        assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
