"""Which process of a run this is: the one place that decides who writes files and talks to
MLflow (rank 0), from a known rank or, before or without a process group, from the
environment torchrun sets (RANK)."""
import os


def is_main_process(rank=None):
    """Whether ``rank`` (default: this process's, RANK; 0 outside torchrun) is rank 0."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    return int(rank) == 0
