"""Attention heatmaps over slide thumbnails, a gallery of the most-attended patches, and attention vs nuclear density.

Reads the attention layers (``wsikt.formats.attention``) and the slides (OpenSlide); no torch.

- **Heatmaps**: for a sample of test slides (``report.heatmaps``: a number, spread over cancers,
  highest and lowest risk first; or a list of slide ids), each magnification's patch attention is
  drawn as its within-slide percentile over a thumbnail of about 1,024 px, the ROUPKT router's
  beside it where there is one.
- **Gallery**: per cancer, the highest- and the lowest-risk test patient (risk of the fold model
  that never trained on them) with their ``report.top_patches`` most-attended patches, read from
  the slide at the patch coords.
- **Attention vs density** (the demo, where nuclear density sets survival and varies ±25 % within
  each slide): per slide, the Spearman ρ between each patch's attention and its nuclear density,
  summarised per cancer. Density is *measured* from the pixels, not taken from the generator:
  nuclei-like blobs (red channel < 150: the demo draws dark purple nuclei on pink) are counted as
  connected components on the thumbnail (about 2 µm/px) and divided by the patch's tissue pixels
  (any channel < 215). Over the demo's first 40 slides the slide-mean of this measure correlates
  with the planted density at r ≈ 0.99. It is information, not a target: an expert can read
  density through the embedding of every patch and still attend to any of them.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from wsikt.core.io import atomic_path, write_tsv  # noqa: E402
from wsikt.formats.attention import PatchAttention, SlideAttention, read_attention_h5  # noqa: E402
from wsikt.preprocess.slide import open_slide, read_level_scaled  # noqa: E402

log = logging.getLogger("wsikt.report.heatmaps")

THUMB_MAX_SIDE = 1024  # px: the overview every heatmap is drawn on (and density is measured from)
FIGURE_SIDE = 400  # px: the thumbnail each heatmap panel is drawn at
CROP_PX = 128  # px: gallery patch crops
NUCLEUS_RED_MAX = 150  # red channel below this: nuclei-like (haematoxylin-dark) pixel
TISSUE_MAX = 215  # any channel below this: tissue, not glass
MIN_PATCHES_FOR_RHO = 5  # slides with fewer patches give no within-slide ρ
INDEX_COLUMNS = ["kind", "cancer", "slide_id", "patient_id", "fold", "risk", "null", "rank", "attention", "png"]
DENSITY_COLUMNS = ["cancer", "mechanism", "source", "slides", "rho_mean", "rho_sd", "rho_median", "positive_share"]


@dataclass(frozen=True)
class HeatmapSettings:
    """config key report.heatmaps (number of slides, or their ids; 0 = none) and report.top_patches."""

    slides: int | tuple[str, ...] = 12
    top_patches: int = 4

    @classmethod
    def from_config(cls, report: Mapping[str, Any]) -> "HeatmapSettings":
        which = report.get("heatmaps", 12)
        return cls(slides=tuple(which) if isinstance(which, (list, tuple)) else int(which),
                   top_patches=int(report.get("top_patches", 4)))

    def __post_init__(self) -> None:
        if isinstance(self.slides, int) and self.slides < 0:
            raise ValueError(f"report.heatmaps must be ≥ 0 or a list of slide ids, got {self.slides}")
        if self.top_patches < 1:
            raise ValueError(f"report.top_patches must be ≥ 1, got {self.top_patches}")

    @property
    def enabled(self) -> bool:
        return bool(self.slides)


Layer = tuple[str, SlideAttention]  # (cancer, slide layer)


def read_layers(paths: Iterable[str | Path]) -> list[Layer]:
    """Every slide layer of some attention h5 files, with its cancer."""
    out: list[Layer] = []
    for p in paths:
        attrs, slides = read_attention_h5(p)
        out += [(str(attrs["cancer"]), s) for s in slides]
    return out


def choose_slides(layers: Sequence[Layer], which: int | Sequence[str]) -> list[Layer]:
    """The slides to draw: the named ones, or ``which`` of them round-robin over cancers, each cancer's
    in the order highest risk, lowest risk, second highest, … (ties broken by slide id)."""
    if not isinstance(which, int):
        by_id = {s.slide_id: (c, s) for c, s in layers}
        unknown = [w for w in which if w not in by_id]
        if unknown:
            raise ValueError(f"report.heatmaps names slide(s) {unknown[:3]} that have no attention layer "
                             "(not in the sample sheet, or their cancer was left out)")
        return [by_id[w] for w in which]
    queues = {}
    for cancer in sorted({c for c, _ in layers}):
        ranked = sorted((s for c, s in layers if c == cancer), key=lambda s: (-s.risk, s.slide_id))
        order = []
        lo, hi = 0, len(ranked) - 1
        while lo <= hi:
            order.append(ranked[lo])
            if hi != lo:
                order.append(ranked[hi])
            lo, hi = lo + 1, hi - 1
        queues[cancer] = order
    chosen: list[Layer] = []
    while len(chosen) < which and any(queues.values()):
        for cancer, q in queues.items():
            if q and len(chosen) < which:
                chosen.append((cancer, q.pop(0)))
    return chosen


@dataclass
class Overview:
    """A slide's thumbnail and how many level-0 pixels one thumbnail pixel spans (x, y)."""

    rgb: np.ndarray
    scale: tuple[float, float]
    nuclei: tuple[np.ndarray, np.ndarray] | None = None  # blob centres and tissue integral image (nuclear_density's cache)

    def shrunk(self, max_side: int) -> "Overview":
        """The same view at most ``max_side`` px (figures need no more)."""
        h, w = self.rgb.shape[:2]
        f = max_side / max(h, w)
        if f >= 1:
            return self
        rgb = cv2.resize(self.rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return Overview(rgb, (self.scale[0] * w / rgb.shape[1], self.scale[1] * h / rgb.shape[0]))


def slide_overview(path: str | Path, max_side: int = THUMB_MAX_SIDE) -> Overview:
    """The slide at the finest pyramid level no wider than ``max_side`` (or the coarsest, shrunk to it)."""
    with open_slide(path) as slide:
        w0, h0 = slide.dimensions
        fits = [i for i, (w, h) in enumerate(slide.level_dimensions) if max(w, h) <= max_side]
        level = fits[0] if fits else slide.level_count - 1
        w, h = slide.level_dimensions[level]
        f = min(1.0, max_side / max(w, h))
        rgb = read_level_scaled(slide, level, (max(1, int(round(w * f))), max(1, int(round(h * f)))))
    return Overview(rgb, (w0 / rgb.shape[1], h0 / rgb.shape[0]))


def _boxes(view: Overview, m: PatchAttention) -> np.ndarray:
    """Patch squares in thumbnail pixels (N, 4: x0, y0, x1, y1), clipped to the thumbnail."""
    sx, sy = view.scale
    x0, y0 = m.coords[:, 0] / sx, m.coords[:, 1] / sy
    box = np.stack([x0, y0, x0 + m.patch_size / sx, y0 + m.patch_size / sy], 1)
    h, w = view.rgb.shape[:2]
    return np.clip(np.round(box), 0, [w, h, w, h]).astype(int)


def nuclear_density(view: Overview, m: PatchAttention) -> np.ndarray:
    """Nuclei-like blobs per tissue pixel of each patch, counted on the thumbnail (NaN for a patch without tissue)."""
    if view.nuclei is None:  # once per slide: blob centres and the tissue mask's integral image
        rgb = view.rgb
        darkest = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
        _, _, _, centres = cv2.connectedComponentsWithStats((rgb[..., 0] < NUCLEUS_RED_MAX).astype(np.uint8), connectivity=4)
        view.nuclei = (centres[1:], cv2.integral((darkest < TISSUE_MAX).astype(np.uint8)))
    centres, tissue = view.nuclei
    cx, cy = centres[:, 0], centres[:, 1]
    out = np.full(len(m.coords), np.nan)
    for i, (x0, y0, x1, y1) in enumerate(_boxes(view, m)):
        area = tissue[y1, x1] - tissue[y0, x1] - tissue[y1, x0] + tissue[y0, x0]
        if area:
            out[i] = np.count_nonzero((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)) / area
    return out


def within_slide_rho(attention: np.ndarray, density: np.ndarray) -> float:
    """Spearman ρ over a slide's patches with a density (NaN for too few patches or a constant side)."""
    ok = np.isfinite(density)
    if ok.sum() < MIN_PATCHES_FOR_RHO or np.ptp(attention[ok]) == 0 or np.ptp(density[ok]) == 0:
        return float("nan")
    ranks = [pd.Series(v[ok]).rank().to_numpy() for v in (attention, density)]  # average ranks for ties
    return float(np.corrcoef(*ranks)[0, 1])


def heatmap_png(view: Overview, panels: Mapping[str, PatchAttention], title: str) -> bytes:
    """The thumbnail, then one panel per layer: each patch coloured by its within-slide attention percentile."""
    view = view.shrunk(FIGURE_SIDE)
    n = 1 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), dpi=90, squeeze=False)
    axes = axes[0]
    axes[0].imshow(view.rgb)
    axes[0].set_title("slide", fontsize=9)
    cmap = plt.get_cmap("inferno")
    for ax, (label, m) in zip(axes[1:], panels.items()):
        heat = np.full(view.rgb.shape[:2], np.nan, np.float32)
        for (x0, y0, x1, y1), p in zip(_boxes(view, m), m.percentile()):
            heat[y0:y1, x0:x1] = p
        base = view.rgb.astype(np.float32) / 255.0
        covered = np.isfinite(heat)[..., None]
        colour = cmap(np.nan_to_num(heat))[..., :3]
        ax.imshow(np.where(covered, 0.25 * base + 0.75 * colour, 0.45 * base + 0.55), interpolation="nearest")
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if panels:
        sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
        fig.colorbar(sm, ax=list(axes), fraction=0.025, pad=0.01, label="attention percentile in slide")
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def patch_crops(path: str | Path, m: PatchAttention, rows: Sequence[int], px: int = CROP_PX) -> list[np.ndarray]:
    """RGB crops (px × px) of patches ``rows`` read at their level-0 coords from the pyramid level nearest px."""
    crops = []
    with open_slide(path) as slide:
        level = slide.get_best_level_for_downsample(m.patch_size / px)
        ds = slide.level_downsamples[level]
        size = max(1, int(round(m.patch_size / ds)))
        for r in rows:
            x, y = (int(v) for v in m.coords[r])
            rgba = np.asarray(slide.read_region((x, y), level, (size, size)))
            rgb = rgba[..., :3].copy()
            rgb[rgba[..., 3] == 0] = 255
            crops.append(cv2.resize(rgb, (px, px), interpolation=cv2.INTER_AREA))
    return crops


def _write_png(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _rgb_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _primary(s: SlideAttention) -> tuple[str, PatchAttention]:
    """The finest magnification's layer (the smallest patches)."""
    return min(s.maps.items(), key=lambda kv: kv[1].patch_size)


def _risk_extremes(layers: Sequence[Layer]) -> list[tuple[str, str, SlideAttention]]:
    """Per cancer: ('highest', slide) and ('lowest', slide) of the highest- and lowest-risk test patient (first slide)."""
    out = []
    for cancer in sorted({c for c, _ in layers}):
        mine = sorted((s for c, s in layers if c == cancer), key=lambda s: (s.risk, s.patient_id, s.slide_id))
        if mine:
            out.append((cancer, "highest risk", next(s for s in mine if s.patient_id == mine[-1].patient_id)))
            if mine[0].patient_id != mine[-1].patient_id:
                out.append((cancer, "lowest risk", mine[0]))
    return out


def build_heatmaps(
    expert_h5: Sequence[str | Path], router_h5: Sequence[str | Path], slide_paths: Mapping[str, str | Path],
    settings: HeatmapSettings, out_dir: str | Path, out_index: str | Path, out_density: str | Path,
    mechanisms: Mapping[str, str] | None = None, model: str = "expert",
) -> dict[str, pd.DataFrame]:
    """Draw the sampled heatmaps and the gallery into ``out_dir``; write their index and the density table.

    ``expert_h5`` may be empty (a model without attention): the router's layers are drawn instead.
    ``mechanisms`` (cancer → planted mechanism, the demo only) turns on the attention–density table.
    Slides missing from ``slide_paths`` (deleted downloads) are left out of the drawings.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    experts, routers = read_layers(expert_h5), read_layers(router_h5)
    main = experts or routers
    main_label = model if experts else "roupkt router"
    router_of = {s.slide_id: s for _, s in routers}
    rows: list[dict] = []
    views: dict[str, Overview] = {}

    def view(slide_id: str) -> Overview:
        if slide_id not in views:
            views[slide_id] = slide_overview(slide_paths[slide_id])
        return views[slide_id]

    drawable = [(c, s) for c, s in main if s.slide_id in slide_paths]
    chosen = choose_slides(drawable, settings.slides) if settings.enabled else []
    for cancer, s in chosen:
        panels = {f"{main_label} {mag}": m for mag, m in s.maps.items()}
        if experts and s.slide_id in router_of:
            panels.update({f"roupkt router {mag}": m for mag, m in router_of[s.slide_id].maps.items()})
        title = f"{cancer} · {s.slide_id} · fold {s.fold} · risk {s.risk:.3g}" + (" · null expert" if s.null else "")
        png = out_dir / f"{s.slide_id}.png"
        _write_png(heatmap_png(view(s.slide_id), panels, title), png)
        rows.append(dict(kind="heatmap", cancer=cancer, slide_id=s.slide_id, patient_id=s.patient_id, fold=s.fold,
                         risk=s.risk, null=s.null, rank=0, attention=np.nan, png=png.name))
    if settings.enabled:
        for cancer, which, s in _risk_extremes(drawable):
            _, m = _primary(s)
            top = np.argsort(-m.attention, kind="stable")[: settings.top_patches]
            for rank, (r, crop) in enumerate(zip(top, patch_crops(slide_paths[s.slide_id], m, top)), 1):
                png = out_dir / f"top_{s.slide_id}_{rank}.png"
                _write_png(_rgb_png(crop), png)
                rows.append(dict(kind=which, cancer=cancer, slide_id=s.slide_id, patient_id=s.patient_id, fold=s.fold,
                                 risk=s.risk, null=s.null, rank=rank, attention=float(m.attention[r]), png=png.name))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    density = attention_density(experts, routers, slide_paths, view, mechanisms, model) if mechanisms else \
        pd.DataFrame(columns=DENSITY_COLUMNS)
    write_tsv(index, out_index)
    write_tsv(density, out_density)
    log.info("%d heatmaps, %d gallery patches, density table of %d rows", (index["kind"] == "heatmap").sum(),
             (index["kind"] != "heatmap").sum(), len(density))
    return {"index": index, "density": density}


def attention_density(
    experts: Sequence[Layer], routers: Sequence[Layer], slide_paths: Mapping[str, str | Path], view,
    mechanisms: Mapping[str, str], model: str,
) -> pd.DataFrame:
    """Per cancer and model: mean, sd and median over slides of the within-slide Spearman ρ(attention, nuclear density)."""
    rows = []
    for label, layers in ((model, experts), ("roupkt router", routers)):
        per_cancer: dict[str, list[float]] = {}
        for cancer, s in layers:
            if s.slide_id not in slide_paths:
                continue
            _, m = _primary(s)
            per_cancer.setdefault(cancer, []).append(within_slide_rho(m.attention, nuclear_density(view(s.slide_id), m)))
        for cancer, rhos in sorted(per_cancer.items()):
            r = np.asarray([v for v in rhos if np.isfinite(v)])
            rows.append(dict(cancer=cancer, mechanism=mechanisms.get(cancer, ""), source=label, slides=len(r),
                             rho_mean=float(r.mean()) if len(r) else np.nan,
                             rho_sd=float(r.std(ddof=1)) if len(r) > 1 else np.nan,
                             rho_median=float(np.median(r)) if len(r) else np.nan,
                             positive_share=float((r > 0).mean()) if len(r) else np.nan))
    return pd.DataFrame(rows, columns=DENSITY_COLUMNS)


def attention_section(index: str | Path | None, density: str | Path | None) -> dict:
    """The report's attention section from the heatmaps rule's index and density table (PNGs inlined as base64).

    The PNGs named in the index live in the folder beside it that has its name without ``.tsv``.
    ``index`` None: heatmaps are off (report.heatmaps: 0).
    """
    if index is None:
        return {"enabled": False, "heatmaps": [], "gallery": [], "density": []}
    import base64

    folder = Path(index).with_suffix("")
    df = pd.read_csv(index, sep="\t", dtype={"slide_id": str, "patient_id": str, "png": str})

    def png(name: str) -> str:
        return base64.b64encode((folder / name).read_bytes()).decode("ascii")

    heatmaps = [{**r, "png": png(r["png"])} for r in df[df["kind"] == "heatmap"].to_dict("records")]
    gallery = []
    crops = df[df["kind"] != "heatmap"]
    for (cancer, kind, slide), g in crops.groupby(["cancer", "kind", "slide_id"], sort=False):
        first = g.iloc[0]
        gallery.append({"cancer": cancer, "kind": kind, "slide_id": slide, "patient_id": first["patient_id"],
                        "fold": int(first["fold"]), "risk": float(first["risk"]), "null": bool(first["null"]),
                        "crops": [{"rank": int(r["rank"]), "attention": float(r["attention"]), "png": png(r["png"])}
                                  for r in g.sort_values("rank").to_dict("records")]})
    table = pd.read_csv(density, sep="\t") if density is not None else pd.DataFrame(columns=DENSITY_COLUMNS)
    return {"enabled": True, "heatmaps": heatmaps, "gallery": gallery, "density": table.to_dict("records")}
