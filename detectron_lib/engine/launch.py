"""Multi-node data-parallel launch inside a SLURM allocation: one torchrun per node, joined
through a c10d rendezvous at the allocation's first node.

    srun --nodes=N --ntasks=N --ntasks-per-node=1 ... \\
        python -m detectron_lib.engine.launch --nnodes N --nproc-per-node G -m MODULE ARGS

Each task reads SLURM's environment (SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_NNODES) and runs
``torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--rdzv-id JOB_ID -m MODULE ARGS``, HOST being the first node of the allocation and PORT
derived from the job id (two jobs sharing a first node do not collide). The N x G workers
form one process group (engine.distributed); TRAIN.IMS_PER_BATCH is per worker.
``srun_launcher`` writes the srun line the zoo's train rule runs.
"""
import argparse
import os
import re
import shlex
import sys

from detectron_lib.errors import ConfigError

RDZV_BASE_PORT = 29500
RDZV_PORT_SPAN = 1000   # ports RDZV_BASE_PORT .. + SPAN - 1, by job id
_BRACKET = re.compile(r"\[([^\],\-]+)[^\]]*\]")


def first_host(nodelist):
    """The first host of a SLURM node list: 'gpu[003-004,010],cpu1' -> 'gpu003'."""
    head = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist or "")
    if not head:
        raise ConfigError(f"SLURM_JOB_NODELIST '{nodelist}' names no host; run inside a SLURM "
                          "allocation (sbatch, salloc or srun)")
    return _BRACKET.sub(lambda m: m.group(1), head.group(0))


def rendezvous_port(job_id):
    """The c10d rendezvous port of SLURM job ``job_id``."""
    return RDZV_BASE_PORT + int(job_id) % RDZV_PORT_SPAN


def torchrun_arguments(nnodes, nproc_per_node, environ, port=None):
    """torchrun's options for this node of an ``nnodes``-node SLURM allocation (``environ``:
    the task's environment); ConfigError when SLURM's variables are missing or the allocation
    has another node count."""
    missing = [key for key in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES")
               if not environ.get(key)]
    if missing:
        raise ConfigError(f"a {nnodes}-node training runs inside a SLURM allocation, one task "
                          f"per node (srun); {', '.join(missing)} not set. Run the zoo with "
                          "--profile workflow/profiles/slurm, or give the baseline nodes: 1")
    if int(environ["SLURM_NNODES"]) != nnodes:
        raise ConfigError(f"the allocation has SLURM_NNODES={environ['SLURM_NNODES']} nodes, "
                          f"the training asks for {nnodes}; submit it with --nodes={nnodes}")
    job_id = environ["SLURM_JOB_ID"]
    endpoint = f"{first_host(environ['SLURM_JOB_NODELIST'])}:{port or rendezvous_port(job_id)}"
    return ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job_id]


def srun_launcher(nnodes, gpus_per_node, threads):
    """The command prefix that starts a module's multi-node training (one task per node with
    ``threads`` CPUs and ``gpus_per_node`` GPUs), e.g. for the train rule."""
    gpus = [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    return shlex.join(["srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
                       f"--cpus-per-task={threads}", *gpus, "--kill-on-bad-exit=1",
                       "python", "-m", "detectron_lib.engine.launch", "--nnodes", str(nnodes),
                       "--nproc-per-node", str(max(1, gpus_per_node))])


def main(argv=None):
    """Run torchrun for this node on ``-m MODULE ARGS``."""
    parser = argparse.ArgumentParser(
        prog="python -m detectron_lib.engine.launch",
        description="One node's torchrun of a multi-node training in a SLURM allocation.")
    parser.add_argument("--nnodes", type=int, required=True, help="nodes of the training")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="workers per node")
    parser.add_argument("--rdzv-port", type=int, default=None,
                        help=f"rendezvous port (default: {RDZV_BASE_PORT} + SLURM_JOB_ID "
                             f"mod {RDZV_PORT_SPAN})")
    parser.add_argument("-m", "--module", required=True,
                        help="module each worker runs, e.g. detectron_lib.cli")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's arguments")
    args = parser.parse_args(argv)
    try:
        options = torchrun_arguments(args.nnodes, args.nproc_per_node, os.environ,
                                     args.rdzv_port)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    from torch.distributed.run import main as torchrun

    torchrun(options + ["-m", args.module, *args.args])


if __name__ == "__main__":
    sys.exit(main())
