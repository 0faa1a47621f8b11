"""The model-zoo DAG submitted to a real SLURM: workflow/profiles/slurm with the executor
plugin (snakemake-executor-plugin-slurm), against a one-node cluster that the fixture starts
on this machine (munged, slurmctld, slurmd; Debian's packages, installed by `make test` as
root, see tests/install_services.sh).

The manifest is two micro baselines: an RPN and a Fast R-CNN trained and tested on its dumped
proposals (3 iterations each). The reference is SLURM's own record: every non-local job of
the DAG (2 dataset steps, 2 trainings, 2 proposal dumps, 2 evaluations) must appear in
`squeue --states=all` and in the job-completion log (`sacct --completion`) as COMPLETED, with
the rule in its comment, and MODEL_ZOO.md must hold both rows.

The cluster, as a probe of Debian 12's SLURM 22.05 found it works: proctrack/linuxproc,
task/none, select/cons_tres on the node `slurmd -C` describes (this machine's CPUs and
memory, named `hostname -s`; each CPU shared by up to 2 jobs, so that the two dataset steps,
2 threads each, run side by side), root as SlurmUser, munge on a socket and key of its own,
free ports, no accounting database: the job-completion plugin jobcomp/filetxt records each job,
and Snakemake polls with squeue (kept valid by MinJobAge 300 s, over 3x the 1 s first
status delay). The jobstep executor clears SLURM_CONF before it calls srun inside a job, so
an srun first on PATH sets it again: nothing is written under /etc.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from local_services import Daemons, free_port, require_programs, wait_until
from test_workflow_dag import write_micro_zoo

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo",
            "scancel", "sacct"]
# The daemons are in /usr/sbin, which a root shell may not have on PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BASELINES = ("rpn_R-18-FPN_1x", "fast_rcnn_R-18-FPN_1x")
# Jobs the DAG submits to SLURM (its local rules, mlflow_init and the table, run on the
# submit host), as the executor writes their comments: rule_<rule>_wildcards_<values>.
SLURM_JOBS = {
    "rule_prepare_dataset_wildcards_micro_train", "rule_prepare_dataset_wildcards_micro_val",
    "rule_train_wildcards_rpn_R-18-FPN_1x", "rule_train_wildcards_fast_rcnn_R-18-FPN_1x",
    "rule_dump_proposals_wildcards_rpn_R-18-FPN_1x_micro_train",
    "rule_dump_proposals_wildcards_rpn_R-18-FPN_1x_micro_val",
    "rule_evaluate_wildcards_rpn_R-18-FPN_1x", "rule_evaluate_wildcards_fast_rcnn_R-18-FPN_1x",
}

SLURM_CONF = """\
ClusterName=detectrontest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=300
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
"""


def _run(argv, env, check=True):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          check=check)


def _tail(path, chars=3000):
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(none)"


def _munge_works(socket_path):
    return subprocess.run(["munge", "-n", "-S", str(socket_path)], capture_output=True,
                          timeout=10).returncode == 0


def _start_munged(daemons, root, env):
    daemons.start("munged", [
        "munged", "--foreground", "--force", f"--socket={root}/munge.socket",
        f"--key-file={root}/munge.key", f"--log-file={root}/munged.log",
        f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"], env=env)
    wait_until(lambda: _munge_works(root / "munge.socket") or daemons.require_alive("munged"),
               20, "munged answering on its socket")


def _node_line(env):
    """This machine as SLURM sees it: `NodeName=<hostname -s> CPUs=.. RealMemory=..`."""
    described = subprocess.run(["slurmd", "-C"], env=env, capture_output=True, text=True,
                               timeout=30, check=True).stdout
    line = next((l for l in described.splitlines() if l.startswith("NodeName=")), None)
    if line is None:
        raise RuntimeError(f"`slurmd -C` described no node:\n{described}")
    return line


def _cancel_jobs(env):
    """Cancel the cluster's pending and running jobs and wait (30 s at most) until they are
    gone, so that no job step outlives slurmd."""
    _run(["scancel", "--user", str(os.geteuid())], env, check=False)
    try:
        wait_until(lambda: not _run(["squeue", "--noheader", "--states=PD,R,CG,CF,S"], env,
                                    check=False).stdout.strip(), 30, "cancelled jobs ending")
    except TimeoutError:
        pass   # stopping the daemons below ends what is left


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster on this machine, stopped (jobs cancelled, daemons ended) when
    the module's tests are done, however they ended; its env is what a submit shell needs
    (SLURM_CONF, and an srun on PATH that keeps it inside jobs)."""
    require_programs("SLURM", PROGRAMS, as_root=True, path=SEARCH_PATH)
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "bin"):
        (root / folder).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": f"{root / 'bin'}{os.pathsep}{SEARCH_PATH}"}
    conf.write_text(SLURM_CONF.format(
        host=subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                            check=True).stdout.strip(),
        ctld_port=free_port(), slurmd_port=free_port(), munge_socket=root / "munge.socket",
        root=root, node=_node_line(env)))
    srun = root / "bin" / "srun"
    srun.write_text("#!/bin/sh\n# The jobstep executor clears SLURM_CONF before it calls srun.\n"
                    f"SLURM_CONF={conf} exec {shutil.which('srun', path=SEARCH_PATH)} \"$@\"\n")
    srun.chmod(0o755)
    with Daemons(root) as daemons:
        try:
            _start_munged(daemons, root, env)
            daemons.start("slurmctld", ["slurmctld", "-D", "-f", str(conf)], env=env)
            daemons.start("slurmd", ["slurmd", "-D", "-f", str(conf)], env=env)
            try:
                wait_until(lambda: _run(["sinfo", "--noheader", "--format=%T"], env,
                                        check=False).stdout.strip() == "idle"
                           or daemons.require_alive("slurmctld", "slurmd"), 30, "node idle")
            except TimeoutError as error:
                pytest.fail(f"{error}; slurmctld.log:\n{_tail(root / 'slurmctld.log')}\n"
                            f"slurmd.log:\n{_tail(root / 'slurmd.log')}")
            yield SimpleNamespace(root=root, env=env, daemons=daemons)
        finally:
            if daemons.alive("slurmctld"):
                _cancel_jobs(env)


def _check_daemons(slurm):
    """munged must answer (a probe once saw it killed mid-run) and the other daemons run."""
    if not _munge_works(slurm.root / "munge.socket"):
        pytest.fail(f"munged does not answer; its log:\n{slurm.daemons.log_tail('munged')}")
    slurm.daemons.require_alive("slurmctld", "slurmd")


@pytest.fixture(autouse=True)
def daemons_alive(slurm):
    """The cluster's daemons are checked before each test (and before the DAG runs)."""
    _check_daemons(slurm)


@pytest.fixture(scope="module")
def slurm_zoo(slurm, tmp_path_factory):
    """The two-baseline micro zoo run by Snakemake through workflow/profiles/slurm."""
    _check_daemons(slurm)
    workdir = tmp_path_factory.mktemp("slurm_zoo")
    manifest = write_micro_zoo(workdir, BASELINES)
    env = {k: v for k, v in slurm.env.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"),
               "--directory", str(workdir), "--profile", str(REPO_ROOT / "workflow/profiles/slurm"),
               "reproduce_model_zoo", "--configfile", manifest,
               # a test cluster: no account, squeue for status, poll after 1 s (default 40 s)
               "--slurm-no-account", "--slurm-status-command", "squeue",
               "--slurm-init-seconds-before-status-checks", "1"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(workdir.rglob("*.log")))
        pytest.fail(f"snakemake through SLURM failed (rc {proc.returncode}):\n"
                    f"{proc.stderr[-6000:]}\n{logs}\nslurmctld.log:\n"
                    f"{_tail(slurm.root / 'slurmctld.log')}")
    print(f"micro zoo through SLURM: {seconds:.1f} s")
    return SimpleNamespace(dir=workdir, seconds=seconds, stderr=proc.stderr)


def test_the_zoo_runs_through_slurm_to_its_table(slurm_zoo):
    table = (slurm_zoo.dir / "MODEL_ZOO.md").read_text()
    assert "## RPN Proposal Baselines" in table
    assert "## Fast & Mask R-CNN Baselines Using Precomputed RPN Proposals" in table
    rows = [line for line in table.splitlines() if line.startswith("| R-18-FPN")]
    assert len(rows) == 2, table
    for row in rows:       # measured times and an MLflow run id in every row
        assert re.search(r"\| \d+\.\d+ \|.*\| `[0-9a-f]{32}` \|", row), row
    for name in BASELINES:
        assert (slurm_zoo.dir / f"results/micro/{name}/eval/metrics.json").is_file()


def test_every_job_but_the_local_rules_went_through_sbatch(slurm, slurm_zoo):
    run_ids = set(re.findall(r"SLURM run ID: (\S+)", slurm_zoo.stderr))
    assert len(run_ids) == 1, slurm_zoo.stderr[-3000:]
    (run_id,) = run_ids
    listed = _run(["squeue", "--states=all", "--noheader", "--name", run_id,
                   "--format=%i|%T|%k"], slurm.env).stdout
    jobs = {comment: (job_id, state) for job_id, state, comment in
            (line.split("|", 2) for line in listed.splitlines())}
    print(f"squeue --states=all --name {run_id}:\n{listed}")
    assert set(jobs) == SLURM_JOBS, listed
    assert {state for _, state in jobs.values()} == {"COMPLETED"}, listed
    # The job-completion record (no accounting database here): the same jobs, completed.
    completed = _run(["sacct", "--completion", "--noheader", "--parsable2",
                      "--format=JobID,JobName,State,Start,End"], slurm.env).stdout
    print(f"sacct --completion:\n{completed}")
    records = {job_id: state for job_id, name, state, _, _ in
               (line.split("|") for line in completed.splitlines()) if name == run_id}
    assert records == {job_id: "COMPLETED" for job_id, _ in jobs.values()}, completed
