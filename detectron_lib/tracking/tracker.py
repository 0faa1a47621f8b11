"""MLflow tracking through explicit run ids, safe for parallel jobs.

Every DAG job is its own process, so runs are addressed by id with ``MlflowClient`` rather
than MLflow's process-global "active run": a baseline's parent run is created once, its id
stored in a small JSON file, and each stage's child run carries the ``mlflow.parentRunId``
tag that makes the UI nest it under the parent.

Parallel jobs on one SQLite store: the first process to open it creates and migrates the
schema while holding an exclusive lock on ``<store>.lock`` (MLflow's own creation races:
"table ... already exists", a half-migrated store); the others wait, then find it ready. A
call that fails while SQLite is locked by another job is retried with backoff for up to
``lock_timeout_s``; any other failure is retried ``attempts`` times, then raises TrackingError,
so that a job never records a run it could not track (a run file with a null id).
"""
import contextlib
import fcntl
import functools
import math
import os
import random
import subprocess
import time
from pathlib import Path

from detectron_lib.errors import TrackingError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
PARENT_RUN_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"

# MLflow accepts at most 100 params and 1000 metrics per log_batch call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE_CHARS = 6000


def tracking_uri():
    """$MLFLOW_TRACKING_URI, else SQLite at results/mlflow.db under the working directory."""
    return os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def is_tracking_server(uri):
    """Whether ``uri`` names an MLflow tracking server (http:// or https://), which keeps
    the artifacts of its experiments under its own artifact root, rather than a store."""
    return str(uri).lower().startswith(("http://", "https://"))


@functools.lru_cache(maxsize=8)
def git_commit(path=None):
    """HEAD commit of the git checkout holding ``path`` (default: this package), or None."""
    path = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _is_lock_error(error):
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


@contextlib.contextmanager
def _exclusive_file_lock(path):
    """Hold an exclusive flock on ``path`` (created if absent) for the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """Logging to one MLflow tracking store by run id.

    tracking_uri: store URI (default: ``tracking_uri()``); a relative SQLite path is taken
        relative to the working directory and its folder is created.
    enabled: False makes every method a no-op returning None (non-zero ranks,
        ``--no-tracking``).
    lock_timeout_s: how long a call keeps retrying while SQLite reports "database is locked".
    attempts: how many times a call that fails otherwise is tried before TrackingError.
    """

    def __init__(self, uri=None, enabled=True, lock_timeout_s=120.0, attempts=3):
        self.uri = uri or tracking_uri()
        self.enabled = enabled
        self.lock_timeout_s = lock_timeout_s
        self.attempts = attempts
        self._client = None

    # -- plumbing ----------------------------------------------------------------------------
    def _get_client(self):
        if self._client is None:
            # A server that does not answer should cost seconds, not MLflow's default minutes
            # of HTTP retries; a user's explicit settings win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            if not self.uri.startswith("sqlite:///"):
                self._client = MlflowClient(tracking_uri=self.uri)
                return self._client
            db_path = Path(self.uri[len("sqlite:///"):])
            db_path.parent.mkdir(parents=True, exist_ok=True)
            # The first use of a store creates and migrates its schema: one process at a time,
            # so that parallel jobs on a fresh store do not race.
            with _exclusive_file_lock(db_path.with_name(db_path.name + ".lock")):
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)
            self._client = client
        return self._client

    def _call(self, what, fn):
        """Run ``fn(client)``, retrying while SQLite is locked (up to lock_timeout_s) and
        after other errors (``attempts`` tries in all); then raise TrackingError."""
        if not self.enabled:
            return None
        deadline = time.monotonic() + self.lock_timeout_s
        delay, failures = 0.05, 0
        while True:
            try:
                return fn(self._get_client())
            except Exception as error:  # noqa: BLE001 - every store error is retried alike
                if _is_lock_error(error):
                    retry = time.monotonic() < deadline
                else:
                    failures += 1
                    retry = failures < self.attempts
                    delay = max(delay, 0.5)
                if not retry:
                    message = str(error).splitlines()[0] if str(error) else ""
                    raise TrackingError(
                        f"MLflow tracking at {self.uri}: {what} failed "
                        f"({type(error).__name__}: {message}); make the store writable or the "
                        f"server reachable ({TRACKING_URI_ENV} names it), or run without "
                        f"tracking (--no-tracking)") from error
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    # -- experiments and runs ----------------------------------------------------------------
    def ensure_experiment(self, name, artifact_location=None):
        """Id of the experiment ``name``, created (with ``artifact_location``) if absent."""
        def get_or_create(client):
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except Exception:
                # Another job created it between our lookup and our create.
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                return experiment.experiment_id

        return self._call(f"creating experiment '{name}'", get_or_create)

    def start_run(self, experiment_id, run_name, tags=None, parent_run_id=None):
        """Create a run (a child of ``parent_run_id`` when given); returns its id."""
        if experiment_id is None:
            return None
        tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if parent_run_id:
            tags[PARENT_RUN_TAG] = parent_run_id
        return self._call(f"starting run '{run_name}'", lambda c: c.create_run(
            experiment_id, run_name=run_name, tags=tags).info.run_id)

    def end_run(self, run_id, status="FINISHED"):
        """Mark a run FINISHED, FAILED or KILLED."""
        if run_id:
            self._call("ending a run", lambda c: c.set_terminated(run_id, status=status))

    def end_stale_runs(self, experiment_id, tag, value):
        """Mark the runs of ``experiment_id`` tagged ``tag`` = ``value`` that are still RUNNING
        as KILLED: runs of a job that was killed outright (SIGKILL), or a baseline's parent
        whose evaluation never came, superseded by a rerun. Returns their ids."""
        if experiment_id is None:
            return []
        query = f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'"

        def end_all(client):
            stale = [run.info.run_id for run in client.search_runs([experiment_id], query)]
            for run_id in stale:
                client.set_terminated(run_id, status="KILLED")
            return stale

        return self._call("ending stale runs", end_all) or []

    def set_tags(self, run_id, tags):
        if not run_id or not tags:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        self._call("setting tags", lambda c: c.log_batch(run_id, tags=batch))

    # -- params, metrics, artifacts ----------------------------------------------------------
    def log_params(self, run_id, params):
        """Log a flat mapping of params (e.g. ``cfg.to_flat_dict()``), in batches of 100."""
        if not run_id:
            return
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = items[start:start + _PARAMS_PER_BATCH]
            self._call("logging params", lambda c: c.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id, metrics, step=0, timestamp_ms=None):
        """Log ``{name: number}`` at ``step``; NaN values (undefined metrics) are skipped."""
        self.log_metric_history(run_id, [(step, timestamp_ms, metrics)])

    def log_metric_history(self, run_id, history):
        """Log many steps at once: ``history`` is an iterable of (step, timestamp_ms or None,
        {name: number}). MLflow metric names may not contain '@', which becomes '_at_'."""
        if not run_id:
            return
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = []
        for step, timestamp_ms, values in history:
            for name, value in values.items():
                if value is None or isinstance(value, bool):
                    continue
                value = float(value)
                if math.isfinite(value):
                    metrics.append(Metric(metric_key(name), value,
                                          int(timestamp_ms or now_ms), int(step)))
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            chunk = metrics[start:start + _METRICS_PER_BATCH]
            self._call("logging metrics", lambda c: c.log_batch(run_id, metrics=chunk))

    def log_artifacts(self, run_id, paths, artifact_path=None):
        """Copy existing files among ``paths`` into the run's artifacts."""
        if not run_id:
            return
        for path in paths:
            if path and Path(path).is_file():
                self._call(f"logging artifact {path}",
                           lambda c, p=str(path): c.log_artifact(run_id, p, artifact_path))


def metric_key(name):
    """An MLflow-legal metric name for one of ours ('proposals/AR@100' -> 'proposals/AR_at_100')."""
    return str(name).replace("@", "_at_")


def _param_value(value):
    text = str(value)
    return text if len(text) <= _MAX_PARAM_VALUE_CHARS else text[:_MAX_PARAM_VALUE_CHARS - 3] + "..."
