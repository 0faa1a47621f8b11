# Stage 6: the zoo table, rendered from every baseline's metrics, train stats and run file.


rule model_zoo_table:
    input:
        [path for name in ZOO.baselines for path in zoo_outputs(name)],
    output:
        ZOO.table,
    params:
        manifest=table_manifest,
    log:
        LAYOUT.log("model_zoo_table", ZOO.name),
    benchmark:
        LAYOUT.benchmark("model_zoo_table", ZOO.name)
    shell:
        "python -m detectron_lib.workflow_steps zoo-table --manifest-json {params.manifest:q}"
        " --output {output} > {log} 2>&1"
