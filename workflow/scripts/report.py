"""Snakemake adapter: render the HTML report (and its figures / metrics table as files)."""
from wsikt.core.logs import log_to
from wsikt.report import ReportInputs, ReportOutputs, ReportSettings, build_report

with log_to(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    build_report(
        ReportInputs.from_rule(i, p.baseline_methods, p.benchmarks),  # model.pt beside each prediction: bin edges
        ReportOutputs(html=o.html, km=o.km, heatmap=getattr(o, "heatmap", None), metrics=o.metrics),
        ReportSettings(config=p.config, endpoint=p.endpoint, encoder=p.encoder, model=p.model,
                       max_qc=p.max_qc, roupkt_topk=p.roupkt_topk, excluded_cancers=p.excluded_cancers),
    )
