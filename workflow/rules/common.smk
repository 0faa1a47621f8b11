# Shared by the stage files. The validated manifest, its paths, and the input functions that
# turn a manifest entry into the inputs and command-line arguments of a job.
import json
import re
import shlex

from snakemake.logging import logger
from snakemake.utils import min_version, validate

from detectron_lib.workflow_steps import put_interpreter_first_on_path
from detectron_lib.zoo.manifest import join_overrides, parse_manifest

min_version("8.0")

validate(config, "../schemas/zoo.schema.yaml")
ZOO = parse_manifest(config, source="zoo manifest '{}'".format(config["name"]))
LAYOUT = ZOO.layout

# Rule shells call `python` and `torchrun` of the environment Snakemake runs in (.venv).
put_interpreter_first_on_path()

for _dataset, _path in ZOO.missing_dataset_files():
    logger.warning(f"dataset {_dataset}: {_path} is missing; prepare_dataset will fail "
                   f"until it is there (set DETECTRON_DATA_ROOT or the manifest's data_root)")

RPN_WITH_CONSUMERS = [name for name in ZOO.baselines if ZOO.rpn_consumers(name)]


def alternatives(names):
    """A wildcard constraint matching exactly one of ``names``."""
    return "|".join(re.escape(n) for n in names) or "^$"


# -- input functions and params ---------------------------------------------------------------
def baseline_config(wildcards):
    return ZOO.baseline(wildcards.baseline).config


def rpn_config(wildcards):
    return ZOO.baseline(wildcards.rpn).config


def train_inputs(wildcards):
    """Config, dataset markers, the experiment file and (on precomputed proposals) the
    proposal files of the RPN baseline."""
    name = wildcards.baseline
    train_sets, _ = ZOO.datasets(name)
    return {
        "config": ZOO.baseline(name).config,
        "datasets": [LAYOUT.dataset_marker(d) for d in train_sets],
        "experiment": LAYOUT.experiment_file,
        "proposals": ZOO.proposal_inputs(name, "train"),
        "pretrained": ZOO.pretrained_inputs(name),
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


def evaluation_source(wildcards, input):
    """Where an evaluation comes from when not from inference: an RPN baseline whose
    proposals the DAG dumps for its test sets takes their recall and inference time (its
    ``dumped_evaluation`` inputs)."""
    return " ".join(f"--proposal-metrics {shlex.quote(path)}" for path in input.dumped_evaluation)


def overrides_of(name):
    """Shell-quoted config overrides of a baseline (its manifest entry, the DAG's paths)."""
    return join_overrides(ZOO.config_overrides(name))


def train_launcher(wildcards, resources):
    """A plain process for <= 1 GPU, torchrun with one worker per GPU otherwise."""
    if resources.gpu > 1:
        return f"torchrun --standalone --nproc_per_node {resources.gpu}"
    return "python"


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
    """The manifest as JSON for the zoo-table step (and a rerun trigger when it changes)."""
    return json.dumps(config, sort_keys=True)


def zoo_outputs(name):
    """Files that make a baseline complete: its metrics, train stats and MLflow run file."""
    return [LAYOUT.metrics(name), LAYOUT.train_stats(name), LAYOUT.run_file(name)]
