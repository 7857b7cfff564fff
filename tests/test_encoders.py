"""Encoder registry: weights load through the same path a real checkpoint takes; bad weights fail clearly."""

from __future__ import annotations

import pytest
import torch

from wsikt.encoders import REGISTRY, ResNet50Trunk, build_encoder

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(ResNet50Trunk.TIMM_NAME, pretrained=False).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_resnet50_reloads_saved_weights_exactly(resnet50_state, tmp_path, suffix):
    path = tmp_path / f"r50{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in resnet50_state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in resnet50_state.items()}}, path)
    model, spec, whash = build_encoder("resnet50", str(path))
    assert spec.dim == 1024 and REGISTRY["resnet50"].dim == 1024
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in resnet50_state.items())
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1024) and torch.isfinite(out).all()
    again, _, whash2 = build_encoder("resnet50", str(path))
    assert whash == whash2


def test_resnet50_rejects_a_wrong_checkpoint(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"r18\.pth: weight '.*' has shape .* not a ResNet-50"):
        build_encoder("resnet50", str(path))


def test_resnet50_without_weights_says_how_to_get_them():
    with pytest.raises(ValueError, match="features.weights.*features.hub"):
        build_encoder("resnet50")


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.weights"):
        build_encoder("resnet50", str(tmp_path / "absent.safetensors"))
