# Stage 6: the zoo table, rendered from every baseline's metrics, train stats and run file.


rule model_zoo_table:
    conda:
        "../../environment.yml"
    input:
        [path for name in ZOO.baselines for path in zoo_outputs(name)],
    output:
        ZOO.table,
    params:
        manifest=MANIFEST_FILE,
        content=table_manifest,   # a rerun trigger: the job reads the manifest file
    log:
        LAYOUT.log("model_zoo_table", ZOO.name),
    benchmark:
        LAYOUT.benchmark("model_zoo_table", ZOO.name)
    shell:
        "python -m detectron_lib.cli zoo table --manifest {params.manifest:q} > {log} 2>&1"
