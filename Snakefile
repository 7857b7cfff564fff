# wsikt: whole-slide images → per-cancer survival experts → cross-cancer transfer → report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    slide=r"[^/]+",
    encoder=r"[^/]+",
    model=r"[^/]+",
    endpoint=r"[A-Z]+",
    cancer=r"[^/]+",
    fold=r"\d+",


include: "workflow/rules/acquire.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/experts.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/roupkt.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"


# Seconds of reading small files: on a cluster they run on the submit host instead of queueing.
localrules:
    bag_index,
    summarise_experts,
    summarise_roupkt,
    summarise_baseline,


rule all:
    default_target: True
    input:
        get_final_outputs(),
