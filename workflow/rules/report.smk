# The self-contained HTML report, plus its figures and expert metrics as files for `snakemake --report`.
# With transfer.matrix false it reads no matrix and writes no heatmap (the page says the matrix was not run).
# Benchmarks are read by globbing results/benchmarks/ in the job (not listed as inputs): every
# upstream job has finished and written its benchmark before this rule runs, and a 12k-slide cohort
# would otherwise add one input per slide and stage. The report's own benchmark is excluded.
EXPERT_FOLDS = f"results/experts/{ENCODER}/{MODEL}/{ENDPOINT}/{{cancer}}/fold{{fold}}"
HEATMAP = (  # the transfer heatmap as a file, when the matrix is built
    {
        "heatmap": report(
            "results/report/transfer_heatmap.png",
            caption="../report/transfer_heatmap.rst",
            category="Transfer",
        )
    }
    if TRANSFER_MATRIX
    else {}
)


rule report:
    input:
        summary=f"results/experts/{ENCODER}/{MODEL}/{ENDPOINT}/summary.tsv",
        matrix=(
            f"results/transfer/{ENCODER}/{MODEL}/{ENDPOINT}/matrix.tsv"
            if TRANSFER_MATRIX
            else []
        ),
        finetuned=(
            expand(
                PATH["finetuned_matrix"],
                encoder=ENCODER,
                model=MODEL,
                endpoint=ENDPOINT,
            )
            if config["transfer"]["finetuned"]
            else []
        ),
        roupkt=(
            f"results/roupkt/{ENCODER}/{MODEL}/{ENDPOINT}/summary.tsv"
            if ROUPKT_TARGETS
            else []
        ),
        baselines=expand(
            f"results/baselines/{ENCODER}/{MODEL}/{ENDPOINT}/{{method}}/summary.tsv",
            method=config["baselines"]["methods"],
        ),
        splits=expand(PATH["split"], endpoint=ENDPOINT, cancer=CANCERS),
        samples=SAMPLES_TSV,
        excluded=expand(
            "results/{stage}/{endpoint}/{cancer}.excluded.tsv",
            stage=["labels", "splits"],
            endpoint=ENDPOINT,
            cancer=CANCERS,
        ),
        qc=(
            []
            if config["features"]["ingest"]
            else expand(PATH["qc_patches"], slide=SAMPLES["slide_id"])
        ),
        predictions=expand(
            f"{EXPERT_FOLDS}/predictions.tsv", cancer=CANCERS, fold=FOLDS
        ),
        metrics=expand(f"{EXPERT_FOLDS}/metrics.json", cancer=CANCERS, fold=FOLDS),  # bin edges
        chance=f"results/stats/{ENCODER}/{MODEL}/{ENDPOINT}/chance.tsv",
        compare=f"results/stats/{ENCODER}/{MODEL}/{ENDPOINT}/compare.tsv",
        matrix_ci=(
            f"results/stats/{ENCODER}/{MODEL}/{ENDPOINT}/matrix_ci.tsv"
            if TRANSFER_MATRIX
            else []
        ),
        retrained=(
            expand(
                f"results/stats/{ENCODER}/{MODEL}/{ENDPOINT}/retrained_null/{{cancer}}.tsv",
                cancer=CANCERS,
            )
            if config["stats"]["permutations"]
            else []
        ),
        heatmaps=rules.heatmaps.output.index if HEATMAPS else [],
        density=rules.heatmaps.output.density if HEATMAPS else [],
    output:
        **HEATMAP,
        html=report(
            PATH["report"],
            caption="../report/index.rst",
            category="Report",
        ),
        km=report(
            "results/report/kaplan_meier.png",
            caption="../report/kaplan_meier.rst",
            category="Experts",
        ),
        metrics=report(
            "results/report/expert_metrics.tsv",
            caption="../report/expert_metrics.rst",
            category="Experts",
        ),
    log:
        "logs/report/index.log",
    benchmark:
        "results/benchmarks/report/index.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        config=config,
        endpoint=ENDPOINT,
        encoder=ENCODER,
        model=MODEL,
        max_qc=config["report"]["max_qc_images"],
        roupkt_topk=config["roupkt"]["topk"],
        baseline_methods=config["baselines"]["methods"],
        benchmarks="results/benchmarks",
        excluded_cancers=EXCLUDED_CANCERS,
    script:
        "../scripts/report.py"


# Not a target of `all`: `snakemake results/config/effective.yaml` writes the config every job runs
# with (the user's --configfile, or the demo's, with the schema's defaults filled in).
rule effective_config:
    output:
        "results/config/effective.yaml",
    log:
        "logs/config/effective.log",
    conda:
        "../envs/wsikt.yaml"
    params:
        config=config,
    script:
        "../scripts/effective_config.py"
