# Feature extraction: one h5 per slide per encoder (the encoder is a wildcard: several coexist).
# With features.ingest set, existing CLAM/TRIDENT/.pt features are converted instead (no slides read).
# Per-slide rules run `python -m wsikt.cli <rule>` (shell:, not script:): see common.smk. One bag
# index per cancer lists (and checks) its feature files for every model-training rule downstream.


if config["features"]["ingest"]:

    rule ingest_features:
        output:
            "results/features/{encoder}/{slide}.h5",
        log:
            "logs/ingest/{encoder}/{slide}.log",
        benchmark:
            "results/benchmarks/features/{encoder}/{slide}.tsv"
        params:
            source=config["features"]["ingest"],
            mpp=config["features"]["ingest_mpp"],
        conda:
            "../envs/wsikt.yaml"
        shell:
            "python -m wsikt.cli ingest_features --source {params.source:q} --slide-id {wildcards.slide:q}"
            " --out {output:q} --encoder {wildcards.encoder:q} --mpp '{params.mpp}' --log {log:q} 2>> {log:q}"


else:

    rule extract_features:
        input:
            slide=SLIDE_INPUT,
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
            settings=get_feature_settings(),
        conda:
            "../envs/wsikt.yaml"
        shell:
            "python -m wsikt.cli extract_features --slide {input.slide:q} --patches {input.patches:q}"
            " --out {output:q} --encoder {wildcards.encoder:q} --settings {params.settings:q}"
            " --threads {threads} --log {log:q} 2>> {log:q}"


rule bag_index:
    input:
        features=get_cancer_features,
    output:
        "results/bags/{encoder}/{cancer}.tsv",
    log:
        "logs/bags/{encoder}/{cancer}.log",
    params:
        slides=get_cancer_slides,
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/bag_index.py"
