"""Which process of a run this is, from the environment torchrun sets (RANK), before or without
a process group: the one place that decides who writes files and talks to MLflow."""
import os


def is_main_process():
    """True outside torchrun and on its rank 0."""
    return int(os.environ.get("RANK", "0")) == 0
