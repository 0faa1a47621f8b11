# Stage 0: fetch each file the baselines' configs name by URL (TRAIN.WEIGHTS: Detectron's
# ImageNet bodies) into the shared download cache, results/weights/<host>/<path of the URL>,
# once for every training that reads it. A local rule (Snakefile): it runs on the submit host,
# since compute nodes may have no internet access; the train jobs read only that cache (their
# DOWNLOAD_CACHE, downloads off). Offline, put the files there by hand: the job's error names
# each URL and its place.


rule fetch_weights:
    conda:
        "../../environment.yml"
    output:
        LAYOUT.download("{download}"),
    params:
        manifest=MANIFEST_FILE,
        url=lambda wildcards: DOWNLOADS[wildcards.download],
    log:
        LAYOUT.log("fetch_weights", "{download}"),
    shell:
        "python -m detectron_lib.cli zoo fetch-weights {params.url:q}"
        " --manifest {params.manifest:q} > {log} 2>&1"
