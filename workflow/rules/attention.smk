# Attention heatmaps. One job per cancer and model kind (the experts; the ROUPKT router) reads every
# outer fold's saved model and writes its per-patch attention over that fold's test slides (h5 + one
# QuPath GeoJSON per slide); one job draws the sampled heatmaps, the gallery and the attention-density
# table. They read saved models only: changing report.heatmaps reruns no training. One job per cancer,
# not per fold: each job's start-up (torch) costs more than its attention pass on the demo.
ATTENTION = "results/attention/{encoder}/{model}/{endpoint}/{source}/{cancer}"


rule attention_layers:
    input:
        split=PATH["split"],
        bags=PATH["bags"],
        models=expand(
            "results/{{source}}/{{encoder}}/{{model}}/{{endpoint}}/{{cancer}}/fold{fold}/model.pt",
            fold=FOLDS,
        ),
        predictions=expand(
            "results/{{source}}/{{encoder}}/{{model}}/{{endpoint}}/{{cancer}}/fold{fold}/predictions.tsv",
            fold=FOLDS,
        ),
    output:
        h5=f"{ATTENTION}/attention.h5",
        geojson=directory(f"{ATTENTION}/geojson"),
    log:
        "logs/attention/{encoder}/{model}/{endpoint}/{source}/{cancer}.log",
    benchmark:
        "results/benchmarks/attention/{encoder}/{model}/{endpoint}/{source}/{cancer}.tsv"
    wildcard_constraints:
        source="experts|roupkt",
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    resources:
        gpu=config["experts"]["gpus"],
    params:
        device=config["experts"]["device"],
    script:
        "../scripts/attention_layers.py"


rule heatmaps:
    input:
        experts=get_attention_layers("experts"),
        routers=get_attention_layers("roupkt"),
        slides=list(HEATMAP_SLIDES.values()),
    output:
        folder=directory("results/report/heatmaps"),
        index="results/report/heatmaps.tsv",
        density="results/report/attention_density.tsv",
    log:
        "logs/report/heatmaps.log",
    benchmark:
        "results/benchmarks/heatmaps/heatmaps.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        heatmaps=config["report"]["heatmaps"],
        top_patches=config["report"]["top_patches"],
        slides=HEATMAP_SLIDES,
        mechanisms=DEMO_MECHANISMS,
        model=MODEL,
    script:
        "../scripts/heatmaps.py"
