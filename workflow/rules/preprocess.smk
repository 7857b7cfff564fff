# Preprocessing: per slide, tissue segmentation (CLAM's algorithm and presets), aligned multi-level
# patching at the target mpp, QC images. A bad slide gets empty outputs with a status (on_error: skip).


rule preprocess_slide:
    input:
        slide=get_slide_path,
    output:
        tissue="results/tissue/{slide}.geojson",
        patches="results/patches/{slide}.h5",
        qc_tissue="results/qc/tissue/{slide}.png",
        qc="results/qc/patches/{slide}.png",
    log:
        "logs/preprocess/{slide}.log",
    benchmark:
        "results/benchmarks/preprocess/{slide}.tsv"
    threads: 1
    params:
        mpp_override=get_mpp_override,
        settings=get_patch_settings(),
        on_error=config["preprocess"]["on_error"],
    conda:
        "../envs/wsikt.yaml"
    script:
        "../scripts/preprocess_slide.py"
