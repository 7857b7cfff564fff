# Preprocessing: per slide, tissue segmentation (CLAM's algorithm and presets), aligned multi-level
# patching at the target mpp, QC images. A bad slide gets empty outputs with a status (on_error: skip).
# Per-slide rules run `python -m wsikt.cli <rule>` (shell:, not script:): see common.smk.


rule preprocess_slide:
    input:
        slide=SLIDE_INPUT,
    output:
        tissue="results/tissue/{slide}.geojson",
        patches=PATH["patches"],
        qc_tissue="results/qc/tissue/{slide}.png",
        qc=PATH["qc_patches"],
    log:
        "logs/preprocess/{slide}.log",
    benchmark:
        "results/benchmarks/preprocess/{slide}.tsv"
    priority: 1
    conda:
        "../envs/wsikt.yaml"
    threads: 1
    params:
        mpp_override=MPP_OVERRIDE,
        settings=get_patch_settings(),
        on_error=config["preprocess"]["on_error"],
    shell:
        "python -m wsikt.cli preprocess_slide --slide {input.slide:q} --slide-id {wildcards.slide:q}"
        " --tissue {output.tissue:q} --patches {output.patches:q} --qc-tissue {output.qc_tissue:q}"
        " --qc {output.qc:q} --settings {params.settings:q} --mpp-override '{params.mpp_override}'"
        " --on-error {params.on_error} --log {log:q} 2>> {log:q}"
