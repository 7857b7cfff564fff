# Cross-cancer transfer. One pass per target cancer runs every expert (every source, every fold, and
# the target's own "self" experts) over all the target's patients: 512-d bag embeddings and risks are
# cached once and reused by the zero-shot matrix, ROUPKT and the fine-tuning baselines.


rule embed_cohort:
    input:
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{source}/fold{fold}/model.pt",
            source=CANCERS,
            fold=FOLDS,
        ),
        split=PATH["split"],
        bags=PATH["bags"],
    output:
        embeddings=PATH["embeddings"],
        zero_shot=PATH["zero_shot"],
        training=PATH["selection"],
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
        zero_shot=expand(PATH["zero_shot"], cancer=CANCERS, allow_missing=True),
        training=expand(PATH["selection"], cancer=CANCERS, allow_missing=True),
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


# HistoKT's fine-tuned matrix (opt-in, transfer.finetuned): every other source's fold-k expert
# fine-tuned (head, all) on each target's training fold k, scored on its test fold.
rule finetuned_cells:
    input:
        embeddings=PATH["embeddings"],
        split=PATH["split"],
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{source}/fold{{fold}}/model.pt",
            source=CANCERS,
        ),
        bags=PATH["bags"],
    output:
        f"{TRANSFER}/finetuned/{{method}}/{{cancer}}/fold{{fold}}.tsv",
    log:
        "logs/transfer/{encoder}/{model}/{endpoint}/finetuned/{method}/{cancer}/fold{fold}.log",
    benchmark:
        "results/benchmarks/transfer/{encoder}/{model}/{endpoint}/finetuned/{method}/{cancer}/fold{fold}.tsv"
    wildcard_constraints:
        method="head|all",
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
        "../scripts/finetuned_cells.py"


rule finetuned_matrix:
    input:
        cells=expand(
            f"{TRANSFER}/finetuned/{{method}}/{{cancer}}/fold{{fold}}.tsv",
            method=config["transfer"]["finetuned"],
            cancer=CANCERS,
            fold=FOLDS,
            allow_missing=True,
        ),
    output:
        cells=f"{TRANSFER}/finetuned_folds.tsv",
        matrix=PATH["finetuned_matrix"],
    log:
        "logs/transfer/{encoder}/{model}/{endpoint}/finetuned_matrix.log",
    benchmark:
        "results/benchmarks/transfer/{encoder}/{model}/{endpoint}/finetuned_matrix.tsv"
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/finetuned_matrix.py"
