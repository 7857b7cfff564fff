# ROUPKT: routing over the frozen experts' cached embeddings, one job per target × fold. Its settings
# reach only these rules, so changing them retrains no expert and recomputes no embedding.


rule train_roupkt:
    input:
        embeddings=PATH["embeddings"],
        split=PATH["split"],
        bags=PATH["bags"],
    output:
        model="results/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/model.pt",
        predictions="results/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/predictions.tsv",
        router="results/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/router.tsv",
        metrics="results/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}/metrics.json",
    log:
        "logs/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}.log",
    benchmark:
        "results/benchmarks/roupkt/{encoder}/{model}/{endpoint}/{cancer}/fold{fold}.tsv"
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        experts=config["experts"],
        roupkt=config["roupkt"],
        device=config["experts"]["device"],
    script:
        "../scripts/train_roupkt.py"


rule summarise_roupkt:
    input:
        metrics=expand(
            "results/roupkt/{{encoder}}/{{model}}/{{endpoint}}/{cancer}/fold{fold}/metrics.json",
            cancer=ROUPKT_TARGETS,
            fold=FOLDS,
        ),
    output:
        "results/roupkt/{encoder}/{model}/{endpoint}/summary.tsv",
    log:
        "logs/roupkt/{encoder}/{model}/{endpoint}/summary.log",
    benchmark:
        "results/benchmarks/roupkt/{encoder}/{model}/{endpoint}/summary.tsv"
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/summarise_experts.py"
