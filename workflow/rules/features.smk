# Feature extraction: one h5 per slide per encoder (the encoder is a wildcard: several coexist).


rule extract_features:
    input:
        slide=get_slide_path,
        patches="results/patches/{slide}.h5",
    output:
        "results/features/{encoder}/{slide}.h5",
    log:
        "logs/features/{encoder}/{slide}.log",
    benchmark:
        "results/benchmarks/features/{encoder}/{slide}.tsv"
    threads: config["features"]["threads"]
    resources:
        gpu=config["features"]["gpus"],
    params:
        batch_size=config["features"]["batch_size"],
        num_workers=config["features"]["num_workers"],
        device=config["features"]["device"],
        weights=config["features"]["weights"],
        hub=config["features"]["hub"],
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/extract_features.py"
