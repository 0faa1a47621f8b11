"""MLflow runs of trainings and of the model-zoo DAG.

A training, typed by hand (``detectron train`` / ``pretrain``) or a DAG job, is tracked by
one code path (track_training): its config as params, its losses, lr and times live while it
runs (step = iteration), then its config, training log and final weights as artifacts.

A baseline's runs span the DAG's processes: one parent run per baseline, one child run per
stage (train, proposals, evaluate), linked through a small JSON run file.

    experiment.json  {"tracking_uri", "experiment_name", "experiment_id"}   (mlflow_init)
    mlflow_run.json  {"parent_run_id", "experiment_id", "baseline", "zoo"}   (train)
"""
import contextlib
import json
import logging
import signal
from pathlib import Path

from detectron_lib.engine.train_log import TRAIN_LOG
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
    TrackingError and no run file is written). Runs of the baseline that earlier jobs left
    RUNNING end KILLED first: the DAG runs one job per baseline at a time."""
    experiment = read_json(experiment_file, "MLflow experiment file")
    experiment_id = tracker.ensure_experiment(experiment["experiment_name"])
    end_runs_left_running(tracker, experiment_id, baseline)
    tags = standard_tags(baseline, zoo, "baseline", "train", dataset)
    run_id = tracker.start_run(experiment_id, baseline, tags)
    write_json_atomic(run_file, {"parent_run_id": run_id, "experiment_id": experiment_id,
                                 "baseline": baseline, "zoo": zoo}, indent=1, sort_keys=True)
    return run_id


def end_runs_left_running(tracker, experiment_id, name):
    """End as KILLED the runs tagged baseline ``name`` that earlier jobs left RUNNING (killed
    outright, or a parent whose evaluation never came): the DAG runs one job per baseline or
    pretrained body at a time, so any such run is stale."""
    for run_id in tracker.end_stale_runs(experiment_id, "baseline", name):
        logger.info("MLflow run %s of %s was left RUNNING by an earlier job: ended KILLED",
                    run_id, name)


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
def tracked_run(tracker, experiment_id, run_name, tags, parent_run_id=None):
    """A run for the block (a child of ``parent_run_id`` if given); yields its id (None when
    tracking is off or ``experiment_id`` is None). It ends FINISHED, or FAILED (KILLED when
    interrupted) if the block raises; the error propagates."""
    run_id = tracker.start_run(experiment_id, run_name, tags, parent_run_id=parent_run_id)
    try:
        yield run_id
    except BaseException as error:
        end_run_after(tracker, run_id, error)
        raise
    tracker.end_run(run_id, "FINISHED")


@contextlib.contextmanager
def stage_run(tracker, run_file, stage, rule, dataset=None, run_name=None):
    """A child run of the baseline in ``run_file`` for one stage; yields (parent_id, child_id),
    ending the child as tracked_run does."""
    info = read_json(run_file, "MLflow run file")
    parent_id = info.get("parent_run_id")
    tags = standard_tags(info["baseline"], info["zoo"], stage, rule, dataset)
    with tracked_run(tracker, info["experiment_id"] if parent_id else None, run_name or stage,
                     tags, parent_run_id=parent_id) as child_id:
        yield parent_id, child_id


def record_logger(tracker, run_id):
    """An ``on_records`` callback for training and pretraining that logs each record's numbers
    (losses, lr, times) to ``run_id`` as they come, at step = the record's iteration; None
    when there is no run."""
    if not run_id:
        return None

    def log(records):
        tracker.log_metric_history(run_id, [
            (r["iter"], None, {k: v for k, v in r.items() if k != "iter"}) for r in records])
    return log


def training_artifacts(weights):
    """A training's files worth keeping with its run: config.yaml, the training log and the
    final weights, all in OUTPUT_DIR."""
    weights = Path(weights)
    return [weights.parent / "config.yaml", weights.parent / TRAIN_LOG, weights]


def _each(*callbacks):
    """One ``on_records`` callback calling each of ``callbacks`` that is not None in turn
    (None when all are)."""
    callbacks = [callback for callback in callbacks if callback]
    if len(callbacks) <= 1:
        return callbacks[0] if callbacks else None

    def each(records):
        for callback in callbacks:
            callback(records)
    return each


def track_training(tracker, run_id, cfg, run_training, artifacts=training_artifacts,
                   on_records=None):
    """Track one training in ``run_id``: the flattened config as params, the logged records
    live, then the files ``artifacts(result)`` names. ``run_training(on_records)`` trains and
    returns its result (the final weights' path), which is returned; the ``on_records`` given
    here is also called with each logged batch of records."""
    tracker.log_params(run_id, cfg.to_flat_dict())
    result = run_training(_each(record_logger(tracker, run_id), on_records))
    tracker.log_artifacts(run_id, artifacts(result))
    return result


def track_pretraining(tracker, run_id, cfg, output_file, log_period=20, job_log=None,
                      on_records=None):
    """Pretrain a body (engine.pretrain) into ``output_file``, tracked as track_training
    tracks a training, then its time and validation accuracy as metrics and the weights, their
    summary JSON and ``job_log`` as artifacts; returns the summary."""
    from detectron_lib.engine.pretrain import pretrain_backbone

    summary = track_training(
        tracker, run_id, cfg,
        lambda log: pretrain_backbone(cfg, output_file, log_period, log),
        artifacts=lambda _: [f"{output_file}.json", output_file, job_log],
        on_records=on_records)
    tracker.log_metrics(run_id, {k: summary[k] for k in ("train_time_s", "val_accuracy")
                                 if k in summary})
    return summary


def artifact_location(tracker, experiment_name):
    """Where a new experiment's artifacts go: beside a SQLite store, in
    ``mlflow-artifacts/<experiment>`` (results/mlflow-artifacts/... for the default store);
    a server's own choice (None) otherwise."""
    prefix = "sqlite:///"
    if not tracker.uri.startswith(prefix):
        return None
    store = Path(tracker.uri[len(prefix):]).absolute()
    return (store.parent / "mlflow-artifacts" / experiment_name).as_uri()


@contextlib.contextmanager
def command_run(enabled, experiment_name, run_name, stage, config_file):
    """The run of a ``detectron train`` / ``pretrain`` command: in experiment
    ``experiment_name`` of the store ($MLFLOW_TRACKING_URI, else results/mlflow.db), tagged
    with the stage, config file and git commit; yields (tracker, run_id) and ends the run as
    tracked_run does. With ``enabled`` False the run id is None and nothing is logged."""
    tracker = make_tracker(enabled)
    experiment_id = tracker.ensure_experiment(experiment_name,
                                              artifact_location(tracker, experiment_name))
    tags = {"stage": stage, "config": config_file, GIT_COMMIT_TAG: git_commit()}
    with tracked_run(tracker, experiment_id, run_name, tags) as run_id:
        yield tracker, run_id


def make_tracker(enabled=True):
    """The Tracker of this process: the configured store, off on non-zero ranks."""
    return Tracker(enabled=enabled and is_main_process())
