"""Snakemake adapter: render the demo cohort (slides, clinical table, sample sheet, planted truth)."""
from wsikt.acquire.demo_cohort import plan_cohort, write_demo_cohort
from wsikt.core.logs import log_to

with log_to(snakemake.log[0]):
    demo = snakemake.params.demo
    cohort = plan_cohort(
        seed=demo["seed"], cancers=demo["cancers"],
        two_slide_fraction=demo["two_slide_fraction"], fraction_40x=demo["fraction_40x"],
        appearance=demo["appearance"],
    )
    write_demo_cohort(
        cohort, list(snakemake.output.slides), snakemake.output.clinical, snakemake.output.samples,
        snakemake.output.truth, seed=demo["seed"], threads=snakemake.threads,
    )
