# wsikt: whole-slide images → per-cancer survival experts → cross-cancer transfer → report.
from snakemake.utils import min_version

min_version("9.0")


# The demo config only when the user gives none: a user's --configfile replaces it (never merged
# into the demo's values); keys it leaves out take the schema's documented defaults (common.smk).
if not workflow.config_settings.configfiles:

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
include: "workflow/rules/stats.smk"
include: "workflow/rules/attention.smk"
include: "workflow/rules/report.smk"


# Seconds of reading small files: on a cluster they run on the submit host instead of queueing.
localrules:
    bag_index,
    effective_config,
    summarise_experts,
    summarise_roupkt,
    summarise_baseline,
    stats_chance,


rule all:
    default_target: True
    input:
        get_final_outputs(),
