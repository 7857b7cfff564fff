"""Attention maps of each outer fold's model over that fold's test patients, split back into slides.

Experts: the aggregator's own per-patch attention per magnification (``Aggregator.patch_attention``:
the gated attention of ABMIL, 1/N for mean pooling, the share of features a patch wins for max
pooling). ROUPKT: its router's ABMIL attention, i.e. the patches the choice of experts was read
from (the experts' embeddings come from the cache, so the router is the only part that looks at
patches). A patient's bag is its slides' features in sorted slide order (``load_patient_bags``),
so each bag's rows split back into slides by each slide's patch count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from wsikt.cohort.bags import Bag, load_patient_bags
from wsikt.core.model_facts import PRIMARY
from wsikt.formats.attention import PatchAttention, SlideAttention, write_attention_geojson, write_attention_h5
from wsikt.formats.features_h5 import load_coords
from wsikt.mil import Expert, pad_bags
from wsikt.training.experts import load_expert
from wsikt.transfer.roupkt import ROUPKT, load_roupkt, primary

log = logging.getLogger("wsikt.attention")

PatientMaps = dict[str, np.ndarray]  # model scale name → (N_s,) attention of one patient's bag


@torch.inference_mode()
def expert_attention(model: Expert, bags: Sequence[Bag], device: torch.device, batch: int = 8) -> list[PatientMaps]:
    """Each bag's attention per magnification the expert weighs, trimmed to the bag's own rows (eval mode)."""
    model.eval()
    out: list[PatientMaps] = []
    for start in range(0, len(bags), batch):
        b = model.collate(bags[start:start + batch], device)
        _, maps = model.attend(b)
        for i in range(maps[next(iter(maps))].shape[0]):
            out.append({s: _row(a[i], b[f"mask{model.scales.index(s)}"][i]) for s, a in maps.items()})
    return out


@torch.inference_mode()
def router_attention(model: ROUPKT, bags: Sequence[Bag], device: torch.device, batch: int = 8) -> list[PatientMaps]:
    """The ROUPKT router's ABMIL attention over each bag's primary-magnification patches (eval mode)."""
    model.eval()
    out: list[PatientMaps] = []
    for start in range(0, len(bags), batch):
        x, mask = pad_bags([torch.from_numpy(primary(b)) for b in bags[start:start + batch]])
        _, a = model.router.attend(x.to(device), mask.to(device))
        out += [{PRIMARY: _row(a[i], mask[i])} for i in range(len(a))]
    return out


def _row(a: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    return a[mask.to(a.device)].float().cpu().numpy()  # valid rows are a prefix: the bag's own order


def _load_expert(path: str | Path, device: torch.device) -> tuple[Expert, tuple[str, ...], Callable, bool]:
    model = load_expert(path, device)
    return model, model.scales, expert_attention, bool(model.is_null)


def _load_router(path: str | Path, device: torch.device) -> tuple[ROUPKT, tuple[str, ...], Callable, bool]:
    model, _ = load_roupkt(path, device)
    return model, (PRIMARY,), router_attention, False


LOADERS: dict[str, Callable] = {"expert": _load_expert, "roupkt": _load_router}


def split_by_slide(
    patient_id: str, maps: PatientMaps, slide_ids: Sequence[str], feature_path: Mapping[str, str | Path],
) -> list[tuple[str, dict[str, PatchAttention]]]:
    """One patient's bag attention cut back into its slides (sorted order, slides without patches skipped)."""
    cuts: dict[str, int] = {s: 0 for s in maps}
    per_slide = []
    for slide in sorted(slide_ids):
        layers = {}
        for scale, a in maps.items():
            name, coords, side = load_coords(feature_path[slide], scale)
            layers[name] = PatchAttention(coords, a[cuts[scale]:cuts[scale] + len(coords)], side)
            cuts[scale] += len(coords)
        if len(next(iter(layers.values())).coords):
            per_slide.append((slide, layers))
    for scale, a in maps.items():
        if cuts[scale] != len(a):
            raise ValueError(f"patient {patient_id}: {len(a)} attention values at {scale} but its slides' feature files "
                             f"hold {cuts[scale]} patches; rerun the bag_index rule and this job")
    return per_slide


def fold_attention(
    source: str, model_path: str | Path, predictions: str | Path, split: pd.DataFrame, fold: int,
    slides: pd.DataFrame, feature_path: Mapping[str, str | Path], device: torch.device,
) -> list[SlideAttention]:
    """Attention layers of one outer fold's model (``source`` expert or roupkt) over its test patients' slides.

    ``risk`` is the fold's predictions TSV value, so the layers and the report rank patients alike.
    """
    if source not in LOADERS:
        raise ValueError(f"attention source '{source}' must be one of {', '.join(LOADERS)}")
    model, scales, attend, null = LOADERS[source](model_path, device)
    test = split.loc[split["fold"] == fold, "patient_id"].astype(str).tolist()
    preds = pd.read_csv(predictions, sep="\t", dtype={"patient_id": str}).set_index("patient_id")
    missing = [p for p in test if p not in preds.index]
    if missing:
        raise ValueError(f"{predictions}: no prediction for test patient(s) {missing[:3]}; rerun the fold's training job")
    bags = load_patient_bags(test, slides, feature_path, scales)
    by_patient = slides.groupby("patient_id")["slide_id"].apply(list).to_dict()
    layers = []
    for pid, maps in zip(test, attend(model, bags, device)):
        for slide, per_mag in split_by_slide(pid, maps, by_patient[pid], feature_path):
            layers.append(SlideAttention(slide, pid, fold, float(preds.at[pid, "risk"]), per_mag, null))
    return layers


def write_cancer_attention(
    source: str, cancer: str, model_name: str, split: pd.DataFrame, slides: pd.DataFrame,
    feature_path: Mapping[str, str | Path], models: Sequence[str | Path], predictions: Sequence[str | Path],
    out_h5: str | Path, out_geojson: str | Path, device: torch.device,
) -> list[SlideAttention]:
    """Every outer fold's attention over its test slides → one h5 and a GeoJSON per slide.

    ``models[k]``/``predictions[k]`` are outer fold k's; each patient is a test patient of exactly
    one fold, so every slide gets one layer, from the model that never trained on it.
    """
    if len(models) != len(predictions):
        raise ValueError(f"{len(models)} models but {len(predictions)} prediction files; list one of each per fold")
    layers: list[SlideAttention] = []
    for fold, (m, p) in enumerate(zip(models, predictions)):
        layers += fold_attention(source, m, p, split, fold, slides, feature_path, device)
    label = "roupkt router" if source == "roupkt" else model_name
    write_attention_h5(out_h5, layers, source, label, cancer)
    write_attention_geojson(out_geojson, layers, label)
    log.info("%s %s: attention of %d test slides", source, cancer, len(layers))
    return layers
