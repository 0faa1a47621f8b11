# Stage 3: train a baseline, on images or on the proposals of its RPN baseline. One process
# for <= 1 GPU, torchrun with one worker per GPU otherwise; the job's threads are split among
# the workers (OMP_NUM_THREADS per worker) by the step itself. A baseline on several nodes
# (resources: nodes) runs one torchrun per node under srun, within one SLURM allocation.


rule train:
    conda:
        "../../environment.yml"
    input:
        unpack(train_inputs),
    output:
        weights=LAYOUT.weights("{baseline}"),
        stats=LAYOUT.train_stats("{baseline}"),
        run=LAYOUT.run_file("{baseline}"),
    params:
        manifest=MANIFEST_FILE,
        overrides=lambda wildcards: overrides_of(wildcards.baseline),   # a rerun trigger
        launcher=train_launcher,
    priority: train_priority
    threads: resource_of("threads")
    resources:
        gpu=multinode_resource("gpu"),
        mem_mb=resource_of("mem_mb"),
        runtime=resource_of("runtime"),
        nodes=resource_of("nodes"),
        mpi=multinode_resource("mpi"),
        tasks=multinode_resource("tasks"),
        slurm_extra=multinode_resource("slurm_extra"),
    log:
        LAYOUT.log("train", "{baseline}"),
    benchmark:
        LAYOUT.benchmark("train", "{baseline}")
    shell:
        "{params.launcher} -m detectron_lib.cli zoo train {wildcards.baseline}"
        " --manifest {params.manifest:q} --threads {threads} --log-file {log} > {log} 2>&1"
