# Cross-cancer transfer: every source expert, unchanged, predicts every target's test folds.


rule transfer_matrix:
    input:
        experts=expand(
            "results/experts/{{encoder}}/{{model}}/{{endpoint}}/{cancer}/fold{fold}/model.pt",
            cancer=CANCERS,
            fold=FOLDS,
        ),
        splits=expand("results/splits/{{endpoint}}/{cancer}.tsv", cancer=CANCERS),
        features=get_all_features,
    output:
        folds="results/transfer/{encoder}/{model}/{endpoint}/transfer_folds.tsv",
        matrix=report(
            "results/transfer/{encoder}/{model}/{endpoint}/matrix.tsv",
            caption="../report/transfer.rst",
            category="Transfer",
        ),
    log:
        "logs/transfer/{encoder}/{model}/{endpoint}/matrix.log",
    benchmark:
        "results/benchmarks/transfer/{encoder}/{model}/{endpoint}/matrix.tsv"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        device=config["experts"]["device"],
        slides=get_all_slides,
        cancers=CANCERS,
        folds=FOLDS,
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/transfer_matrix.py"
