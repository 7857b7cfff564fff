# Per-cancer expert survival models: one job per cancer × fold, then one summary table.


rule train_expert:
    input:
        split=PATH["split"],
        bags=PATH["bags"],
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
        experts=config["experts"],
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
