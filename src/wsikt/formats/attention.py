"""Attention layers: per-patch attention of one model over its test patients' slides (written and read only here).

Two files, one content. The h5 (one per cancer and model kind) holds, for every slide of every
test patient, ``slides/<slide_id>/<magnification>/{coords, attention}``: level-0 top-left patch
coords (int64, attr ``patch_size_level0``) and the patch's attention (float32, the share of the
patient's bag embedding, so a patient's patches over all its slides sum to 1); slide attrs
``patient_id``, ``fold``, ``risk`` (the fold's predictions TSV value, higher = shorter survival)
and ``null`` (the expert was gated to the null model: its attention is its unused trained
aggregator's). Root attrs: ``source`` (expert or roupkt), ``model``, ``cancer``.

The GeoJSON (one per slide) is what QuPath's *File → Import objects* opens: a FeatureCollection
of ``tile`` objects, each its patch square as a Polygon in level-0 pixels, classified by
magnification ("attention 20x"), with measurements ``attention`` and ``attention_percentile``
(rank within the slide and magnification, 0–1) that QuPath's measurement maps colour.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from wsikt.core.io import atomic_path

SOURCES = ("expert", "roupkt")


@dataclass
class PatchAttention:
    """One magnification of one slide: level-0 top-left coords (N, 2), attention (N,), patch side in level-0 px."""

    coords: np.ndarray
    attention: np.ndarray
    patch_size: int

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, np.int64).reshape(-1, 2)
        self.attention = np.asarray(self.attention, np.float32).reshape(-1)
        if len(self.coords) != len(self.attention):
            raise ValueError(f"{len(self.coords)} patch coords but {len(self.attention)} attention values")

    def percentile(self) -> np.ndarray:
        """Each patch's attention rank within the slide, 0 (lowest) … 1 (highest); ties share their mean rank."""
        n = len(self.attention)
        if n < 2:
            return np.ones(n)
        order = np.argsort(self.attention, kind="stable")
        ranks = np.empty(n)
        ranks[order] = np.arange(n)
        _, inv = np.unique(self.attention, return_inverse=True)
        ranks = np.bincount(inv, ranks)[inv] / np.bincount(inv)[inv]
        return ranks / (n - 1)


@dataclass
class SlideAttention:
    """One slide's attention at each magnification the model weighs, with its patient's fold and risk."""

    slide_id: str
    patient_id: str
    fold: int
    risk: float
    maps: dict[str, PatchAttention] = field(default_factory=dict)
    null: bool = False


def write_attention_h5(path: str | Path, slides: Iterable[SlideAttention], source: str, model: str, cancer: str) -> None:
    """Write one model kind's attention layers for a cancer's test slides, atomically."""
    if source not in SOURCES:
        raise ValueError(f"attention source '{source}' must be one of {', '.join(SOURCES)}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(source=source, model=model, cancer=cancer)
        root = f.create_group("slides")
        for s in slides:
            g = root.create_group(s.slide_id)
            g.attrs.update(patient_id=s.patient_id, fold=int(s.fold), risk=float(s.risk), null=bool(s.null))
            for mag, m in s.maps.items():
                mg = g.create_group(mag)
                mg.create_dataset("coords", data=m.coords).attrs["patch_size_level0"] = int(m.patch_size)
                mg.create_dataset("attention", data=m.attention)


def read_attention_h5(path: str | Path) -> tuple[dict, list[SlideAttention]]:
    """(root attrs, every slide's layers) of an attention h5."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        return attrs, list(_slides(f))


def _slides(f: h5py.File) -> Iterator[SlideAttention]:
    for slide_id, g in f["slides"].items():
        maps = {mag: PatchAttention(mg["coords"][:], mg["attention"][:], int(mg["coords"].attrs["patch_size_level0"]))
                for mag, mg in g.items()}
        a = g.attrs
        yield SlideAttention(slide_id, str(a["patient_id"]), int(a["fold"]), float(a["risk"]), maps, bool(a["null"]))


def attention_geojson(slide: SlideAttention, model: str) -> dict:
    """A slide's attention as a QuPath-importable FeatureCollection of tile squares in level-0 pixels."""
    features = []
    for mag, m in slide.maps.items():
        s = int(m.patch_size)
        for (x, y), a, p in zip(m.coords.tolist(), m.attention.tolist(), m.percentile().tolist()):
            ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{slide.slide_id}/{mag}/{x}/{y}")),  # stable across reruns
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "tile", "classification": {"name": f"attention {mag}"},
                               "measurements": {"attention": a, "attention_percentile": p}},
            })
    props = {"slide_id": slide.slide_id, "patient_id": slide.patient_id, "fold": slide.fold, "risk": slide.risk,
             "model": model, "null": slide.null}
    return {"type": "FeatureCollection", "features": features, "properties": props}


def write_attention_geojson(folder: str | Path, slides: Iterable[SlideAttention], model: str) -> list[Path]:
    """One ``<slide_id>.geojson`` per slide in ``folder`` (created), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in slides:
        path = folder / f"{s.slide_id}.geojson"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(attention_geojson(s, model)))
        paths.append(path)
    return paths


def read_attention_geojson(path: str | Path) -> dict[str, PatchAttention]:
    """The layers of an attention GeoJSON back as per-magnification coords and attention (tests, tools)."""
    obj = json.loads(Path(path).read_text())
    by_mag: dict[str, list] = {}
    for feat in obj["features"]:
        ring = np.asarray(feat["geometry"]["coordinates"][0])
        mag = feat["properties"]["classification"]["name"].removeprefix("attention ")
        by_mag.setdefault(mag, []).append((ring[0], int(ring[2][0] - ring[0][0]), feat["properties"]["measurements"]["attention"]))
    return {mag: PatchAttention(np.array([r[0] for r in rows]), np.array([r[2] for r in rows]), rows[0][1])
            for mag, rows in by_mag.items()}
