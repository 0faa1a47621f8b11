"""A tracking server for clusters: `mlflow server` on a PostgreSQL database with an artifact
root, and zoo jobs logging to it at once through MLFLOW_TRACKING_URI=http://..., as
workflow/README.md ("On a SLURM cluster") tells cluster users to run it.

PostgreSQL (Debian's; `make test` installs it as root, tests/install_services.sh) runs on a
fresh data directory and a free port, the MLflow server on another. The zoo's mlflow-init
step creates the experiment (its artifacts: the server's root), then PROCESSES processes
start at once and each logs what a train job logs, through the project's tracking module
with the store taken from MLFLOW_TRACKING_URI: a baseline's parent run, a train child with
150 params, a 50-step loss history and an artifact file, a final metric. The reference is
what MlflowClient reads back through the server, the runs in PostgreSQL's own tables, and the
files under the server's artifact root.
"""
import glob
from contextlib import closing
import multiprocessing
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from detectron_lib.tracking import make_tracker, stage_run, start_parent_run
from detectron_lib.tracking.tracker import PARENT_RUN_TAG
from detectron_lib.zoo.manifest import parse_manifest
from detectron_lib.zoo.steps import init_tracking
from local_services import Daemons, free_port, unavailable, wait_until

pytestmark = [pytest.mark.tracking_server, pytest.mark.slow]

PROCESSES = 4
ZOO = {"name": "cluster", "table": "MODEL_ZOO.md",
       "baselines": {"rpn_R-18-FPN_1x": {"config": "rpn.yaml", "section": "rpn"}}}


def _postgres_bindir():
    """The folder of PostgreSQL's server programs: initdb's on PATH, else the newest of
    Debian's /usr/lib/postgresql/<version>/bin; None without one."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _connects(dsn):
    import psycopg2

    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _healthy(url):
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """PostgreSQL and an MLflow server on it (artifact root: a temporary folder), both
    stopped, and PostgreSQL's data removed, when the module's tests are done."""
    bindir = _postgres_bindir()
    if bindir is None:
        unavailable("PostgreSQL", ["initdb not found (Debian's postgresql package)"])
    try:
        import psycopg2
    except ImportError:
        unavailable("PostgreSQL", ["psycopg2 not installed (pip install -e '.[dev]')"])
    # PostgreSQL refuses to run as root: as root it runs as Debian's postgres user, in a
    # folder that user can enter (pytest's temporary folders are root's alone).
    as_user = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("PostgreSQL", ["running as root and no 'postgres' user to run it as"])
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    logs = tmp_path_factory.mktemp("tracking_server")
    pg_root = Path(tempfile.mkdtemp(prefix="detectron-postgres-"))
    try:
        if as_user:
            os.chown(pg_root, as_user["user"], as_user["group"])
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", str(pg_root / "data"), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120, **as_user)
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        with Daemons(logs) as daemons:
            pg_port = free_port()
            daemons.start("postgres", [
                str(bindir / "postgres"), "-D", str(pg_root / "data"), "-p", str(pg_port),
                "-k", str(pg_root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stop_signal=signal.SIGINT, **as_user)
            server_dsn = f"postgresql://postgres@127.0.0.1:{pg_port}"
            wait_until(lambda: _connects(f"{server_dsn}/postgres")
                       or daemons.require_alive("postgres"), 60, "PostgreSQL accepting")
            connection = psycopg2.connect(f"{server_dsn}/postgres")
            connection.autocommit = True
            connection.cursor().execute("CREATE DATABASE mlflow")
            connection.close()

            port = free_port()
            artifacts = logs / "artifacts"
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            daemons.start("mlflow", [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"{server_dsn}/mlflow",
                "--artifacts-destination", str(artifacts),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: _healthy(url) or daemons.require_alive("mlflow"), 180,
                           "MLflow server answering /health")
            except TimeoutError as error:
                pytest.fail(f"{error}; its output:\n{daemons.log_tail('mlflow')}")
            yield SimpleNamespace(url=url, db=f"{server_dsn}/mlflow", artifacts=artifacts,
                                  daemons=daemons)
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)


def _train_job(args):
    """What a train job of the zoo logs, with the store from MLFLOW_TRACKING_URI; returns
    (parent run id, train run id)."""
    experiment_file, run_dir, index = args
    tracker = make_tracker()
    run_file = Path(run_dir) / f"run{index}.json"
    parent_id = start_parent_run(tracker, experiment_file, run_file, f"baseline{index}",
                                 ZOO["name"])
    train_log = Path(run_dir) / f"train_log{index}.jsonl"
    train_log.write_text(f'{{"job": {index}}}\n')
    with stage_run(tracker, run_file, "train", "train") as (_, child_id):
        tracker.log_params(child_id, {f"P{i:03d}": i + index for i in range(150)})
        tracker.log_metric_history(child_id, [(step, None, {"loss": 1.0 / (step + 1 + index)})
                                              for step in range(50)])
        tracker.log_artifacts(child_id, [train_log])
    tracker.log_metrics(parent_id, {"bbox/AP": index / 10})
    tracker.end_run(parent_id)
    return parent_id, child_id


def test_parallel_jobs_all_land_on_the_server(tracking_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    monkeypatch.chdir(tmp_path)
    zoo = parse_manifest(ZOO)
    document = init_tracking(zoo)                           # the DAG's mlflow_init
    assert document["tracking_uri"] == tracking_server.url
    experiment_file = str(Path(zoo.layout.experiment_file).absolute())
    jobs = [(experiment_file, str(tmp_path), index) for index in range(PROCESSES)]
    context = multiprocessing.get_context("spawn")        # each job its own interpreter
    with context.Pool(PROCESSES) as pool:
        results = pool.map(_train_job, jobs)

    client = MlflowClient(tracking_server.url)
    experiment = client.get_experiment_by_name(ZOO["name"])
    assert experiment.experiment_id == document["experiment_id"]
    # Artifacts go through the server to its root, not to a path the nodes must mount.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == 2 * PROCESSES
    assert len({parent for parent, _ in results}) == PROCESSES
    for index, (parent_id, child_id) in enumerate(results):
        parent, child = client.get_run(parent_id), client.get_run(child_id)
        assert parent.info.status == child.info.status == "FINISHED"
        assert parent.data.tags["baseline"] == f"baseline{index}"
        assert parent.data.metrics["bbox/AP"] == pytest.approx(index / 10)
        assert child.data.tags[PARENT_RUN_TAG] == parent_id
        assert child.data.tags["stage"] == "train"
        assert len(child.data.params) == 150 and child.data.params["P149"] == str(149 + index)
        history = client.get_metric_history(child_id, "loss")
        assert sorted(m.step for m in history) == list(range(50))
        downloaded = client.download_artifacts(child_id, f"train_log{index}.jsonl",
                                               str(tmp_path / "downloads"))
        assert Path(downloaded).read_text() == f'{{"job": {index}}}\n'
    # The server keeps them where it was told: its database and its artifact root.
    assert sorted(p.name for p in tracking_server.artifacts.rglob("train_log*.jsonl")) == [
        f"train_log{i}.jsonl" for i in range(PROCESSES)]
    import psycopg2

    with closing(psycopg2.connect(tracking_server.db)) as connection, \
            connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(*) FILTER (WHERE status = 'FINISHED') "
                       "FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
        assert cursor.fetchone() == (2 * PROCESSES, 2 * PROCESSES)
        cursor.execute("SELECT count(*) FROM params")
        assert cursor.fetchone()[0] == 150 * PROCESSES
    tracking_server.daemons.require_alive("postgres", "mlflow")
