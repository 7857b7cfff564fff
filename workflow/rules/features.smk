# Feature extraction: one h5 per slide per encoder, written by batch jobs (one encoder load per batch).
# With features.ingest set, existing CLAM/TRIDENT/.pt features are converted instead (no slides read).
# These rules run `python -m wsikt.cli <rule>` (shell:, not script:): see common.smk.


if config["features"]["ingest"]:

    rule ingest_features:
        output:
            PATH["features"],
        log:
            "logs/ingest/{encoder}/{slide}.log",
        benchmark:
            "results/benchmarks/features/{encoder}/{slide}.tsv"
        conda:
            "../envs/wsikt.yaml"
        params:
            source=config["features"]["ingest"],
            mpp=config["features"]["ingest_mpp"],
        shell:
            "python -m wsikt.cli ingest_features --source {params.source:q} --slide-id {wildcards.slide:q}"
            " --out {output:q} --encoder {wildcards.encoder:q} --mpp '{params.mpp}' --log {log:q} 2>> {log:q}"

else:
    # One job embeds a batch of slides with the encoder built once (features.slides_per_job; batches
    # are content-defined per cancer, so adding a slide reruns only its batch). Output patterns
    # cannot depend on wildcards, so each batch is its own rule, extract_features_<cancer>_<id>;
    # a profile's set-resources for extract_features applies to all of them (common.smk).
    for _batch, _slides in FEATURE_BATCHES.items():

        rule:
            name:
                f"extract_features_{_batch}"
            input:
                slide=[batch_slide_input(s) for s in _slides],
                patches=[path_of("patches", slide=s) for s in _slides],
            output:
                [path_of("features", encoder=ENCODER, slide=s) for s in _slides],
            log:
                f"logs/features/{ENCODER}/{_batch}.log",
            benchmark:
                f"results/benchmarks/features/{ENCODER}/{_batch}.tsv"
            priority: 2
            conda:
                "../envs/wsikt.yaml"
            threads: config["features"]["threads"]
            resources:
                **feature_resources(len(_slides)),
            params:
                encoder=ENCODER,
                settings=get_feature_settings(),
            shell:
                "python -m wsikt.cli extract_features --slide {input.slide:q} --patches {input.patches:q}"
                " --out {output:q} --encoder {params.encoder:q} --settings {params.settings:q}"
                " --threads {threads} --log {log:q} 2>> {log:q}"

    apply_profile_resources(
        [f"extract_features_{b}" for b in FEATURE_BATCHES], "extract_features"
    )
