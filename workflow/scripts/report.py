"""Snakemake adapter: render the HTML report (and its figures / metrics table as files)."""
from wsikt.core.logs import log_to
from wsikt.report import build_report

with log_to(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    build_report(
        o.html,
        summary_tsv=i.summary,
        matrix_tsv=i.matrix,
        split_tsvs=list(i.splits),
        samples_tsv=i.samples,
        exclusion_tsvs=list(i.excluded),
        qc_pngs=list(i.qc),
        prediction_tsvs=list(i.predictions),  # each sibling model.pt (input 'models') gives bin edges
        benchmark_dir=p.benchmarks,
        config=p.config,
        endpoint=p.endpoint,
        encoder=p.encoder,
        model=p.model,
        max_qc=p.max_qc,
        out_km_png=o.km,
        out_heatmap_png=o.heatmap,
        out_metrics_tsv=o.metrics,
        roupkt_summary_tsv=i.roupkt or None,
        baseline_summary_tsvs=dict(zip(p.baseline_methods, i.baselines)),
        roupkt_topk=p.roupkt_topk,
    )
