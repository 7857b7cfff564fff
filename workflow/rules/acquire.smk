# Acquisition: the embedded demo cohort (GDC download comes with the acquisition issue).


if config["demo"]["enabled"]:

    rule demo_cohort:
        output:
            slides=[f"resources/demo/slides/{s}.tiff" for s in DEMO.slides["slide_id"]],
            clinical="resources/demo/clinical.tsv",
            samples="resources/demo/samples.tsv",
            truth="resources/demo/truth.tsv",
        log:
            "logs/acquire/demo_cohort.log",
        threads: 2
        params:
            demo=config["demo"],
        conda:
            "../envs/wsikt.yaml"
        script:
            "../scripts/demo_cohort.py"
