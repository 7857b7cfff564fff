# Labels, patient-level splits, and per-cancer expert survival models (one job per cancer × fold).


rule build_labels:
    input:
        clinical=CLINICAL,
        samples=SAMPLES_TSV,
    output:
        labels="results/labels/{endpoint}.tsv",
        excluded="results/labels/{endpoint}.excluded.tsv",
    log:
        "logs/labels/{endpoint}.log",
    params:
        endpoint="{endpoint}",
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/build_labels.py"


rule make_splits:
    input:
        labels="results/labels/{endpoint}.tsv",
        samples=SAMPLES_TSV,
        patches=get_cancer_patches,
    output:
        split="results/splits/{endpoint}/{cancer}.tsv",
        excluded="results/splits/{endpoint}/{cancer}.excluded.tsv",
    log:
        "logs/splits/{endpoint}/{cancer}.log",
    params:
        folds=config["experts"]["folds"],
        seed=config["experts"]["seed"],
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/make_splits.py"


rule train_expert:
    input:
        split="results/splits/{endpoint}/{cancer}.tsv",
        samples=SAMPLES_TSV,
        features=get_cancer_features,
    output:
        model="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/model.pt",
        predictions="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/predictions.tsv",
        metrics="results/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/metrics.json",
    log:
        "logs/experts/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}.log",
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        settings=get_train_settings(),
        device=config["experts"]["device"],
    conda:
        "../envs/wsikt.yaml"
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
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/summarise_experts.py"
