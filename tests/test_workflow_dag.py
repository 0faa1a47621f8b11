"""The model-zoo DAG run end to end by Snakemake on a micro manifest, in a fresh working
directory with a fresh SQLite tracking store.

The micro zoo has three tiny baselines (64 px images, 3 iterations): an RPN, a Fast R-CNN
trained and tested on that RPN's dumped proposals, and an end-to-end Faster R-CNN. The
checks compare against what the DAG itself must have produced: the files on disk, the runs
in the MLflow store (read back with MlflowClient), the rendered MODEL_ZOO.md, and the job
lists of Snakemake dry runs after no change / after touching one config.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from detectron_lib.data.shapes import generate_shapes_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile")]

MICRO_BASE_CONFIG = {
    "MODEL": {"TYPE": "generalized_rcnn", "CONV_BODY": "FPN.add_fpn_ResNet18_conv5_body",
              "NUM_CLASSES": 7, "FASTER_RCNN": True, "BBOX_LEGACY_PLUS_ONE": False},
    "RESNETS": {"TRANS_FUNC": "basic_gn_transformation", "STEM_FUNC": "basic_gn_stem",
                "SHORTCUT_FUNC": "basic_gn_shortcut"},
    "SOLVER": {"BASE_LR": 0.01, "LR_POLICY": "steps_with_decay", "MAX_ITER": 3, "STEPS": [0],
               "WARM_UP_ITERS": 0},
    "FPN": {"FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True, "DIM": 32,
            "USE_GN": True, "RPN_ANCHOR_START_SIZE": 16},
    "FAST_RCNN": {"ROI_BOX_HEAD": "fast_rcnn_heads.add_roi_2mlp_head",
                  "ROI_XFORM_METHOD": "RoIAlign", "ROI_XFORM_RESOLUTION": 7,
                  "ROI_XFORM_SAMPLING_RATIO": 2, "MLP_HEAD_DIM": 64},
    "TRAIN": {"DATASETS": "('micro_train',)", "SCALES": "(64,)", "MAX_SIZE": 96,
              "IMS_PER_BATCH": 2, "BATCH_SIZE_PER_IM": 32, "RPN_PRE_NMS_TOP_N": 200,
              "RPN_POST_NMS_TOP_N": 100, "FREEZE_AT": 0, "SNAPSHOT_ITERS": 1000},
    "TEST": {"DATASETS": "('micro_val',)", "SCALE": 64, "MAX_SIZE": 96,
             "RPN_PRE_NMS_TOP_N": 200, "RPN_POST_NMS_TOP_N": 100},
    "DATA_LOADER": {"NUM_THREADS": 1},
    "DEVICE": "cpu",
}
MICRO_BASELINES = {
    "rpn_R-18-FPN_1x": ({"MODEL": {"RPN_ONLY": True, "FASTER_RCNN": False}}, "rpn", None),
    "fast_rcnn_R-18-FPN_1x": ({"MODEL": {"FASTER_RCNN": False}}, "fast_mask_on_proposals",
                              "rpn_R-18-FPN_1x"),
    "e2e_faster_rcnn_R-18-FPN_1x": ({}, "end_to_end", None),
}


def _merged(base, extra):
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def write_micro_zoo(root, names=tuple(MICRO_BASELINES)):
    """Datasets, catalog, configs and manifest of the micro zoo (its baselines ``names``)
    under ``root``; returns the manifest path (relative to root, as the DAG sees it)."""
    root = Path(root)
    catalog = {}
    for name, num_images, seed in (("micro_train", 4, 21), ("micro_val", 3, 22)):
        annotations = generate_shapes_dataset(root / "data" / name, num_images, seed)
        catalog[name] = {"annotation_file": str(annotations),
                         "image_directory": str(annotations.parent / "images")}
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    baselines = {}
    for name in names:
        extra, section, proposals_from = MICRO_BASELINES[name]
        config_path = root / "configs" / f"{name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(_merged(MICRO_BASE_CONFIG, extra)))
        baselines[name] = {"config": f"configs/{name}.yaml", "section": section}
        if proposals_from:
            baselines[name]["proposals_from"] = proposals_from
    manifest = {"name": "micro", "title": "Micro zoo", "table": "MODEL_ZOO.md",
                "dataset_catalog": "catalog.yaml",
                "default_resources": {"gpus": 0, "threads": 1, "runtime": 10, "mem_mb": 1000},
                "baselines": baselines}
    (root / "micro.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return "micro.yaml"


def snakemake(workdir, *args, check=True, timeout=600):
    """Run Snakemake on the repository's Snakefile in ``workdir``; returns the process."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}"
                         for p in Path(workdir, "results", "logs").rglob("*.log"))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-6000:]}\n{logs}")
    return proc


def planned_job_blocks(dry_run_output):
    """((rule, wildcards), text) of every job a dry run lists, e.g.
    (('train', 'baseline=rpn_...'), its lines)."""
    for block in re.split(r"\n(?=\[[^\]]+\]\n|rule |localrule )", dry_run_output):
        match = re.search(r"^(?:local)?rule (\S+):", block, re.MULTILINE)
        if not match:
            continue
        wildcards = re.search(r"^\s+wildcards: (.+)$", block, re.MULTILINE)
        yield (match.group(1), wildcards.group(1).strip() if wildcards else ""), block


def planned_jobs(dry_run_output):
    """(rule, wildcards) of every job a dry run lists, e.g. ('train', 'baseline=rpn_...')."""
    return {job for job, _ in planned_job_blocks(dry_run_output)}


def edit_config(path):
    """Change a config file's content without changing the config it describes."""
    with open(path, "a") as f:
        f.write("# edited\n")


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The micro zoo, built once with 8 parallel jobs into a fresh directory."""
    workdir = tmp_path_factory.mktemp("micro_zoo")
    manifest = write_micro_zoo(workdir)
    start = time.perf_counter()
    proc = snakemake(workdir, "--cores", "8", "reproduce_model_zoo", "--configfile", manifest)
    return {"dir": workdir, "manifest": manifest, "seconds": time.perf_counter() - start,
            "stderr": proc.stderr}


@pytest.mark.slow
def test_micro_zoo_produces_metrics_and_table(micro_run):
    workdir = micro_run["dir"]
    for name in MICRO_BASELINES:
        assert (workdir / f"results/micro/{name}/eval/metrics.json").is_file()
        assert (workdir / f"results/micro/{name}/train/train_stats.json").is_file()
        assert (workdir / f"results/logs/micro/train/{name}.log").is_file()
        assert (workdir / f"results/benchmarks/micro/train/{name}.tsv").is_file()
    for dataset in ("micro_train", "micro_val"):
        assert (workdir / f"results/micro/rpn_R-18-FPN_1x/proposals/{dataset}.pkl").is_file()
    # The RPN tests on micro_val, which it dumps: its evaluation is that dump's recall.
    rpn_dir = workdir / "results/micro/rpn_R-18-FPN_1x"
    dumped = json.loads((rpn_dir / "proposals/micro_val_metrics.json").read_text())
    evaluated = json.loads((rpn_dir / "eval/metrics.json").read_text())
    assert "proposals/AR@1000" in dumped and "inference_time_s_per_im" in dumped
    assert {k: evaluated[k] for k in dumped} == dumped
    table = (workdir / "MODEL_ZOO.md").read_text()
    assert "## RPN Proposal Baselines" in table
    assert "## Fast & Mask R-CNN Baselines Using Precomputed RPN Proposals" in table
    assert "## End-to-End Faster & Mask R-CNN Baselines" in table
    rows = [line for line in table.splitlines() if line.startswith("| R-18-FPN")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "scratch", row       # pretrained: no TRAIN.WEIGHTS in the micro zoo
        # train mem, train time (s/iter), total, inference time are measured for every row
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in cells[5:9]), row
    rpn_row = next(r for r in rows if "| RPN |" in r)
    assert re.search(r"\| \d+\.\d \| `[0-9a-f]{32}` \|", rpn_row), rpn_row   # prop. AR, id


@pytest.mark.slow
def test_micro_zoo_mlflow_runs_are_linked(micro_run):
    from mlflow.tracking import MlflowClient

    workdir = micro_run["dir"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name("micro")
    assert experiment is not None
    assert experiment.artifact_location.startswith(
        (workdir / "results" / "mlflow-artifacts").as_uri())
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = {r.data.tags["baseline"]: r for r in runs
               if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == set(MICRO_BASELINES)
    table = (workdir / "MODEL_ZOO.md").read_text()
    for name, parent in parents.items():
        assert parent.info.status == "FINISHED"
        assert parent.data.params["SOLVER.MAX_ITER"] == "3"
        assert f"`{parent.info.run_id}`" in table
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        stages = sorted(r.data.tags["stage"] for r in children)
        expected = ["evaluate", "train"] + (["proposals"] * 2 if name.startswith("rpn") else [])
        assert stages == sorted(expected), name
        for child in children:
            assert child.info.status == "FINISHED"
            assert child.data.tags["rule"] in {"train", "evaluate", "dump_proposals"}
            assert child.data.tags["zoo"] == "micro"
        train_run = next(r for r in children if r.data.tags["stage"] == "train")
        history = client.get_metric_history(train_run.info.run_id, "loss")
        assert sorted(m.step for m in history) == [0, 2]    # first and last iteration logged
        artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id)}
        assert {"config.yaml", "train_log.jsonl", "train_stats.json"} <= artifacts
    ap_key = "bbox/AP"
    assert ap_key in parents["e2e_faster_rcnn_R-18-FPN_1x"].data.metrics
    assert "proposals/AR_at_1000" in parents["rpn_R-18-FPN_1x"].data.metrics


@pytest.mark.slow
def test_micro_zoo_reruns_only_what_changed(micro_run):
    workdir, manifest = micro_run["dir"], micro_run["manifest"]
    again = snakemake(workdir, "-n", "reproduce_model_zoo", "--configfile", manifest)
    assert planned_jobs(again.stdout + again.stderr) == set()
    assert "Nothing to be done" in again.stdout + again.stderr

    # Snakemake reruns on content, not on mtime alone (a bare touch is ignored by checksum).
    edit_config(workdir / "configs/e2e_faster_rcnn_R-18-FPN_1x.yaml")
    jobs = planned_jobs(snakemake(workdir, "-n", "reproduce_model_zoo", "--configfile",
                                  manifest).stdout)
    assert jobs == {("train", "baseline=e2e_faster_rcnn_R-18-FPN_1x"),
                    ("evaluate", "baseline=e2e_faster_rcnn_R-18-FPN_1x"),
                    ("model_zoo_table", ""), ("reproduce_model_zoo", "")}

    edit_config(workdir / "configs/rpn_R-18-FPN_1x.yaml")
    jobs = planned_jobs(snakemake(workdir, "-n", "reproduce_model_zoo", "--configfile",
                                  manifest).stdout)
    rpn_jobs = {("train", "baseline=rpn_R-18-FPN_1x"),
                ("evaluate", "baseline=rpn_R-18-FPN_1x"),
                ("dump_proposals", "rpn=rpn_R-18-FPN_1x, dataset=micro_train"),
                ("dump_proposals", "rpn=rpn_R-18-FPN_1x, dataset=micro_val"),
                ("train", "baseline=fast_rcnn_R-18-FPN_1x"),
                ("evaluate", "baseline=fast_rcnn_R-18-FPN_1x")}
    e2e_jobs = {("train", "baseline=e2e_faster_rcnn_R-18-FPN_1x"),
                ("evaluate", "baseline=e2e_faster_rcnn_R-18-FPN_1x")}     # edited above
    assert jobs == rpn_jobs | e2e_jobs | {("model_zoo_table", ""), ("reproduce_model_zoo", "")}
