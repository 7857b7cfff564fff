# Statistics from prediction files only: chance references (test-fold permutations), paired bootstrap
# intervals against the cancers' own experts, transfer-matrix cell CIs. Their settings (stats.*) reach
# only these rules and the report, so changing them retrains nothing. The opt-in retrained null
# (stats.permutations > 0) is the one stats rule that trains models.
STATS = "results/stats/{encoder}/{model}/{endpoint}"
STATS_CHEAP = StatsSettings.from_config(
    config["stats"]
).cheap()  # every stats key but permutations


rule stats_chance:
    input:
        unpack(stats_predictions),
    output:
        chance=f"{STATS}/chance.tsv",
        compare=f"{STATS}/compare.tsv",
    log:
        "logs/stats/{encoder}/{model}/{endpoint}/chance.log",
    benchmark:
        "results/benchmarks/stats/{encoder}/{model}/{endpoint}/chance.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        stats=STATS_CHEAP,
        methods=stats_methods(),
    script:
        "../scripts/stats_chance.py"


rule stats_matrix:
    input:
        embeddings=expand(PATH["embeddings"], cancer=CANCERS, allow_missing=True),
        splits=expand(PATH["split"], cancer=CANCERS, allow_missing=True),
    output:
        f"{STATS}/matrix_ci.tsv",
    log:
        "logs/stats/{encoder}/{model}/{endpoint}/matrix_ci.log",
    benchmark:
        "results/benchmarks/stats/{encoder}/{model}/{endpoint}/matrix_ci.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        stats=STATS_CHEAP,
    script:
        "../scripts/stats_matrix.py"


rule stats_retrained_null:
    input:
        split=PATH["split"],
        bags=PATH["bags"],
        embeddings=get_routed_embeddings,
    output:
        f"{STATS}/retrained_null/{{cancer}}.tsv",
    log:
        "logs/stats/{encoder}/{model}/{endpoint}/retrained_null/{cancer}.log",
    benchmark:
        "results/benchmarks/stats/{encoder}/{model}/{endpoint}/retrained_null/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        permutations=config["stats"]["permutations"],
        seed=config["stats"]["seed"],
        experts=config["experts"],
        roupkt=config["roupkt"],
        roupkt_targets=ROUPKT_TARGETS,
        device=config["experts"]["device"],
    script:
        "../scripts/stats_retrained_null.py"
