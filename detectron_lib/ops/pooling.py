"""2-D max-pooling: F.max_pool2d's results with a faster CPU kernel.

PyTorch's CPU max_pool2d on NCHW maps is slow (49 ms for a 4x64x128x192 3x3/2 pool on
one thread); torch.ops.detectron.max_pool2d gives the same outputs, argmax pixels and
gradients bit for bit (benchmarks/RESULTS.md has the timings).
"""
import torch
from torch.nn import functional as F

from detectron_lib.ops import _backend

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _pair(value):
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """F.max_pool2d(x, kernel_size, stride, padding) (no dilation, floor output sizes).

    Contiguous (N, C, H, W) float32 / bfloat16 CPU tensors run the compiled kernel, with
    autograd; anything else (CUDA, channels_last, other dtypes, the reference backend)
    runs F.max_pool2d.
    """
    kernel_size = _pair(kernel_size)
    stride = kernel_size if stride is None else _pair(stride)
    padding = _pair(padding)
    if (x.device.type == "cpu" and _backend.use_kernels() and x.dtype in _KERNEL_DTYPES
            and x.dim() == 4 and x.is_contiguous()):
        return torch.ops.detectron.max_pool2d(x, kernel_size, stride, padding)[0]
    return F.max_pool2d(x, kernel_size, stride, padding)
