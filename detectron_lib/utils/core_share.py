"""Sharing a machine's cores among the jobs of one DAG that run on it at the same time.

Snakemake grants each job a fixed number of threads, so a job that runs alone (one baseline,
or the last job of a zoo) would leave the other cores idle. Each job instead holds a lease
(a file named after its host and process id) in a folder of the results while it runs, and
sizes its intra-op thread pool to its share of the DAG's cores: cores // live jobs on this
host. Trainings recompute the share every time they log (Snakemake starting or finishing a
job moves it within seconds); short jobs size it once at their start. Leases of processes
that no longer exist (killed outright) are removed when met.

The DAG's jobs sum to at most its cores either way; a job that gets a share larger than
Snakemake granted only uses cores that no other job of the DAG holds.
"""
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)


def available_cores():
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or cgroup allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


class CoreShare:
    """This process's lease among the jobs sharing ``cores`` (capped at the available cores)
    of this host: ``take()`` it, ``apply()`` the share as often as wanted, ``release()`` it."""

    def __init__(self, directory, cores):
        self.directory = Path(directory)
        self.cores = max(1, min(int(cores), available_cores()))
        self.host = socket.gethostname()
        self.lease = self.directory / f"{self.host}@{os.getpid()}"

    def take(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lease.touch()
        return self

    def release(self):
        self.lease.unlink(missing_ok=True)

    def live_jobs(self):
        """Leases of live processes on this host (this one included); dead ones are removed."""
        count = 0
        for lease in self.directory.glob(f"{self.host}@*"):
            pid = lease.name.rsplit("@", 1)[1]
            if pid.isdigit() and _alive(int(pid)):
                count += 1
            else:
                lease.unlink(missing_ok=True)
        return max(count, 1)

    def threads(self, jobs=None):
        """This job's share: the cores divided among the live jobs (``jobs``, else counted),
        at least one."""
        return max(1, self.cores // (jobs or self.live_jobs()))

    def apply(self):
        """Set torch's intra-op threads (and OMP_NUM_THREADS for child processes) to the share
        when it changed; returns it."""
        import torch

        jobs = self.live_jobs()
        threads = self.threads(jobs)
        if threads != torch.get_num_threads():
            logger.info("using %d of %d cores (%d jobs running)", threads, self.cores, jobs)
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        return threads
