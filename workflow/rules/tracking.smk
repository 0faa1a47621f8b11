# Stage 2: create the MLflow store and the zoo's experiment once, before any parallel job
# (SQLite schema creation is not safe to race).


rule mlflow_init:
    conda:
        "../../environment.yml"
    output:
        LAYOUT.experiment_file,
    params:
        manifest=MANIFEST_FILE,
    log:
        LAYOUT.log("mlflow_init", ZOO.name),
    benchmark:
        LAYOUT.benchmark("mlflow_init", ZOO.name)
    shell:
        "python -m detectron_lib.cli zoo mlflow-init --manifest {params.manifest:q} > {log} 2>&1"
