"""detectron_lib.tracking against real MLflow stores in temporary directories.

Reference: what MlflowClient reads back from the same store (runs, parent tags, params,
metric histories, artifacts). Cases: parent/child linking across processes through the run
file, 8 processes logging to one SQLite store at once (initialized first, as the DAG does,
and fresh, as parallel hand runs meet it), and stores that cannot be reached (TrackingError
naming the store, no run file with a null id).
"""
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
import sqlite3
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from detectron_lib.errors import TrackingError
from detectron_lib.tracking import (
    Tracker,
    end_run_after,
    init_experiment,
    interrupt_on_sigterm,
    is_tracking_server,
    metric_key,
    stage_run,
    start_parent_run,
    tracking_uri,
)
from detectron_lib.tracking.tracker import DEFAULT_TRACKING_URI, PARENT_RUN_TAG


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite store with the 'zoo' experiment created, as mlflow_init does (shared
    by this module's tests: creating the SQLite schema takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_file = tmp_path / "experiment.json"
    init_experiment(Tracker(uri), "zoo", (tmp_path / "artifacts").as_uri(), experiment_file)
    return {"uri": uri, "dir": tmp_path, "experiment_file": experiment_file}


def test_default_uri_and_env_override(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///results/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def test_a_tracking_server_is_told_from_a_store():
    """A server keeps the zoo's artifacts under its own root (zoo.steps.init_tracking)."""
    assert is_tracking_server("http://tracking.example:5000")
    assert is_tracking_server("HTTPS://tracking.example")
    assert not is_tracking_server("sqlite:///results/mlflow.db")
    assert not is_tracking_server("postgresql://user@db.example/mlflow")


def test_metric_names_are_made_mlflow_legal():
    assert metric_key("proposals/AR@1000") == "proposals/AR_at_1000"
    assert metric_key("bbox/AP-circle") == "bbox/AP-circle"


def test_parent_and_stage_runs_are_linked(store):
    tracker = Tracker(store["uri"])
    run_file = store["dir"] / "run_linked.json"
    parent_id = start_parent_run(tracker, store["experiment_file"], run_file, "rpn_R-18", "zoo",
                                 dataset="shapes_train")
    assert json.loads(run_file.read_text())["parent_run_id"] == parent_id
    tracker.log_params(parent_id, {f"KEY.{i:03d}": i for i in range(250)})   # 3 batches
    log_file = store["dir"] / "train.log"
    log_file.write_text("iteration 0\n")
    with stage_run(Tracker(store["uri"]), run_file, "train", "train") as (seen_parent, child_id):
        assert seen_parent == parent_id
        stage_tracker = Tracker(store["uri"])       # a later process: a new client, same ids
        stage_tracker.log_metric_history(child_id, [(0, None, {"loss": 2.0, "lr": 0.01}),
                                                    (19, None, {"loss": 1.5, "lr": 0.02})])
        stage_tracker.log_metrics(child_id, {"proposals/AR@100": 0.5, "bbox/APl": float("nan")})
        stage_tracker.log_artifacts(child_id, [log_file, store["dir"] / "absent.txt"])

    client = MlflowClient(store["uri"])
    parent, child = client.get_run(parent_id), client.get_run(child_id)
    assert parent.info.run_name == "rpn_R-18"
    assert parent.data.tags["baseline"] == "rpn_R-18"
    assert parent.data.tags["dataset"] == "shapes_train"
    assert len(parent.data.params) == 250 and parent.data.params["KEY.249"] == "249"
    assert child.data.tags[PARENT_RUN_TAG] == parent_id
    assert child.data.tags["stage"] == "train" and child.data.tags["rule"] == "train"
    assert child.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(child_id, "loss")] == [
        (0, 2.0), (19, 1.5)]
    assert child.data.metrics["proposals/AR_at_100"] == 0.5
    assert "bbox/APl" not in child.data.metrics          # NaN: undefined, not logged
    assert [a.path for a in client.list_artifacts(child_id)] == ["train.log"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "zoo"
    assert experiment.artifact_location == (store["dir"] / "artifacts").as_uri()


def test_failed_stage_marks_child_failed_and_reraises(store):
    tracker = Tracker(store["uri"])
    run_file = store["dir"] / "run_failed.json"
    start_parent_run(tracker, store["experiment_file"], run_file, "b", "zoo")
    with pytest.raises(RuntimeError, match="diverged"):
        with stage_run(tracker, run_file, "train", "train") as (_, child_id):
            raise RuntimeError("loss diverged")
    assert MlflowClient(store["uri"]).get_run(child_id).info.status == "FAILED"


def _train_until_stopped(uri, experiment_file, run_file, ready_file):
    """A zoo train job's runs (parent and train child) around a training that never ends."""
    interrupt_on_sigterm()
    tracker = Tracker(uri)
    parent_id = start_parent_run(tracker, experiment_file, run_file, "stopped", "zoo")
    try:
        with stage_run(tracker, run_file, "train", "train"):
            Path(ready_file).write_text("training")
            time.sleep(120)
    except BaseException as error:
        end_run_after(tracker, parent_id, error)
        raise


@pytest.mark.slow
def test_a_job_stopped_by_sigterm_ends_its_runs_killed(store):
    """Snakemake, SLURM and torchrun stop jobs with SIGTERM; the runs must not stay RUNNING."""
    run_file, ready_file = store["dir"] / "run_stopped.json", store["dir"] / "stopped.ready"
    job = multiprocessing.get_context("spawn").Process(
        target=_train_until_stopped,
        args=(store["uri"], str(store["experiment_file"]), str(run_file), str(ready_file)))
    job.start()
    deadline = time.monotonic() + 120
    while not ready_file.exists() and job.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready_file.exists(), "the job did not start its training"
    os.kill(job.pid, signal.SIGTERM)
    job.join(60)
    assert job.exitcode not in (0, None)
    client = MlflowClient(store["uri"])
    parent_id = json.loads(run_file.read_text())["parent_run_id"]
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'")
    assert [run.info.status for run in children] == ["KILLED"]
    assert client.get_run(parent_id).info.status == "KILLED"


def _log_from_process(args):
    uri, experiment_file, run_dir, index = args
    tracker = Tracker(uri)
    if not os.path.exists(experiment_file):  # a fresh store: every process creates it
        init_experiment(tracker, "zoo", None, f"{experiment_file}.{index}")
        experiment_file = f"{experiment_file}.{index}"
    run_file = os.path.join(run_dir, f"run{index}.json")
    parent_id = start_parent_run(tracker, experiment_file, run_file, f"baseline{index}", "zoo")
    with stage_run(tracker, run_file, "train", "train") as (_, child_id):
        tracker.log_params(child_id, {f"P{i}": i for i in range(150)})
        tracker.log_metric_history(child_id, [(step, None, {"loss": 1.0 / (step + 1)})
                                              for step in range(50)])
    return parent_id, child_id, tracker.enabled


def _log_from_eight_processes(uri, experiment_file, run_dir):
    args = [(uri, str(experiment_file), str(run_dir), i) for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        results = pool.map(_log_from_process, args)
    client = MlflowClient(uri)
    assert len({parent_id for parent_id, _, _ in results}) == 8
    for parent_id, child_id, still_enabled in results:
        assert still_enabled, "a process gave up on tracking (database locked?)"
        child = client.get_run(child_id)
        assert child.data.tags[PARENT_RUN_TAG] == parent_id
        assert len(child.data.params) == 150
        assert len(client.get_metric_history(child_id, "loss")) == 50


@pytest.mark.slow
def test_eight_processes_share_one_sqlite_store(store):
    _log_from_eight_processes(store["uri"], store["experiment_file"], store["dir"])


@pytest.mark.slow
def test_eight_processes_create_one_fresh_sqlite_store(tmp_path):
    """No initialization step first: the processes race to create and migrate the schema
    (without the store lock most of them failed: "table ... already exists", "duplicate
    column name", a half-migrated store with _alembic_tmp_ tables)."""
    _log_from_eight_processes(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "experiment.json",
                              tmp_path)
    tables = sqlite3.connect(tmp_path / "mlflow.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert not [name for (name,) in tables if name.startswith("_alembic_tmp")]


def test_unwritable_store_fails_loudly_and_writes_no_run_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    experiment_file = tmp_path / "experiment.json"
    with pytest.raises(TrackingError, match=f"{uri}.*--no-tracking"):
        init_experiment(Tracker(uri), "zoo", None, experiment_file)
    assert not experiment_file.exists()
    experiment_file.write_text(json.dumps({"experiment_name": "zoo"}))
    run_file = tmp_path / "run.json"
    with pytest.raises(TrackingError):
        start_parent_run(Tracker(uri), experiment_file, run_file, "b", "zoo")
    assert not run_file.exists()   # no null parent id that Snakemake would take as finished


def test_unreachable_server_fails_after_its_attempts(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = Tracker("http://127.0.0.1:9", attempts=2)     # discard port: connection refused
    with pytest.raises(TrackingError, match="creating experiment 'zoo'"):
        tracker.ensure_experiment("zoo")


class _FlakyClient:
    """An MlflowClient stand-in whose first ``failures`` calls fail."""

    def __init__(self, failures, error):
        self.failures, self.error, self.calls = failures, error, 0

    def get_experiment_by_name(self, name):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return SimpleNamespace(experiment_id="7")


def test_transient_failures_are_retried():
    tracker = Tracker("sqlite:///unused.db", attempts=3)
    tracker._client = _FlakyClient(2, OSError("connection reset"))
    assert tracker.ensure_experiment("zoo") == "7" and tracker._client.calls == 3
    tracker._client = _FlakyClient(3, OSError("connection reset"))
    with pytest.raises(TrackingError, match="connection reset"):
        tracker.ensure_experiment("zoo")
    # A locked SQLite store is waited for past ``attempts``, up to lock_timeout_s.
    tracker._client = _FlakyClient(5, RuntimeError("database is locked"))
    assert tracker.ensure_experiment("zoo") == "7"


def test_disabled_tracker_touches_nothing(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", enabled=False)
    assert tracker.ensure_experiment("zoo") is None
    assert not (tmp_path / "mlflow.db").exists()


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_hand_run_training_is_tracked_live_with_its_weights(tiny_dataset, tmp_path,
                                                            tracking_store, monkeypatch):
    """`detectron train` typed by hand: a run named after the config in experiment
    'detectron', whose loss history is in the store while training still runs (read back
    after each logged iteration), FINISHED, with config, train log and weights as artifacts."""
    from test_training import BASE_CONFIG, tiny_overrides

    from detectron_lib.cli import main as cli_main
    from detectron_lib.tracking import runs

    client = MlflowClient(tracking_store)
    seen_while_training = []

    def reading_back(tracker, run_id):
        log = real_record_logger(tracker, run_id)
        if log is None:   # --no-tracking
            return None

        def log_and_read(records):
            log(records)
            seen_while_training.append(len(_history(client, run_id, "loss")))
        return log_and_read

    real_record_logger = runs.record_logger
    monkeypatch.setattr(runs, "record_logger", reading_back)
    out = tmp_path / "run"
    assert cli_main(["train", "--cfg", BASE_CONFIG, "--log-period", "1", "--experiment", "hand",
                     *tiny_overrides(tiny_dataset, out)]) == 0
    assert seen_while_training == [1, 2, 3, 4, 5, 6]

    experiment = client.get_experiment_by_name("hand")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "e2e_faster_rcnn_R-18-FPN_1x"
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train"
    assert run.data.params["SOLVER.MAX_ITER"] == "6"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert _history(client, run.info.run_id, "loss") == [(r["iter"], r["loss"]) for r in records]
    assert [s for s, _ in _history(client, run.info.run_id, "loss_rpn_cls")] == list(range(6))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "train_log.jsonl", "model_final.pth"}
    assert experiment.artifact_location.endswith("mlflow-artifacts/hand")

    # --no-tracking: no run
    assert cli_main(["train", "--cfg", BASE_CONFIG, "--no-tracking", "--experiment", "hand",
                     "--overwrite", *tiny_overrides(tiny_dataset, tmp_path / "untracked")]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_resumed_training_run_gets_the_history_from_before(store, tmp_path):
    """The trainer hands a resumed run the records it keeps; record_logger logs them at their
    iterations, so the run has the whole curve."""
    from detectron_lib.tracking import record_logger

    tracker = Tracker(store["uri"])
    run_id = tracker.start_run(tracker.ensure_experiment("zoo"), "resumed")
    log = record_logger(tracker, run_id)
    log([{"iter": 0, "loss": 2.0, "lr": 0.1}, {"iter": 1, "loss": 1.5, "lr": 0.1}])
    log([{"iter": 2, "loss": 1.0, "lr": 0.1}])
    client = MlflowClient(store["uri"])
    assert _history(client, run_id, "loss") == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert record_logger(tracker, None) is None


def test_a_rerun_ends_runs_that_a_killed_job_left_running(store, tmp_path):
    """SIGKILL leaves a baseline's runs RUNNING; the baseline's next parent run ends them
    KILLED, and leaves other baselines' runs alone."""
    tracker = Tracker(store["uri"])
    experiment_id = tracker.ensure_experiment("zoo")
    orphan = tracker.start_run(experiment_id, "orphan", {"baseline": "killed_one"})
    other = tracker.start_run(experiment_id, "other", {"baseline": "running_one"})
    new = start_parent_run(tracker, store["experiment_file"], tmp_path / "run.json",
                           "killed_one", "zoo")
    client = MlflowClient(store["uri"])
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"
    assert client.get_run(new).info.status == "RUNNING"
