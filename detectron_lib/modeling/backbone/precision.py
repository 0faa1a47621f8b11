"""MODEL.BODY_PRECISION: the dtype the convolutional body (and the res5 RoI head, which is the
body's last stage) runs in under autocast; MODEL.HEAD_PRECISION: the same for the heads'
hidden layers, whose predictors, box coding and losses stay float32. ``run_in_precision``
runs a part of a model so. 'auto' picks by what the hardware runs fast: float16 on CUDA,
bfloat16 on CPUs with native bfloat16 arithmetic, float32 elsewhere.

And the memory layout the body runs in: on the CPU, images enter it channels-last (NHWC) when
build_model laid the convolution weights out so (models without GroupNorm), and oneDNN
convolves without reordering every input and weight (the R-50-FPN body at 800 x 1216 px:
2.5 -> 1.7 s at 2 threads; its training step 5.3 -> 4.3 s). Every op after it keeps the
layout; the RoI kernels read it.
"""
import contextlib
import functools
import os

import torch
from torch import nn


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which it still runs bfloat16 natively.
_BF16_ISA_MARKERS = ("BF16", "AMX", "AVX10", "ALL", "DEFAULT")


@functools.lru_cache(maxsize=1)
def native_cpu_bfloat16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX) and oneDNN may use it
    (ONEDNN_MAX_CPU_ISA does not cap it below). Elsewhere oneDNN emulates bfloat16, many
    times slower than float32 (a shapes pretraining step on an AVX2 CPU, 2 threads: 17-23 s
    against 0.5-0.6 s)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not any(marker in cap for marker in _BF16_ISA_MARKERS):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def body_autocast_dtype(precision, device_type):
    """The autocast dtype MODEL.BODY_PRECISION (or HEAD_PRECISION) selects on
    ``device_type``; None: float32. 'auto': float16 on CUDA, bfloat16 on a CPU that computes
    it natively (native_cpu_bfloat16), float32 on other CPUs."""
    if precision == "auto":
        if device_type == "cuda":
            return torch.float16
        return torch.bfloat16 if device_type == "cpu" and native_cpu_bfloat16() else None
    return None if precision == "float32" else getattr(torch, precision)


def body_precision(precision, device_type):
    """A context running the body's convolutions in ``precision`` on ``device_type``."""
    dtype = body_autocast_dtype(precision, device_type)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def run_in_precision(precision, layers, x):
    """Run ``layers`` (a callable) on ``x`` under the autocast of ``precision`` (a
    MODEL.BODY_PRECISION / HEAD_PRECISION value); the result comes back in float32 for the
    float32 layers after it (predictors, pooling)."""
    if body_autocast_dtype(precision, x.device.type) is None:
        return layers(x)
    with body_precision(precision, x.device.type):
        return layers(x).float()


@contextlib.contextmanager
def reuse_weight_casts(device_type):
    """Within this context, autocast casts each trainable weight to bfloat16 / float16 once
    and reuses the copy in every later forward pass. For inference over a dataset, where
    weights do not change: autocast keeps its casts until the outermost autocast region
    exits, and this context is that region (autocast itself off in it). Without it, every
    image pays the casts again: VGG16's 100M-weight fc6 alone took 0.14 of 0.34 s/image."""
    with torch.autocast(device_type, enabled=False):
        yield


def prefers_channels_last(model):
    """Whether ``model`` should run channels-last on the CPU: yes unless it holds GroupNorm,
    whose CPU backward is ~20x slower in that layout (a shapes R-18-FPN GN training step takes
    0.67 s channels-last, 0.61 s without)."""
    return not any(isinstance(m, nn.GroupNorm) for m in model.modules())


def body_layout(images, backbone):
    """``images`` (N, C, H, W) in the layout ``backbone`` runs in: channels-last on the CPU
    when build_model laid its convolution weights out so."""
    if images.device.type == "cpu" and _has_channels_last_weights(backbone):
        return images.contiguous(memory_format=torch.channels_last)
    return images


def _has_channels_last_weights(module):
    """Whether the first spatial (k > 1) convolution weight of ``module`` is channels-last."""
    for param in module.parameters():
        if param.dim() == 4 and param.shape[-1] > 1:
            return (param.is_contiguous(memory_format=torch.channels_last)
                    and not param.is_contiguous())
    return False
