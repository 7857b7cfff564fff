"""The GPU paths equal the CPU paths: feature extraction (fp32 and bf16 autocast) and batched expert training.

Skipped where no CUDA device is present (CI); run on a GPU machine with ``python -m pytest tests/features/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsikt.features.extract import extract_features
from wsikt.formats.features_h5 import load_features
from wsikt.survival.bins import assign_bins, fit_time_bins
from wsikt.training.experts import predict, train_expert
from wsikt.training.settings import TrainSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _grid_patches(out: Path, n_side: int, footprint: int = 256) -> Path:
    """A single-magnification patch h5: an n_side² grid of level-0 reads at the slide's own 0.5 µm/px."""
    xy = np.array([(x, y) for y in range(n_side) for x in range(n_side)], np.int64) * footprint
    with h5py.File(out, "w") as f:
        f.create_dataset("coords", data=xy).attrs.update(
            patch_level=0, patch_size=footprint, read_level=0, read_size=footprint, target_patch_size=256,
            target_mpp=0.5)
    return out


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    """Seeded random resnet50 weights saved to disk, loaded through the real checkpoint path."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_cuda_features_equal_cpu_features(demo_slide_pair, resnet_weights, tmp_path, workers):
    slide = demo_slide_pair[1]  # 0.5 µm/px generic TIFF
    patches = _grid_patches(tmp_path / "p.h5", 4)
    cpu, gpu = tmp_path / "cpu.h5", tmp_path / "gpu.h5"
    extract_features(slide, patches, cpu, "resnet50", batch_size=5, device="cpu", weights=str(resnet_weights),
                     precision="fp32")
    extract_features(slide, patches, gpu, "resnet50", batch_size=5, num_workers=workers, device="cuda",
                     weights=str(resnet_weights), precision="fp32")
    a, b = load_features(cpu), load_features(gpu)
    assert a.shape == b.shape == (16, 1024) and np.isfinite(b).all()
    # TF32 may be on for CUDA matmuls/convolutions: equal to a few parts in a thousand, not bitwise.
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * float(np.abs(a).max()))
    with h5py.File(cpu, "r") as fa, h5py.File(gpu, "r") as fb:
        assert np.array_equal(fa["coords"][:], fb["coords"][:])
        assert fb.attrs["weights_hash"] == fa.attrs["weights_hash"]


def test_bf16_autocast_features_stay_close_to_fp32(demo_slide_pair, resnet_weights, tmp_path):
    slide = demo_slide_pair[1]
    patches = _grid_patches(tmp_path / "p.h5", 4)
    fp32, bf16 = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    for out, precision in ((fp32, "fp32"), (bf16, "bf16")):
        extract_features(slide, patches, out, "resnet50", batch_size=8, device="cuda", weights=str(resnet_weights),
                         precision=precision)
    a, b = load_features(fp32), load_features(bf16)
    assert b.dtype == np.float32  # stored as float32 whatever the compute precision
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99, f"bf16 features drift from fp32: min cosine {cos.min():.4f}"
    with h5py.File(bf16, "r") as f:
        assert f.attrs["precision"] == "bf16"


def _planted(n: int = 40, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, n)
    w = rng.normal(size=dim)
    bags = [(3.0 * u_i * w + rng.normal(size=(k, dim))).astype(np.float32)
            for u_i, k in zip(u, rng.integers(5, 300, size=n))]
    t_event = np.exp(np.log(1500.0) - 1.5 * (2 * u - 1) + 0.3 * rng.normal(size=n))
    t_cens = rng.uniform(500.0, 8000.0, n)
    return bags, np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)


@pytest.mark.parametrize("model", ["abmil", "transmil"])
def test_cuda_training_equals_cpu_training(model):
    bags, time, event = _planted()
    edges = fit_time_bins(time, event, "quantile", 4, 365.0)
    bins = assign_bins(time, edges)
    settings = TrainSettings(model=model, epochs=3, dropout=0.0, lr=1e-3, feature_norm="standardize")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        m_cpu, h_cpu = train_expert(bags, bins, event, len(edges) + 1, settings, CPU)
        m_gpu, h_gpu = train_expert(bags, bins, event, len(edges) + 1, settings, CUDA)
        s_cpu, e_cpu = predict(m_cpu, bags, CPU)
        s_gpu, e_gpu = predict(m_gpu, bags, CUDA)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    np.testing.assert_allclose(h_gpu, h_cpu, atol=1e-4)
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-3)
    np.testing.assert_allclose(e_gpu, e_cpu, atol=1e-3)
    assert next(m_gpu.parameters()).device.type == "cuda"
