# Labels, patient-level splits, and per-cancer expert survival models (one job per cancer × fold).
# Slide lists reach rules as params (not the sample sheet as input): a new slide reruns its cancer only.


rule build_labels:
    input:
        clinical=CLINICAL,
    output:
        labels="results/labels/{endpoint}/{cancer}.tsv",
        excluded="results/labels/{endpoint}/{cancer}.excluded.tsv",
    log:
        "logs/labels/{endpoint}/{cancer}.log",
    benchmark:
        "results/benchmarks/labels/{endpoint}/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        endpoint="{endpoint}",
        cancer="{cancer}",
        slides=get_cancer_slides,
    script:
        "../scripts/build_labels.py"


rule make_splits:
    input:
        labels="results/labels/{endpoint}/{cancer}.tsv",
        patches=get_cancer_patches,
    output:
        split="results/splits/{endpoint}/{cancer}.tsv",
        excluded="results/splits/{endpoint}/{cancer}.excluded.tsv",
    log:
        "logs/splits/{endpoint}/{cancer}.log",
    benchmark:
        "results/benchmarks/splits/{endpoint}/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        slides=get_cancer_slides,
        folds=config["experts"]["folds"],
        seed=config["experts"]["seed"],
    script:
        "../scripts/make_splits.py"


rule train_expert:
    input:
        split="results/splits/{endpoint}/{cancer}.tsv",
        bags="results/bags/{encoder}/{cancer}.tsv",
    output:
        model="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/model.pt",
        predictions="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/predictions.tsv",
        metrics="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/metrics.json",
    log:
        "logs/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}.log",
    benchmark:
        "results/benchmarks/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}.tsv"
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        settings=get_train_settings(),
        gate=get_null_gate(),
        device=config["experts"]["device"],
    script:
        "../scripts/train_expert.py"


rule summarise_experts:
    input:
        metrics=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{cancer}/fold{fold}/metrics.json",
            cancer=CANCERS,
            fold=FOLDS,
        ),
    output:
        report(
            "results/experts/{encoder}/{model}/{endpoint}/summary.tsv",
            caption="../report/experts.rst",
            category="Experts",
        ),
    log:
        "logs/experts/{encoder}/{model}/{endpoint}/summary.log",
    benchmark:
        "results/benchmarks/experts/{encoder}/{model}/{endpoint}/summary.tsv"
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/summarise_experts.py"
