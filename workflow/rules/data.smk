# Stage 1: make each dataset ready (generate synthetic ones; check downloaded ones).


rule prepare_dataset:
    conda:
        "../../environment.yml"
    output:
        LAYOUT.dataset_marker("{dataset}"),
    params:
        manifest=MANIFEST_FILE,
        data_root=ZOO.data_root,   # rerun triggers: the job reads them from the manifest
        catalog=ZOO.dataset_catalog,
    log:
        LAYOUT.log("prepare_dataset", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("prepare_dataset", "{dataset}")
    threads: 2
    shell:
        "python -m detectron_lib.cli zoo prepare-dataset {wildcards.dataset}"
        " --manifest {params.manifest:q} > {log} 2>&1"
