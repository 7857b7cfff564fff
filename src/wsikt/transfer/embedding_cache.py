"""Embedding cache: every expert's 512-d bag embedding and risk for every patient of one target cancer.

One h5 per (encoder, model, endpoint, target), written once by the zero-shot transfer pass and
read by everything downstream (ROUPKT, frozen-trunk baselines, the training-only selection):

    patient_id              (N,) utf-8, the target's split order
    emb/<source>/fold<k>    (N, 512) float32  bag embedding of expert (source, k), eval mode
    risk/<source>/fold<k>   (N,) float32      −Σ S_t of that expert (label-free)
    attrs: target, experts ("<source>/fold<k>" list), dim

``source == target`` entries are the target's own experts; fold k is the "self" expert of outer
fold k. It was trained on that fold's training patients, so its embeddings of those patients are
in-sample (CROPKT does the same); its test-fold embeddings are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch

from wsikt.core.io import atomic_path
from wsikt.survival.bins import risk_from_survival
from wsikt.training.experts import load_expert, predict

ExpertKey = tuple[str, int]


def key_name(key: ExpertKey) -> str:
    """'<source>/fold<k>', the dataset path below emb/ and risk/."""
    return f"{key[0]}/fold{int(key[1])}"


def parse_key(name: str) -> ExpertKey:
    """Inverse of :func:`key_name`."""
    source, fold = name.rsplit("/", 1)
    if not fold.startswith("fold"):
        raise ValueError(f"'{name}' is not an embedding key of the form <source>/fold<k>")
    return source, int(fold[4:])


def embed_target(
    experts: dict[ExpertKey, str | Path],
    patient_ids: Sequence[str],
    load_bags: Callable[[list[str]], list],
    out_h5: str | Path,
    device: torch.device,
    target: str = "",
    chunk: int = 16,
) -> dict[ExpertKey, np.ndarray]:
    """Run every expert over the target's patients (chunks of ``chunk`` bags) and cache embeddings + risks.

    ``load_bags(ids)`` returns the bags of those patients in order; only one chunk of bags is in
    host memory at a time (TCGA bags reach ~40 MB each), all experts are on ``device``. Returns the risks per expert (for the transfer matrix).
    """
    ids = [str(p) for p in patient_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"target {target}: duplicate patient ids in the split; fix the split table")
    models = {k: load_expert(p, device) for k, p in sorted(experts.items())}
    risks = {k: np.zeros(len(ids), np.float32) for k in models}
    with atomic_path(out_h5, suffix=".h5.partial") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("patient_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        dsets: dict[ExpertKey, h5py.Dataset] = {}
        for start in range(0, len(ids), chunk):
            bags = load_bags(ids[start:start + chunk])
            for key, model in models.items():
                surv, emb = predict(model, bags, device)
                if key not in dsets:
                    dsets[key] = f.create_dataset(f"emb/{key_name(key)}", (len(ids), emb.shape[1]), np.float32)
                dsets[key][start:start + len(bags)] = emb.astype(np.float32)
                risks[key][start:start + len(bags)] = risk_from_survival(surv)
        for key, r in risks.items():
            f.create_dataset(f"risk/{key_name(key)}", data=r)
        f.attrs["target"] = target
        f.attrs["experts"] = [key_name(k) for k in models]
        f.attrs["dim"] = int(next(iter(dsets.values())).shape[1]) if dsets else 0
    return risks


def cache_keys(path: str | Path) -> list[ExpertKey]:
    """The (source, fold) experts held in a cache, sorted."""
    with h5py.File(path, "r") as f:
        return sorted(parse_key(str(n)) for n in f.attrs["experts"])


def _rows(f: h5py.File, patient_ids: Sequence[str] | None, path: str | Path) -> np.ndarray:
    cached = [p.decode() if isinstance(p, bytes) else str(p) for p in f["patient_id"][:]]
    if patient_ids is None:
        return np.arange(len(cached))
    index = {p: i for i, p in enumerate(cached)}
    missing = [p for p in patient_ids if p not in index]
    if missing:
        raise KeyError(
            f"{len(missing)} patients (e.g. {missing[0]}) are not in the embedding cache {path}; "
            "it predates the split: rerun the transfer embedding job"
        )
    return np.array([index[p] for p in patient_ids], dtype=np.int64)


def _read(path: str | Path, group: str, keys: Sequence[ExpertKey] | None, patient_ids: Sequence[str] | None) -> dict[ExpertKey, np.ndarray]:
    with h5py.File(path, "r") as f:
        rows = _rows(f, patient_ids, path)
        keys = sorted(parse_key(str(n)) for n in f.attrs["experts"]) if keys is None else list(keys)
        out = {}
        for key in keys:
            name = f"{group}/{key_name(key)}"
            if name not in f:
                raise KeyError(f"expert {key_name(key)} is not in the embedding cache {path}; rerun the transfer embedding job")
            out[key] = f[name][:][rows]
        return out


def read_embeddings(path: str | Path, keys: Sequence[ExpertKey] | None = None, patient_ids: Sequence[str] | None = None) -> dict[ExpertKey, np.ndarray]:
    """Embeddings (N, 512) per expert, rows in ``patient_ids`` order (cache order when None)."""
    return _read(path, "emb", keys, patient_ids)


def read_risks(path: str | Path, keys: Sequence[ExpertKey] | None = None, patient_ids: Sequence[str] | None = None) -> dict[ExpertKey, np.ndarray]:
    """Zero-shot risks (N,) per expert, rows in ``patient_ids`` order (cache order when None)."""
    return _read(path, "risk", keys, patient_ids)


def stack_embeddings(path: str | Path, keys: Sequence[ExpertKey], patient_ids: Sequence[str]) -> np.ndarray:
    """(N, E, 512) float32 tensor of the listed experts' embeddings, E in ``keys`` order."""
    emb = read_embeddings(path, keys, patient_ids)
    return np.stack([emb[k] for k in keys], axis=1).astype(np.float32)
