# Stage 4: an RPN baseline writes its proposals for every dataset that a baseline trained on
# its proposals (proposals_from) trains or tests on.


rule dump_proposals:
    conda:
        "../../environment.yml"
    input:
        config=rpn_config,
        weights=LAYOUT.weights("{rpn}"),
        run=LAYOUT.run_file("{rpn}"),
        dataset=LAYOUT.dataset_marker("{dataset}"),
    output:
        proposals=LAYOUT.proposals("{rpn}", "{dataset}"),
        metrics=LAYOUT.proposal_metrics("{rpn}", "{dataset}"),
    params:
        manifest=MANIFEST_FILE,
        overrides=lambda wildcards: overrides_of(wildcards.rpn),   # a rerun trigger
    priority: PROPOSAL_CHAIN_PRIORITY
    threads: resource_of("threads")
    resources:
        gpu=lambda wildcards: min(1, ZOO.baseline(wildcards.rpn).resources.gpus),
        mem_mb=resource_of("mem_mb"),
        runtime=resource_of("runtime"),
    log:
        LAYOUT.log("dump_proposals", "{rpn}_{dataset}"),
    benchmark:
        LAYOUT.benchmark("dump_proposals", "{rpn}_{dataset}")
    shell:
        "python -m detectron_lib.cli zoo dump-proposals {wildcards.rpn} {wildcards.dataset}"
        " --manifest {params.manifest:q} --threads {threads} --log-file {log} > {log} 2>&1"
