# Stage 2b: pretrain a body on object crops (the zoo's stand-in for ImageNet pretraining); the
# baselines that name it in weights_from start from these weights (TRAIN.WEIGHTS). Scheduled
# first: most baselines wait for it.


rule pretrain:
    conda:
        "../../environment.yml"
    input:
        unpack(pretrain_inputs),
    output:
        weights=LAYOUT.pretrained_weights("{pretrained}"),
        run=LAYOUT.pretrained_run("{pretrained}"),
    params:
        manifest=MANIFEST_FILE,
        # a rerun trigger: the job reads them from the manifest
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
        "python -m detectron_lib.cli zoo pretrain {wildcards.pretrained}"
        " --manifest {params.manifest:q} --threads {threads} --log-file {log} > {log} 2>&1"
