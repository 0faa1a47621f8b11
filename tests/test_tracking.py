"""detectron_lib.tracking against real MLflow stores in temporary directories.

Reference: what MlflowClient reads back from the same store (runs, parent tags, params,
metric histories, artifacts). Cases: parent/child linking across processes through the run
file, 8 processes logging to one fresh SQLite store at once, and stores that cannot be
reached (one warning, no exception, training goes on).
"""
import json
import logging
import multiprocessing
import os

import pytest
from mlflow.tracking import MlflowClient

from detectron_lib.tracking import (
    Tracker,
    init_experiment,
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


def _log_from_process(args):
    uri, experiment_file, run_dir, index = args
    tracker = Tracker(uri)
    run_file = os.path.join(run_dir, f"run{index}.json")
    parent_id = start_parent_run(tracker, experiment_file, run_file, f"baseline{index}", "zoo")
    with stage_run(tracker, run_file, "train", "train") as (_, child_id):
        tracker.log_params(child_id, {f"P{i}": i for i in range(150)})
        tracker.log_metric_history(child_id, [(step, None, {"loss": 1.0 / (step + 1)})
                                              for step in range(50)])
    return parent_id, child_id, tracker.enabled


@pytest.mark.slow
def test_eight_processes_share_one_sqlite_store(store):
    args = [(store["uri"], str(store["experiment_file"]), str(store["dir"]), i) for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        results = pool.map(_log_from_process, args)
    client = MlflowClient(store["uri"])
    for parent_id, child_id, still_enabled in results:
        assert still_enabled, "a process gave up on tracking (database locked?)"
        child = client.get_run(child_id)
        assert child.data.tags[PARENT_RUN_TAG] == parent_id
        assert len(child.data.params) == 150
        assert len(client.get_metric_history(child_id, "loss")) == 50


def test_unwritable_store_is_one_warning_and_no_error(tmp_path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    tracker = Tracker(f"sqlite:///{blocker}/sub/mlflow.db")
    run_file = tmp_path / "run.json"
    experiment_file = tmp_path / "experiment.json"
    with caplog.at_level(logging.WARNING, logger="detectron_lib.tracking"):
        init_experiment(tracker, "zoo", None, experiment_file)
        parent_id = start_parent_run(tracker, experiment_file, run_file, "b", "zoo")
        with stage_run(tracker, run_file, "train", "train") as (_, child_id):
            tracker.log_metrics(child_id, {"loss": 1.0})
    assert parent_id is None and child_id is None
    assert json.loads(run_file.read_text())["parent_run_id"] is None   # later stages still run
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tracking" in warnings[0].getMessage()


def test_unreachable_server_is_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = Tracker("http://127.0.0.1:9")     # discard port: connection refused
    with caplog.at_level(logging.WARNING, logger="detectron_lib.tracking"):
        assert tracker.ensure_experiment("zoo") is None
        assert tracker.start_run("0", "run") is None
        tracker.log_params("some-run-id", {"a": 1})
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert not tracker.enabled


def test_disabled_tracker_touches_nothing(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", enabled=False)
    assert tracker.ensure_experiment("zoo") is None
    assert not (tmp_path / "mlflow.db").exists()
