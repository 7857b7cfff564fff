# Acquisition: the embedded demo cohort, or TCGA slides from the GDC API (query once, one job per file),
# and the TCGA-CDR clinical table from the GDC when `clinical` names it.


if config["demo"]["enabled"]:

    rule demo_cohort:
        output:
            slides=[f"resources/demo/slides/{s}.tiff" for s in DEMO.slides["slide_id"]],
            clinical="resources/demo/clinical.tsv",
            samples="resources/demo/samples.tsv",
            truth="resources/demo/truth.tsv",
        log:
            "logs/acquire/demo_cohort.log",
        benchmark:
            "results/benchmarks/acquire/demo_cohort.tsv"
        conda:
            "../envs/wsikt.yaml"
        threads: 2
        params:
            demo=config["demo"],
        script:
            "../scripts/demo_cohort.py"


if not config["demo"]["enabled"] and config["gdc"]["projects"]:

    rule query_gdc:
        output:
            samples=config["gdc"]["sample_sheet"],
            release=str(Path(config["gdc"]["sample_sheet"]).with_suffix(".release.txt")),
        log:
            "logs/acquire/query_gdc.log",
        benchmark:
            "results/benchmarks/acquire/query_gdc.tsv"
        conda:
            "../envs/wsikt.yaml"
        params:
            projects=config["gdc"]["projects"],
            base_url=config["gdc"]["base_url"],
            slide_dir=config["gdc"]["slide_dir"],
            page_size=config["gdc"]["page_size"],
            max_retries=config["gdc"]["max_retries"],
        script:
            "../scripts/query_gdc.py"

    rule download_slide:
        input:
            get_download_gate,
        output:
            slide=downloaded_slide(f"{config['gdc']['slide_dir']}/{{slide}}.svs"),
            summary="results/acquire/downloads/{slide}.json",
        log:
            "logs/acquire/download/{slide}.log",
        benchmark:
            "results/benchmarks/acquire/download/{slide}.tsv"
        priority: get_download_priority
        conda:
            "../envs/wsikt.yaml"
        resources:
            gdc_connections=1,
        params:
            gdc_file=get_gdc_file,
            base_url=config["gdc"]["base_url"],
            token_file=config["gdc"]["token_file"],
            max_retries=config["gdc"]["max_retries"],
        script:
            "../scripts/download_slide.py"

    rule gdc_download_summary:
        # Not an input of anything and reads what exists, so it also runs after failed downloads:
        # `snakemake -f gdc_download_summary` lists downloaded, resumed, present and missing slides.
        output:
            "results/acquire/download_summary.tsv",
        log:
            "logs/acquire/download_summary.log",
        conda:
            "../envs/wsikt.yaml"
        params:
            sheet=config["gdc"]["sample_sheet"],
            summaries="results/acquire/downloads",
        script:
            "../scripts/gdc_download_summary.py"

    localrules:
        query_gdc,
        gdc_download_summary,

    if config["gdc"]["download_local"]:

        localrules:
            download_slide,


if FETCH_TCGA_CDR:

    rule fetch_tcga_cdr:
        # Runs only while the table is absent (no inputs); a hand-placed copy is used as it is.
        output:
            CLINICAL,
        log:
            "logs/acquire/fetch_tcga_cdr.log",
        conda:
            "../envs/wsikt.yaml"
        resources:
            gdc_connections=1,
        params:
            base_url=config["gdc"]["base_url"],
            pinned=config["gdc"]["tcga_cdr"],
            max_retries=config["gdc"]["max_retries"],
        script:
            "../scripts/fetch_tcga_cdr.py"

    localrules:
        fetch_tcga_cdr,
