"""Process-group setup for data-parallel runs under ``torchrun`` (or a single process).

``torchrun --nproc_per_node N`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is
one process and nothing is initialized. CPU runs use the gloo backend, CUDA runs NCCL.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from detectron_lib.utils.ranks import is_main_process


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        """Rank 0 alone writes files and logs to MLflow."""
        return is_main_process(self.rank)


def resolve_device(name):
    """torch.device for the config's DEVICE ('auto' picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(device_type="cpu"):
    """Join the process group torchrun describes in the environment; return this rank's info."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(values):
    """Average a dict of float scalars over ranks (for logging losses)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))
