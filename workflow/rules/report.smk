# The self-contained HTML report.


rule report:
    input:
        summary=f"results/experts/{ENCODER}/{MODEL}/{ENDPOINT}/summary.tsv",
        matrix=f"results/transfer/{ENCODER}/{MODEL}/{ENDPOINT}/matrix.tsv",
        labels=f"results/labels/{ENDPOINT}.tsv",
        samples=SAMPLES_TSV,
        excluded=[f"results/labels/{ENDPOINT}.excluded.tsv"]
        + expand("results/splits/{endpoint}/{cancer}.excluded.tsv", endpoint=ENDPOINT, cancer=CANCERS),
        qc=expand("results/qc/{slide}.png", slide=SAMPLES["slide_id"]),
    output:
        report("results/report/index.html", caption="../report/index.rst", category="Report"),
    log:
        "logs/report/index.log",
    params:
        config=config,
        endpoint=ENDPOINT,
        encoder=ENCODER,
        model=MODEL,
        max_qc=config["report"]["max_qc_images"],
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/report.py"
