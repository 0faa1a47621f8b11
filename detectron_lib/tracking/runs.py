"""A baseline's MLflow runs across the DAG's processes: one parent run per baseline, one
child run per stage (train, proposals, evaluate), linked through a small JSON run file.

    experiment.json  {"tracking_uri", "experiment_name", "experiment_id"}   (mlflow_init)
    mlflow_run.json  {"parent_run_id", "experiment_id", "baseline", "zoo"}   (train)
"""
import contextlib
import json
import logging
import signal

from detectron_lib.errors import ConfigError, TrackingError
from detectron_lib.tracking.tracker import GIT_COMMIT_TAG, Tracker, git_commit
from detectron_lib.utils.io import write_json_atomic
from detectron_lib.utils.ranks import is_main_process

logger = logging.getLogger(__name__)


def read_json(path, what):
    """A JSON file the DAG wrote earlier; ConfigError names the rule to rerun if unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} {path} is missing or unreadable ({e}); rerun the rule that "
                          f"writes it (snakemake --forcerun {path})") from None


def init_experiment(tracker, experiment_name, artifact_location, output_path):
    """Create the tracking store and the zoo's experiment once, before any parallel job, and
    record them in ``output_path``. With tracking off (``--no-tracking``) it records id None;
    a store that fails raises TrackingError before anything is written."""
    experiment_id = tracker.ensure_experiment(experiment_name, artifact_location)
    document = {"tracking_uri": tracker.uri, "experiment_name": experiment_name,
                "experiment_id": experiment_id}
    write_json_atomic(output_path, document, indent=1, sort_keys=True)
    return document


def standard_tags(baseline, zoo, stage, rule, dataset=None):
    """Tags every run of the zoo carries: what it is, where it came from."""
    return {"baseline": baseline, "zoo": zoo, "stage": stage, "rule": rule,
            "dataset": dataset, GIT_COMMIT_TAG: git_commit()}


def start_parent_run(tracker, experiment_file, run_file, baseline, zoo, dataset=None):
    """Create the baseline's parent run (named after it) and write ``run_file``; returns its
    id (None when tracking is off, and the run file says so; a store that fails raises
    TrackingError and no run file is written)."""
    experiment = read_json(experiment_file, "MLflow experiment file")
    experiment_id = tracker.ensure_experiment(experiment["experiment_name"])
    tags = standard_tags(baseline, zoo, "baseline", "train", dataset)
    run_id = tracker.start_run(experiment_id, baseline, tags)
    write_json_atomic(run_file, {"parent_run_id": run_id, "experiment_id": experiment_id,
                                 "baseline": baseline, "zoo": zoo}, indent=1, sort_keys=True)
    return run_id


def interrupt_on_sigterm():
    """Make SIGTERM (how Snakemake, SLURM and torchrun stop a job) raise KeyboardInterrupt in
    the main thread, as Ctrl-C does, so that the job's runs end KILLED instead of staying
    RUNNING. SIGKILL cannot be caught."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def end_run_after(tracker, run_id, error):
    """End ``run_id`` after its block raised ``error``: KILLED for an interrupt (Ctrl-C, or
    SIGTERM after interrupt_on_sigterm), else FAILED. A tracking failure here is only logged,
    so that ``error`` stays what the job reports."""
    try:
        tracker.end_run(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
    except TrackingError as tracking_error:
        logger.warning("%s", tracking_error)


@contextlib.contextmanager
def stage_run(tracker, run_file, stage, rule, dataset=None, run_name=None):
    """A child run of the baseline in ``run_file`` for one stage; yields (parent_id, child_id).

    The child ends FINISHED, or FAILED (KILLED when interrupted) if the block raises; the
    error propagates.
    """
    info = read_json(run_file, "MLflow run file")
    parent_id = info.get("parent_run_id")
    tags = standard_tags(info["baseline"], info["zoo"], stage, rule, dataset)
    child_id = None
    if parent_id:
        child_id = tracker.start_run(info["experiment_id"], run_name or stage, tags,
                                     parent_run_id=parent_id)
    try:
        yield parent_id, child_id
    except BaseException as error:
        end_run_after(tracker, child_id, error)
        raise
    tracker.end_run(child_id, "FINISHED")


def make_tracker(enabled=True):
    """The Tracker of this process: the configured store, off on non-zero ranks."""
    return Tracker(enabled=enabled and is_main_process())
