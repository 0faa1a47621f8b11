"""Max-pool: detectron_lib.ops.max_pool2d (compiled kernel) against F.max_pool2d on CPU.

Cases: the ResNet stem's 3x3/2 pad-1 pool on pretraining crops (64 images x 64 channels
of 24x24) and on a detection batch (4 images of 256x384: 4x64x128x192), and a VGG16
2x2/2 pool (2x128x80x120); float32 and bfloat16, forward alone (no autograd) and forward +
backward. The script first checks that outputs and gradients are equal bit for bit.
Run: .venv/bin/python benchmarks/bench_max_pool.py
"""

import torch
from torch.nn import functional as F

from detectron_lib import ops
from timing import bench_args, compare

CASES = [
    ("stem 3x3/2, 64x64x24x24", (64, 64, 24, 24), (3, 2, 1)),
    ("stem 3x3/2, 4x64x128x192", (4, 64, 128, 192), (3, 2, 1)),
    ("VGG 2x2/2, 2x128x80x120", (2, 128, 80, 120), (2, 2, 0)),
]


def forward_backward(pool, x, grad, args):
    return lambda: torch.autograd.grad(pool(x, *args), x, grad)


def main():
    args = bench_args(__doc__, repeats=9)
    generator = torch.Generator().manual_seed(0)
    for name, shape, pool_args in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
            ours, theirs = ops.max_pool2d(x, *pool_args), F.max_pool2d(x, *pool_args)
            grad = torch.randn(ours.shape, generator=generator).to(dtype)
            assert torch.equal(ours, theirs)
            assert torch.equal(forward_backward(ops.max_pool2d, x, grad, pool_args)()[0],
                               forward_backward(F.max_pool2d, x, grad, pool_args)()[0])
            label = f"{name} {str(dtype)[6:]}"
            with torch.no_grad():
                compare(f"{label} forward", lambda: ops.max_pool2d(x, *pool_args),
                        lambda: F.max_pool2d(x, *pool_args), args.repeats, reference="F.max_pool2d")
            compare(f"{label} fwd+bwd", forward_backward(ops.max_pool2d, x, grad, pool_args),
                    forward_backward(F.max_pool2d, x, grad, pool_args), args.repeats,
                    reference="F.max_pool2d")


if __name__ == "__main__":
    main()
