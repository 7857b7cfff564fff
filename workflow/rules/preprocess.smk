# Preprocessing: per slide, tissue segmentation, patching at the target mpp, QC image.


rule preprocess_slide:
    input:
        slide=get_slide_path,
    output:
        tissue="results/tissue/{slide}.geojson",
        patches="results/patches/{slide}.h5",
        qc="results/qc/{slide}.png",
    log:
        "logs/preprocess/{slide}.log",
    benchmark:
        "results/benchmarks/preprocess/{slide}.tsv"
    threads: 1
    params:
        mpp_override=get_mpp_override,
        target_mpp=config["preprocess"]["target_mpp"],
        patch_size=config["preprocess"]["patch_size"],
        mpp_tolerance=config["preprocess"]["mpp_tolerance"],
        min_tissue_fraction=config["preprocess"]["min_tissue_fraction"],
        segmentation=config["preprocess"]["segmentation"],
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/preprocess_slide.py"
