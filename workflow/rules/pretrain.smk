# Stage 2b: pretrain a body on object crops (the zoo's stand-in for ImageNet pretraining); the
# baselines that name it in weights_from start from these weights (TRAIN.WEIGHTS). Scheduled
# first: most baselines wait for it.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        weights=LAYOUT.pretrained_weights("{pretrained}"),
        run=LAYOUT.pretrained_run("{pretrained}"),
    params:
        overrides=lambda wildcards: join_overrides(ZOO.pretrained_overrides(wildcards.pretrained)),
    priority: PRETRAIN_PRIORITY
    threads: resource_of("threads")
    resources:
        gpu=resource_of("gpus"),
        mem_mb=resource_of("mem_mb"),
        runtime=resource_of("runtime"),
    log:
        LAYOUT.log("pretrain", "{pretrained}"),
    benchmark:
        LAYOUT.benchmark("pretrain", "{pretrained}")
    shell:
        "python -m detectron_lib.workflow_steps pretrain --name {wildcards.pretrained}"
        " --cfg {input.config} --output {output.weights} --experiment-file {input.experiment}"
        " --run-file {output.run} --threads {threads} --log-file {log}"
        " {params.overrides} > {log} 2>&1"
