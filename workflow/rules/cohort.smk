# The cohort for modelling: labels from the clinical table, patient-level splits (config section
# splits: stratified, site-preserved, external cohort or a paper's fold files), and one bag index
# per cancer that lists (and checks) its feature files for every model rule downstream. Slide lists
# reach rules as params (not the sample sheet as input): a new slide reruns its cancer only.


rule build_labels:
    input:
        clinical=CLINICAL_INPUT,
    output:
        labels=PATH["labels"],
        excluded="results/labels/{endpoint}/{cancer}.excluded.tsv",
    log:
        "logs/labels/{endpoint}/{cancer}.log",
    benchmark:
        "results/benchmarks/labels/{endpoint}/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        endpoint="{endpoint}",
        cancer="{cancer}",
        slides=get_cancer_slides,
        types=get_clinical_types,
    script:
        "../scripts/build_labels.py"


rule make_splits:
    input:
        labels=PATH["labels"],
        patches=get_cancer_patches,
        fold_files=get_fold_files,
    output:
        split=PATH["split"],
        excluded="results/splits/{endpoint}/{cancer}.excluded.tsv",
    log:
        "logs/splits/{endpoint}/{cancer}.log",
    benchmark:
        "results/benchmarks/splits/{endpoint}/{cancer}.tsv"
    conda:
        "../envs/wsikt.yaml"
    params:
        slides=get_cancer_slides,
        folds=config["experts"]["folds"],
        seed=config["experts"]["seed"],
        splits=config["splits"],
        sites=get_cancer_sites,
        cohorts=get_cancer_cohorts,
    script:
        "../scripts/make_splits.py"


rule bag_index:
    input:
        features=get_cancer_features,
    output:
        PATH["bags"],
    log:
        "logs/bags/{encoder}/{cancer}.log",
    conda:
        "../envs/wsikt.yaml"
    params:
        slides=get_cancer_slides,
    script:
        "../scripts/bag_index.py"
