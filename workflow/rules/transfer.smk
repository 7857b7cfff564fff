# Cross-cancer transfer. One pass per target cancer runs every expert (every source, every fold, and
# the target's own "self" experts) over all the target's patients: 512-d bag embeddings and risks are
# cached once and reused by the zero-shot matrix, ROUPKT and the fine-tuning baselines. ROUPKT and
# baseline settings reach only their own rules, so changing them retrains no expert and recomputes
# no embedding.
TRANSFER = "results/transfer/{encoder}/{model}/{endpoint}"


rule embed_cohort:
    input:
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{source}/fold{fold}/model.pt",
            source=CANCERS,
            fold=FOLDS,
        ),
        split="results/splits/{endpoint}/{cancer}.tsv",
        bags="results/bags/{encoder}/{cancer}.tsv",
    output:
        embeddings=f"{TRANSFER}/embeddings/{{cancer}}.h5",
        zero_shot=f"{TRANSFER}/zero_shot/{{cancer}}.tsv",
        training=f"{TRANSFER}/selection/{{cancer}}.tsv",
    log:
        "logs/transfer/{encoder}/{model}/{endpoint}/embed/{cancer}.log",
    benchmark:
        "results/benchmarks/transfer/{encoder}/{model}/{endpoint}/embed/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        device=config["experts"]["device"],
        chunk=config["transfer"]["chunk"],
    script:
        "../scripts/embed_cohort.py"


rule transfer_matrix:
    input:
        zero_shot=expand(
            f"{TRANSFER}/zero_shot/{{cancer}}.tsv", cancer=CANCERS, allow_missing=True
        ),
        training=expand(
            f"{TRANSFER}/selection/{{cancer}}.tsv", cancer=CANCERS, allow_missing=True
        ),
    output:
        folds=f"{TRANSFER}/transfer_folds.tsv",
        matrix=report(
            f"{TRANSFER}/matrix.tsv",
            caption="../report/transfer.rst",
            category="Transfer",
        ),
        matrix_train=f"{TRANSFER}/matrix_train.tsv",
        positive=f"{TRANSFER}/positive.tsv",
    log:
        "logs/transfer/{encoder}/{model}/{endpoint}/matrix.log",
    benchmark:
        "results/benchmarks/transfer/{encoder}/{model}/{endpoint}/matrix.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        thresholds=config["transfer"]["thresholds"],
    script:
        "../scripts/transfer_matrix.py"


rule train_roupkt:
    input:
        embeddings=f"{TRANSFER}/embeddings/{{cancer}}.h5",
        split="results/splits/{endpoint}/{cancer}.tsv",
        bags="results/bags/{encoder}/{cancer}.tsv",
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
        settings=get_train_settings(),
        roupkt=get_roupkt_settings(),
        device=config["experts"]["device"],
    script:
        "../scripts/train_roupkt.py"


rule train_baseline:
    input:
        embeddings=f"{TRANSFER}/embeddings/{{cancer}}.h5",
        split="results/splits/{endpoint}/{cancer}.tsv",
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{source}/fold{{fold}}/model.pt",
            source=CANCERS,
        ),
        bags="results/bags/{encoder}/{cancer}.tsv",
    output:
        model="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/model.pt",
        predictions="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/predictions.tsv",
        metrics="results/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}/metrics.json",
    log:
        "logs/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}.log",
    benchmark:
        "results/benchmarks/baselines/{encoder}/{model}/{endpoint}/{method}/{cancer}/fold{fold}.tsv"
    wildcard_constraints:
        method="head|mlp|all|merge",
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        settings=get_train_settings(),
        baseline=get_baseline_settings(),
        device=config["experts"]["device"],
    script:
        "../scripts/train_baseline.py"


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
        method="head|mlp|all|merge",
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/summarise_experts.py"
