# Stage 2: create the MLflow store and the zoo's experiment once, before any parallel job
# (SQLite schema creation is not safe to race).


rule mlflow_init:
    output:
        LAYOUT.experiment_file,
    params:
        experiment=ZOO.name,
        artifact_root=LAYOUT.artifact_dir,
    log:
        LAYOUT.log("mlflow_init", ZOO.name),
    benchmark:
        LAYOUT.benchmark("mlflow_init", ZOO.name)
    shell:
        "python -m detectron_lib.workflow_steps mlflow-init --experiment {params.experiment}"
        " --artifact-root {params.artifact_root} --output {output} > {log} 2>&1"
