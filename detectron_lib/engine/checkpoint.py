"""Training checkpoints: atomic saves, and resume with every piece of state a run depends on.

A checkpoint holds the model, optimizer, the iteration it was taken after and the RNG states
(torch, numpy, python), so that a run killed and resumed continues exactly as an
uninterrupted run would. Snapshots are named as Detectron's (``model_iter{N}``; the last one
``model_final``), with PyTorch's ``.pth`` suffix.

Files are data, never code: every torch file is read with ``torch.load(weights_only=True)``
(``load_torch_file``), and a checkpoint holds only tensors, numbers, strings and containers
(the numpy RNG state is stored as a tuple with a tensor), so it loads with no extra allowed
globals. A file naming anything else is refused (CheckpointRefusedError) before it runs.
"""
import logging
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from detectron_lib.errors import DetectronError
from detectron_lib.utils.io import atomic_write
from detectron_lib.utils.safe_pickle import refusal_message

logger = logging.getLogger(__name__)

FINAL_NAME = "model_final.pth"
_ITER_RE = re.compile(r"^model_iter(\d+)\.pth$")


class CheckpointError(DetectronError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


class CheckpointRefusedError(CheckpointError):
    """A checkpoint or weights file holds objects that are not data: loading it could run code."""


def snapshot_name(iteration):
    return f"model_iter{iteration}.pth"


def rng_state():
    """torch, numpy and python RNG states as tensors, numbers, strings and tuples only (what
    ``torch.load(weights_only=True)`` reads): numpy's MT19937 key array becomes an int64 tensor."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached_gaussian)),
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore what ``rng_state`` returned: the same random streams continue."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(path, model, optimizer=None, iteration=None, extra=None):
    """Write model (+ optimizer, iteration, RNG states) to ``path`` atomically."""
    state = {"model": _unwrap(model).state_dict(), "iteration": iteration, "rng": rng_state()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if extra:
        state.update(extra)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def checkpoints_newest_first(output_dir):
    """The final model if present, then the snapshots from the highest iteration down."""
    output_dir = Path(output_dir)
    snapshots = []
    for path in output_dir.glob("model_iter*.pth"):
        match = _ITER_RE.match(path.name)
        if match:
            snapshots.append((int(match.group(1)), path))
    final = [output_dir / FINAL_NAME] if (output_dir / FINAL_NAME).is_file() else []
    return final + [path for _, path in sorted(snapshots, reverse=True)]


def load_latest_checkpoint(output_dir):
    """(path, checkpoint dict) of the newest readable checkpoint in ``output_dir`` (the order
    of ``checkpoints_newest_first``), or (None, None) when there is none.

    A newer one that cannot be read (truncated, corrupt) is passed over with a warning naming
    it and the one used instead; if none can be read, a CheckpointError lists them. A file
    refused as not data (CheckpointRefusedError) is never passed over: it stops the resume.
    """
    candidates = checkpoints_newest_first(output_dir)
    unreadable = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointRefusedError:
            raise
        except CheckpointError as e:
            unreadable.append((path, e))
            continue
        for _, error in unreadable:
            logger.warning("%s; resuming from the older checkpoint %s instead", error, path)
        return path, state
    if unreadable:
        raise CheckpointError(
            f"no checkpoint in '{output_dir}' can be read:\n"
            + "\n".join(f"  {error}" for _, error in unreadable)
            + f"\nmove them out of '{output_dir}' or set TRAIN.AUTO_RESUME False to train from "
            "the start")
    return None, None


def load_checkpoint(path):
    """The raw checkpoint dict; a CheckpointError naming the file if it cannot be read, a
    CheckpointRefusedError if it holds anything but data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return load_torch_file(path, "checkpoint")


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def load_torch_file(path, kind="checkpoint"):
    """``torch.load(path, weights_only=True)`` on the CPU. A file naming a global torch does not
    admit as data raises CheckpointRefusedError naming the file and the global (nothing of it
    runs); a truncated or foreign file, a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = _GLOBAL_RE.search(str(e))
        refused = match.group(1) if match else _unsafe_global(path)
        if refused:
            raise CheckpointRefusedError(refusal_message(path, refused, kind)) from None
        error = e
    except Exception as e:  # a truncated or foreign file: say which one
        error = e
    reason = next((line.strip() for line in str(error).splitlines()
                   if "WeightsUnpickler error" in line), str(error).splitlines()[0] if str(error) else "")
    raise CheckpointError(f"{kind} '{path}' cannot be read ({type(error).__name__}: {reason})") from error


def _unsafe_global(path):
    """The first global of a torch zip file that weights_only refuses, or None."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return None
    return names[0] if names else None


def _unwrap(model):
    """The module inside a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)
