"""utils.core_share: a job's share of the DAG's cores follows the jobs running beside it."""
import subprocess
import sys

import torch

from detectron_lib.utils.core_share import CoreShare, available_cores


def test_share_follows_live_jobs_and_drops_dead_leases(tmp_path, monkeypatch):
    monkeypatch.setattr("detectron_lib.utils.core_share.available_cores", lambda: 8)
    share = CoreShare(tmp_path, cores=4).take()
    assert share.threads() == 4                       # alone: every core
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"{share.host}@{other.pid}").touch()
        assert share.live_jobs() == 2 and share.threads() == 2
        (tmp_path / f"another-host@{other.pid}").touch()   # other machines' jobs do not count
        assert share.threads() == 2
    finally:
        other.kill()
        other.wait()
    assert share.threads() == 4                       # the other job ended (killed outright)
    assert not (tmp_path / f"{share.host}@{other.pid}").exists()
    share.release()
    assert not share.lease.exists()


def test_share_is_capped_by_the_cores_this_process_may_use(tmp_path):
    share = CoreShare(tmp_path, cores=10_000).take()
    assert share.threads() == available_cores()
    share.release()


def test_apply_sets_torch_threads(tmp_path, monkeypatch):
    monkeypatch.setattr("detectron_lib.utils.core_share.available_cores", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    share = CoreShare(tmp_path, cores=3).take()
    try:
        assert share.apply() == 3 and torch.get_num_threads() == 3
        (tmp_path / f"{share.host}@1").touch()   # pid 1 is alive: a second job
        assert share.apply() == 1 and torch.get_num_threads() == 1
    finally:
        share.release()
        torch.set_num_threads(before)
