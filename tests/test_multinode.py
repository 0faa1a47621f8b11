"""Multi-node training (engine.launch): a manifest entry's nodes x gpus, one torchrun per node
joined through a c10d rendezvous at the SLURM allocation's first node.

The reference is one process with the same global batch: two launches of engine.launch on
this machine, each a 'node' of a 2-node allocation (SLURM's variables set by hand, gloo on the
CPU, TRAIN.IMS_PER_BATCH 2 each) must train the weights one process does with
TRAIN.IMS_PER_BATCH 4. The srun line and resources the train rule gets are checked in
test_workflow_plan.
"""
import os
import socket
import subprocess
import sys

import pytest

from detectron_lib.engine.launch import (
    first_host,
    main,
    rendezvous_port,
    srun_launcher,
    torchrun_arguments,
)
from detectron_lib.errors import ConfigError
from detectron_lib.zoo.manifest import parse_manifest
from test_training import BASE_CONFIG, final_weights, tiny_overrides

SLURM_2_NODES = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[007-008]",
                 "SLURM_NNODES": "2"}


@pytest.mark.parametrize("nodelist, host", [
    ("gpu[007-008]", "gpu007"), ("gpu[003-004,010],cpu1", "gpu003"), ("node1,node2", "node1"),
    ("rack[2-3]-n[10-11]", "rack2-n10"), ("localhost", "localhost"),
])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_torchrun_joins_the_first_node_of_the_allocation():
    assert torchrun_arguments(2, 4, SLURM_2_NODES) == [
        "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"gpu007:{rendezvous_port('4242')}", "--rdzv-id", "4242"]
    assert rendezvous_port("4242") == 29742


def test_outside_slurm_or_on_another_node_count_the_error_says_what_to_do(capsys):
    with pytest.raises(ConfigError, match=r"SLURM_JOB_NODELIST, SLURM_NNODES not set.*nodes: 1"):
        torchrun_arguments(2, 1, {"SLURM_JOB_ID": "1"})
    with pytest.raises(ConfigError, match=r"SLURM_NNODES=2 nodes, the training asks for 4; "
                                          r"submit it with --nodes=4"):
        torchrun_arguments(4, 1, SLURM_2_NODES)
    with pytest.raises(SystemExit) as exit_info:
        main(["--nnodes", "2", "--nproc-per-node", "1", "-m", "detectron_lib.cli", "train"])
    assert exit_info.value.code == 2 and "not set" in capsys.readouterr().err


def test_srun_starts_one_task_per_node_with_its_gpus_and_threads():
    assert srun_launcher(2, 4, 32) == (
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=32 --gpus-per-node=4 "
        "--kill-on-bad-exit=1 python -m detectron_lib.engine.launch --nnodes 2 "
        "--nproc-per-node 4")
    assert "--gpus-per-node" not in srun_launcher(3, 0, 8)        # CPU nodes: one worker each
    assert srun_launcher(3, 0, 8).endswith("--nnodes 3 --nproc-per-node 1")


def test_manifest_nodes_multiply_the_workers_and_num_gpus():
    def manifest(resources):
        return {"name": "m", "table": "T.md", "baselines": {
            "a": {"config": "a.yaml", "section": "rpn", "resources": resources}}}

    two_by_four = parse_manifest(manifest({"nodes": 2, "gpus": 4})).baseline("a").resources
    assert (two_by_four.nodes, two_by_four.num_workers) == (2, 8)    # Detectron's 8 GPUs
    assert parse_manifest(manifest({"gpus": 8})).baseline("a").resources.nodes == 1
    with pytest.raises(ConfigError, match=r"baseline 'a': resources: nodes must be 1 or more, "
                                          r"got 0"):
        parse_manifest(manifest({"nodes": 0}))


@pytest.mark.slow
def test_two_nodes_through_c10d_match_one_process_on_the_same_global_batch(tiny_dataset,
                                                                           tmp_path):
    # MAX_SIZE 64 pads every image to 64x64, so a 4-image batch and two 2-image batches see
    # the same padded inputs (GroupNorm statistics include the padding).
    same_size = {"TRAIN.MAX_SIZE": "64", "SOLVER.MAX_ITER": "3"}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    train = [sys.executable, "-m", "detectron_lib.cli", "train", "--cfg", BASE_CONFIG]
    one = tmp_path / "one"
    single = subprocess.Popen(
        train + tiny_overrides(tiny_dataset, one, **{"TRAIN.IMS_PER_BATCH": "4", **same_size}),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    with socket.socket() as s:   # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node_env = dict(env, SLURM_JOB_ID="7", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="2")
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "detectron_lib.engine.launch", "--nnodes", "2",
              "--nproc-per-node", "1", "--rdzv-port", str(port),
              *train[1:], *tiny_overrides(tiny_dataset, two, **{"TRAIN.IMS_PER_BATCH": "2",
                                                                  **same_size})]
    nodes = [subprocess.Popen(launch, env=node_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in [single, *nodes]:
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-3000:]

    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"largest weight difference, 2 nodes x 1 process vs 1 process: {worst:.3g}")
    assert worst <= 1e-5
