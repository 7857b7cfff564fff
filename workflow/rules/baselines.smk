# HistoKT-style transfer baselines (baselines.methods): fine-tuning from a source expert chosen on the
# training fold, or parameter averaging. Their settings reach only these rules.


rule train_baseline:
    input:
        embeddings=PATH["embeddings"],
        split=PATH["split"],
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{source}/fold{{fold}}/model.pt",
            source=CANCERS,
        ),
        bags=PATH["bags"],
    output:
        model="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/model.pt",
        predictions="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/predictions.tsv",
        metrics="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/metrics.json",
    log:
        "logs/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}.log",
    benchmark:
        "results/benchmarks/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}.tsv"
    wildcard_constraints:
        method="head|mlp|all|merge_tune|merge",
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        experts=config["experts"],
        baselines=config["baselines"],
        device=config["experts"]["device"],
    script:
        "../scripts/train_baseline.py"


rule summarise_baseline:
    input:
        metrics=expand(
            "results/baselines/{{encoder}}/{{model}}/{{endpoint}}/{{method}}/{cancer}/fold{fold}/metrics.json",
            cancer=CANCERS,
            fold=FOLDS,
        ),
    output:
        "results/baselines/{encoder}/{model}/{endpoint}/{method}/summary.tsv",
    log:
        "logs/baselines/{encoder}/{model}/{endpoint}/{method}/summary.log",
    benchmark:
        "results/benchmarks/baselines/{encoder}/{model}/{endpoint}/{method}/summary.tsv"
    wildcard_constraints:
        method="head|mlp|all|merge_tune|merge",
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/summarise_experts.py"
