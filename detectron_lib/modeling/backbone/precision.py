"""MODEL.BODY_PRECISION: the dtype the convolutional body (and the res5 RoI head, which is the
body's last stage) runs in under autocast; heads, box coding and losses stay float32."""
import contextlib

import torch


def body_autocast_dtype(precision, device_type):
    """The autocast dtype MODEL.BODY_PRECISION selects on ``device_type``; None: float32."""
    if precision == "auto":
        return torch.float16 if device_type == "cuda" else None
    return None if precision == "float32" else getattr(torch, precision)


def body_precision(precision, device_type):
    """A context running the body's convolutions in ``precision`` on ``device_type``."""
    dtype = body_autocast_dtype(precision, device_type)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
