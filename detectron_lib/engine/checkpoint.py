"""Training checkpoints: atomic saves, and resume with every piece of state a run depends on.

A checkpoint holds the model, optimizer, the iteration it was taken after and the RNG states
(torch, numpy, python), so that a run killed and resumed continues exactly as an
uninterrupted run would. Snapshots are named as Detectron's (``model_iter{N}``; the last one
``model_final``), with PyTorch's ``.pth`` suffix.
"""
import random
import re
from pathlib import Path

import numpy as np
import torch

from detectron_lib.errors import DetectronError
from detectron_lib.utils.io import atomic_write

FINAL_NAME = "model_final.pth"
_ITER_RE = re.compile(r"^model_iter(\d+)\.pth$")


class CheckpointError(DetectronError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def snapshot_name(iteration):
    return f"model_iter{iteration}.pth"


def rng_state():
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path, model, optimizer=None, iteration=None, extra=None):
    """Write model (+ optimizer, iteration, RNG states) to ``path`` atomically."""
    state = {"model": _unwrap(model).state_dict(), "iteration": iteration, "rng": rng_state()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if extra:
        state.update(extra)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def latest_checkpoint(output_dir):
    """The final model if present, else the snapshot with the highest iteration, else None."""
    output_dir = Path(output_dir)
    if (output_dir / FINAL_NAME).is_file():
        return output_dir / FINAL_NAME
    snapshots = []
    for path in output_dir.glob("model_iter*.pth"):
        match = _ITER_RE.match(path.name)
        if match:
            snapshots.append((int(match.group(1)), path))
    return max(snapshots)[1] if snapshots else None


def load_checkpoint(path):
    """The raw checkpoint dict; a CheckpointError naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from e


def _unwrap(model):
    """The module inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)
