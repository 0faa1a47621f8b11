# Stage 5: evaluate a baseline's final weights on its TEST.DATASETS (pycocotools). An RPN
# baseline whose proposals are dumped for its test sets is evaluated by those dumps (same
# inference, same recall), so its model does not run twice.


rule evaluate:
    conda:
        "../../environment.yml"
    input:
        unpack(evaluate_inputs),
    output:
        metrics=LAYOUT.metrics("{baseline}"),
    params:
        manifest=MANIFEST_FILE,
        overrides=lambda wildcards: overrides_of(wildcards.baseline),   # a rerun trigger
    priority: evaluate_priority
    threads: resource_of("threads")
    resources:
        gpu=lambda wildcards: min(1, ZOO.baseline(wildcards.baseline).resources.gpus),
        mem_mb=resource_of("mem_mb"),
        runtime=resource_of("runtime"),
    log:
        LAYOUT.log("evaluate", "{baseline}"),
    benchmark:
        LAYOUT.benchmark("evaluate", "{baseline}")
    shell:
        "python -m detectron_lib.cli zoo evaluate {wildcards.baseline}"
        " --manifest {params.manifest:q} --threads {threads} --log-file {log} > {log} 2>&1"
