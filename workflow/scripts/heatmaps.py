"""Snakemake adapter: heatmaps over slide thumbnails, the top-patch gallery and the attention-density table."""
from wsikt.core.logs import log_to
from wsikt.report.heatmaps import HeatmapSettings, build_heatmaps

with log_to(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    build_heatmaps(
        list(i.experts), list(i.routers), p.slides, HeatmapSettings.from_config({"heatmaps": p.heatmaps, "top_patches": p.top_patches}),
        o.folder, o.index, o.density, mechanisms=p.mechanisms, model=p.model,
    )
