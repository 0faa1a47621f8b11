"""Snakemake plans (dry runs) and lint of the model-zoo DAG for the repository's manifests.

Nothing is trained: the checks are on the job lists Snakemake prints, compared with what the
manifests (configs/zoo/shapes.yaml, configs/zoo/coco_2017.yaml) say the DAG must contain.
Each runs in a temporary working directory that links the repository's configs, so the
checkout gets no .snakemake folder.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detectron_lib.zoo.manifest import load_manifest
from test_workflow_dag import planned_job_blocks, planned_jobs

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile")]


def run_snakemake(workdir, *args):
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON_DATA_ROOT"}
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def shapes_workdir(tmp_path):
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    return tmp_path


@pytest.fixture
def coco_workdir(tmp_path, reference_dir):
    """configs/zoo from the repository, configs/12_2017_baselines and 04_2018_gn_baselines =
    Detectron's originals."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "zoo").symlink_to(REPO_ROOT / "configs" / "zoo")
    for folder in ("12_2017_baselines", "04_2018_gn_baselines"):
        (tmp_path / "configs" / folder).symlink_to(reference_dir / "detectron_configs" / folder)
    return tmp_path


def test_default_zoo_plans_every_shapes_baseline(shapes_workdir):
    proc = run_snakemake(shapes_workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = yaml.safe_load((REPO_ROOT / "configs/zoo/shapes.yaml").read_text())
    jobs = planned_jobs(proc.stdout)
    for name in manifest["baselines"]:
        assert ("train", f"baseline={name}") in jobs
        assert ("evaluate", f"baseline={name}") in jobs
    assert ("mlflow_init", "") in jobs
    assert ("model_zoo_table", "") in jobs
    assert ("reproduce_model_zoo", "") in jobs     # the default target


def planned_priorities(dry_run_output):
    """{(rule, wildcards): priority} of the jobs a dry run lists; Snakemake prints only
    priorities other than 0."""
    priorities = {}
    for job, block in planned_job_blocks(dry_run_output):
        priority = re.search(r"^\s+priority: (\S+)$", block, re.MULTILINE)
        priorities[job] = float(priority.group(1)) if priority else 0.0
    return priorities


def test_shapes_zoo_schedules_stages_and_long_jobs_first(shapes_workdir):
    proc = run_snakemake(shapes_workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    priority = planned_priorities(proc.stdout)
    assert priority[("pretrain", "pretrained=R-18-GN")] == 10
    assert priority[("pretrain", "pretrained=R-50-GN")] == 10
    assert priority[("train", "baseline=rpn_R-18-FPN_1x")] == 5          # the proposal chain
    assert priority[("train", "baseline=fast_rcnn_R-18-FPN_1x")] == 5
    assert priority[("train", "baseline=e2e_faster_rcnn_R-18-FPN_1x")] == 1
    assert priority[("evaluate", "baseline=e2e_faster_rcnn_R-18-FPN_1x")] == 0
    manifest = yaml.safe_load((REPO_ROOT / "configs/zoo/shapes.yaml").read_text())
    early = {name for name, entry in manifest["baselines"].items() if entry.get("start_early")}
    assert early == {"e2e_faster_rcnn_R-18-C4_1x", "e2e_faster_rcnn_VGG16_1x",
                     "e2e_faster_rcnn_R-50-FPN_1x", "e2e_mask_rcnn_R-50-FPN_1x_gn"}
    for name in early:
        assert priority[("train", f"baseline={name}")] == 1.5
        assert priority[("evaluate", f"baseline={name}")] == 0.5


def test_one_baseline_target_plans_only_that_baseline(shapes_workdir):
    proc = run_snakemake(shapes_workdir, "-n", "baseline_e2e_faster_rcnn_R-18-FPN_1x")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    baselines = {w for _, w in jobs if w.startswith("baseline=")}
    assert baselines == {"baseline=e2e_faster_rcnn_R-18-FPN_1x"}
    assert ("model_zoo_table", "") not in jobs


def test_coco_zoo_plans_and_names_missing_files(coco_workdir):
    proc = run_snakemake(coco_workdir, "-n", "reproduce_model_zoo",
                         "--configfile", "configs/zoo/coco_2017.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = yaml.safe_load((REPO_ROOT / "configs/zoo/coco_2017.yaml").read_text())
    jobs = planned_jobs(proc.stdout)
    trains = {w for rule, w in jobs if rule == "train"}
    assert trains == {f"baseline={name}" for name in manifest["baselines"]}
    # Fast / Mask / Keypoint R-CNN on proposals: their RPNs dump train and val proposals.
    assert ("dump_proposals", "rpn=rpn_R-50-FPN_1x, dataset=coco_2017_train") in jobs
    assert ("dump_proposals", "rpn=rpn_person_only_R-50-FPN_1x, "
            "dataset=keypoints_coco_2017_val") in jobs
    output = proc.stdout + proc.stderr
    assert "instances_train2017.json is missing" in output
    assert "person_keypoints_val2017.json is missing" in output


def test_coco_zoo_launches_multi_gpu_training_with_torchrun(coco_workdir):
    proc = run_snakemake(coco_workdir, "-n", "-p", "baseline_e2e_mask_rcnn_R-50-FPN_1x",
                         "--configfile", "configs/zoo/coco_2017.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_cmd = next(line for line in proc.stdout.splitlines()
                     if "detectron_lib.cli zoo train" in line)
    assert re.search(r"^(Shell command: )?torchrun --standalone --nproc_per_node 8 -m ", train_cmd.strip())
    # The step reads the config and its overrides (NUM_GPUS 8) from the manifest it is given.
    manifest = coco_workdir / "configs/zoo/coco_2017.yaml"
    assert "zoo train e2e_mask_rcnn_R-50-FPN_1x --manifest configs/zoo/coco_2017.yaml " in train_cmd
    overrides = load_manifest(manifest).config_overrides("e2e_mask_rcnn_R-50-FPN_1x")
    assert overrides[overrides.index("NUM_GPUS") + 1] == "8"


def test_coco_zoo_fetches_each_weights_url_once_for_the_trainings_that_read_it(coco_workdir):
    """Compute nodes may have no internet access: each URL that a config gives as TRAIN.WEIGHTS
    (Detectron's ImageNet bodies) is one fetch_weights job, a local rule (the submit host),
    whose file in results/weights/ is an input of every training starting from it, and of no
    other job."""
    proc = run_snakemake(coco_workdir, "-n", "reproduce_model_zoo",
                         "--configfile", "configs/zoo/coco_2017.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = yaml.safe_load((REPO_ROOT / "configs/zoo/coco_2017.yaml").read_text())
    readers = {}   # fetched file -> baselines whose config names its URL
    for name, entry in manifest["baselines"].items():
        train = yaml.safe_load((coco_workdir / entry["config"]).read_text()).get("TRAIN", {})
        url = train.get("WEIGHTS") or ""
        if url.startswith("https://"):
            readers.setdefault(f"results/weights/{url.removeprefix('https://')}", set()).add(name)
    fetched, fed = set(), {}
    for (rule, wildcards), block in planned_job_blocks(proc.stdout):
        inputs = re.search(r"^\s+input: (.+)$", block, re.MULTILINE)
        for path in inputs.group(1).split(", ") if inputs else ():
            if path.startswith("results/weights/"):
                fed.setdefault(path, set()).add((rule, wildcards.removeprefix("baseline=")))
        if rule == "fetch_weights":
            fetched.add(re.search(r"^\s+output: (\S+)$", block, re.MULTILINE).group(1))
    assert fetched == set(readers) and len(fetched) == 7
    assert fed == {path: {("train", name) for name in names} for path, names in readers.items()}
    assert sum(map(len, readers.values())) == 79     # the two scratch_ GN baselines read none
    localrules = re.search(r"^localrules:\n((?:    \w+,\n)+)", (REPO_ROOT / "Snakefile").read_text(),
                           re.MULTILINE)
    assert "fetch_weights," in localrules.group(1).split()


def test_a_baseline_on_two_nodes_runs_one_torchrun_per_node_under_srun(coco_workdir):
    """2 nodes x 4 GPUs: the job asks SLURM for 2 nodes, one task each with the baseline's
    threads and 4 GPUs per node (submitted as the executor submits MPI jobs, so the train
    rule's srun is the job step), and trains with Detectron's 8 workers (NUM_GPUS 8, the
    global batch and LR of its 8-GPU configs)."""
    name = "e2e_mask_rcnn_R-101-FPN_1x"
    manifest = yaml.safe_load((REPO_ROOT / "configs/zoo/coco_2017.yaml").read_text())
    manifest["baselines"][name]["resources"] = {"nodes": 2, "gpus": 4, "threads": 16}
    (coco_workdir / "two_nodes.yaml").write_text(yaml.safe_dump(manifest))
    proc = run_snakemake(coco_workdir, "-n", "-p", "--cores", "64", f"baseline_{name}",
                         "--configfile", "two_nodes.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = dict(planned_job_blocks(proc.stdout))
    train = blocks[("train", f"baseline={name}")]
    resources = re.search(r"^\s+resources: (.+)$", train, re.MULTILINE).group(1).split(", ")
    assert {"nodes=2", "mpi=srun", "tasks=2",
            "slurm_extra=--ntasks-per-node=1 --gpus-per-node=4"} <= set(resources)
    assert not any(r.startswith("gpu=") for r in resources)    # GPUs per node, not in all
    assert (f"srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=16 "
            f"--gpus-per-node=4 --kill-on-bad-exit=1 python -m detectron_lib.engine.launch "
            f"--nnodes 2 --nproc-per-node 4 -m detectron_lib.cli zoo train {name} ") in train
    overrides = load_manifest(coco_workdir / "two_nodes.yaml").config_overrides(name)
    assert overrides[overrides.index("NUM_GPUS") + 1] == "8"
    evaluate = blocks[("evaluate", f"baseline={name}")]   # one process on one node
    assert "gpu=1" in evaluate and "nodes=" not in evaluate


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="the slurm profile needs snakemake-executor-plugin-slurm installed")
def test_coco_zoo_plans_with_slurm_profile(coco_workdir):
    (coco_workdir / "workflow").mkdir()
    (coco_workdir / "workflow" / "profiles").symlink_to(REPO_ROOT / "workflow" / "profiles")
    proc = run_snakemake(coco_workdir, "-n", "--profile", "workflow/profiles/slurm",
                         "reproduce_model_zoo", "--configfile", "configs/zoo/coco_2017.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("model_zoo_table", "") in planned_jobs(proc.stdout)


def test_lint_is_clean(shapes_workdir):
    """The Snakemake catalog's lint finds nothing: every rule declares environment.yml."""
    proc = run_snakemake(shapes_workdir, "--lint")
    titles = set(re.findall(r"^\s+\* (.+?):?$", proc.stdout + proc.stderr, re.MULTILINE))
    assert proc.returncode == 0 and not titles, titles


def test_dag_picture_without_cores(shapes_workdir):
    """The documented picture command: target first, --dag's argument the format, no --cores."""
    proc = run_snakemake(shapes_workdir, "reproduce_model_zoo", "--dag", "dot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("digraph snakemake_dag") and "model_zoo_table" in proc.stdout
