# Feature extraction: one h5 per slide per encoder (the encoder is a wildcard: several coexist).
# With features.ingest set, existing CLAM/TRIDENT/.pt features are converted instead (no slides read).


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
        script:
            "../scripts/ingest_features.py"


else:

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
            precision=None if config["features"]["precision"] == "auto" else config["features"]["precision"],
            compile=config["features"]["compile"],
            prefetch=config["features"]["prefetch"],
        conda:
            "../envs/wsikt.yaml"
        script:
            "../scripts/extract_features.py"
