# Shared by the stage files. The validated manifest, its file and paths, and the input
# functions that turn a manifest entry into the inputs and rerun triggers of a job.
import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from detectron_lib.engine.launch import srun_launcher
from detectron_lib.zoo.manifest import join_overrides, parse_manifest
from detectron_lib.zoo.steps import SHARE_CORES_ENV, put_interpreter_first_on_path

min_version("8.0")


def manifest_file():
    """The manifest's file, relative to the working directory when inside it (a stable
    param). Each job runs `detectron zoo STEP NAME --manifest FILE` and reads the rest from
    that file, so the DAG must see the file as it is: one file, no --config."""
    if len(workflow.configfiles) != 1 or workflow.config_settings.config:
        raise WorkflowError("the zoo's jobs read their manifest from its file: give one "
                            "--configfile (or none, for configs/zoo/shapes.yaml) and no "
                            "--config; edit the manifest file instead")
    path = Path(workflow.configfiles[0]).absolute()
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


MANIFEST_FILE = manifest_file()
validate(config, "../schemas/zoo.schema.yaml")
ZOO = parse_manifest(config, source="zoo manifest '{}'".format(config["name"]))
LAYOUT = ZOO.layout

# Rule shells call `python` and `torchrun` of the environment Snakemake runs in (.venv).
put_interpreter_first_on_path()
# Jobs run here share the DAG's cores among those running at the time (zoo.steps.
# set_job_threads), so that a job running alone uses them all. An environment variable, not
# a param or the shell command: changing --cores must not rerun jobs. Without --cores
# (--dag, cluster executors) there is nothing to share.
if workflow._cores is not None:
    os.environ[SHARE_CORES_ENV] = str(workflow._cores)

for _dataset, _path in ZOO.missing_dataset_files():
    logger.warning(f"dataset {_dataset}: {_path} is missing; prepare_dataset will fail "
                   f"until it is there (set DETECTRON_DATA_ROOT or the manifest's data_root)")

RPN_WITH_CONSUMERS = [name for name in ZOO.baselines if ZOO.rpn_consumers(name)]
DOWNLOADS = ZOO.all_downloads()   # {path in the download cache: URL}, for fetch_weights


def alternatives(names):
    """A wildcard constraint matching exactly one of ``names``."""
    return "|".join(re.escape(n) for n in names) or "^$"


# -- input functions and params ---------------------------------------------------------------
def baseline_config(wildcards):
    return ZOO.baseline(wildcards.baseline).config


def rpn_config(wildcards):
    return ZOO.baseline(wildcards.rpn).config


def train_inputs(wildcards):
    """Config, dataset markers, the experiment file, (on precomputed proposals) the proposal
    files of the RPN baseline, and the fetched files of the URLs its config names."""
    name = wildcards.baseline
    train_sets, _ = ZOO.datasets(name)
    return {
        "config": ZOO.baseline(name).config,
        "datasets": [LAYOUT.dataset_marker(d) for d in train_sets],
        "experiment": LAYOUT.experiment_file,
        "proposals": ZOO.proposal_inputs(name, "train"),
        "pretrained": ZOO.pretrained_inputs(name),
        "downloads": ZOO.download_inputs(name),
    }


# Job priorities, by stage: pretraining, then the proposal chain (RPN training -> proposal
# dumps -> training on them; the DAG's longest path), then the other trainings, then the
# evaluations (short jobs, best at the end). Manifest entries with start_early go first within
# their stage. Why, and the measured effect: workflow/README.md, "Job order".
PRETRAIN_PRIORITY = 10
PROPOSAL_CHAIN_PRIORITY = 5
TRAIN_PRIORITY = 1
EVALUATE_PRIORITY = 0
START_EARLY_BONUS = 0.5   # below the gap between stages


def start_early_bonus(name):
    return START_EARLY_BONUS if ZOO.baseline(name).start_early else 0


def train_priority(wildcards):
    """PROPOSAL_CHAIN_PRIORITY for RPN baselines with consumers and for their consumers,
    TRAIN_PRIORITY for the others; plus the start_early bonus."""
    name = wildcards.baseline
    on_chain = name in RPN_WITH_CONSUMERS or ZOO.baseline(name).proposals_from
    return (PROPOSAL_CHAIN_PRIORITY if on_chain else TRAIN_PRIORITY) + start_early_bonus(name)


def evaluate_priority(wildcards):
    return EVALUATE_PRIORITY + start_early_bonus(wildcards.baseline)


def pretrain_inputs(wildcards):
    """Config, dataset markers and the experiment file of a body pretraining."""
    train_sets, val_sets = ZOO.pretrain_datasets(wildcards.pretrained)
    return {
        "config": ZOO.pretrained_body(wildcards.pretrained).config,
        "datasets": [LAYOUT.dataset_marker(d) for d in sorted(set(train_sets + val_sets))],
        "experiment": LAYOUT.experiment_file,
    }


def evaluate_inputs(wildcards):
    name = wildcards.baseline
    _, test_sets = ZOO.datasets(name)
    return {
        "config": ZOO.baseline(name).config,
        "weights": LAYOUT.weights(name),
        "run": LAYOUT.run_file(name),
        "datasets": [LAYOUT.dataset_marker(d) for d in test_sets],
        "proposals": ZOO.proposal_inputs(name, "test"),
        "dumped_evaluation": ZOO.dumped_evaluation_inputs(name),
    }


def overrides_of(name):
    """Config overrides of a baseline (its manifest entry, the DAG's paths), as a rerun
    trigger: the jobs read them from the manifest."""
    return join_overrides(ZOO.config_overrides(name))


def train_launcher(wildcards, threads):
    """A plain process for one node with <= 1 GPU, torchrun with one worker per GPU on one
    node; on several nodes, srun runs one torchrun per node, joined through a c10d
    rendezvous (detectron_lib.engine.launch)."""
    resources = ZOO.baseline(wildcards.baseline).resources
    if resources.nodes > 1:
        return srun_launcher(resources.nodes, resources.gpus, threads)
    if resources.gpus > 1:
        return f"torchrun --standalone --nproc_per_node {resources.gpus}"
    return "python"


def multinode_resource(key):
    """Resource callable of a training job (gpu, mpi, tasks, slurm_extra). On one node, gpu
    is the entry's gpus and the others are absent (None). On several nodes the job is submitted
    as the SLURM executor submits MPI jobs (mpi, tasks: one task per node), so that its job
    step is the rule's own srun, and GPUs are asked per node (slurm_extra), not in all (gpu)."""
    def lookup(wildcards):
        resources = ZOO.baseline(wildcards.baseline).resources
        if resources.nodes == 1:
            return resources.gpus if key == "gpu" else None
        gpus = [f"--gpus-per-node={resources.gpus}"] if resources.gpus else []
        return {"gpu": None, "mpi": "srun", "tasks": resources.nodes,
                "slurm_extra": " ".join(["--ntasks-per-node=1", *gpus])}[key]
    return lookup


def resource_of(key):
    """Resource callable for Snakemake: the baseline's (or pretraining's) value of ``key``
    (gpus, mem_mb, ...)."""
    def lookup(wildcards):
        if hasattr(wildcards, "pretrained"):
            return getattr(ZOO.pretrained_body(wildcards.pretrained).resources, key)
        name = getattr(wildcards, "baseline", None) or wildcards.rpn
        return getattr(ZOO.baseline(name).resources, key)
    return lookup


def table_manifest(wildcards):
    """The manifest as JSON, a rerun trigger of the table (title, sections, baselines)."""
    return json.dumps(config, sort_keys=True)


def zoo_outputs(name):
    """Files that make a baseline complete: its metrics, train stats and MLflow run file."""
    return [LAYOUT.metrics(name), LAYOUT.train_stats(name), LAYOUT.run_file(name)]
