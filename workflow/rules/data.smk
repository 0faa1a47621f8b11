# Stage 1: make each dataset ready (generate synthetic ones; check downloaded ones).


rule prepare_dataset:
    output:
        LAYOUT.dataset_marker("{dataset}"),
    params:
        data_root=ZOO.data_root,
        catalog=ZOO.dataset_catalog,
    log:
        LAYOUT.log("prepare_dataset", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("prepare_dataset", "{dataset}")
    threads: 2
    shell:
        "python -m detectron_lib.workflow_steps prepare-dataset {wildcards.dataset}"
        " --output {output} --data-root={params.data_root:q} --catalog={params.catalog:q}"
        " > {log} 2>&1"
