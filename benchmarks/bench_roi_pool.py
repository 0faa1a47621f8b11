"""RoIPool, PS-RoIAlign and PS-RoIPool: detectron_lib.ops against torchvision.ops on CPU.

RoIPool at the RoIAlign issue size (4x256x40x40, 2048 RoIs, 7x7, scale 1/4); the
position-sensitive ops at an R-FCN size (2 images, 7x7 bins x 21 classes = 1029 channels
at stride 16 of 600x1000, 300 RoIs per image). Forward and backward are timed apart.
Run: .venv/bin/python benchmarks/bench_roi_pool.py
"""

import torch
import torchvision

from bench_roi_align import random_rois
from detectron_lib import ops
from timing import bench_args, compare


def forward_and_backward(name, ours_fn, theirs_fn, features, generator, repeats):
    ours_out, theirs_out = ours_fn(), theirs_fn()
    print(f"max |ours - torchvision| {name}: {(ours_out - theirs_out).abs().max().item():.2e}")
    with torch.no_grad():
        compare(f"{name} forward", ours_fn, theirs_fn, repeats)
    grad_out = torch.randn(ours_out.shape, generator=generator)
    compare(f"{name} backward",
            lambda: torch.autograd.grad(ours_out, features, grad_out, retain_graph=True),
            lambda: torch.autograd.grad(theirs_out, features, grad_out, retain_graph=True), repeats)


def main():
    args = bench_args(__doc__, repeats=5)
    generator = torch.Generator().manual_seed(0)

    features = torch.randn(4, 256, 40, 40, generator=generator, requires_grad=True)
    rois = random_rois(2048, 4, 160, 160, 8, 160, generator)
    forward_and_backward("roi_pool (issue size)", lambda: ops.roi_pool(features, rois, 7, 0.25),
                         lambda: torchvision.ops.roi_pool(features, rois, 7, 0.25), features, generator,
                         args.repeats)

    rfcn = torch.randn(2, 21 * 49, 38, 63, generator=generator, requires_grad=True)
    # RoIs kept off the last feature row/column: torchvision's CPU ps_roi_pool forward
    # clips bins there (see detectron_lib.ops.ps_roi_pool), so values would differ.
    rfcn_rois = random_rois(600, 2, 590, 990, 16, 400, generator)
    forward_and_backward("ps_roi_align (R-FCN size)", lambda: ops.ps_roi_align(rfcn, rfcn_rois, 7, 1 / 16, 2),
                         lambda: torchvision.ops.ps_roi_align(rfcn, rfcn_rois, 7, 1 / 16, 2), rfcn, generator,
                         args.repeats)
    forward_and_backward("ps_roi_pool (R-FCN size)", lambda: ops.ps_roi_pool(rfcn, rfcn_rois, 7, 1 / 16),
                         lambda: torchvision.ops.ps_roi_pool(rfcn, rfcn_rois, 7, 1 / 16), rfcn, generator,
                         args.repeats)


if __name__ == "__main__":
    main()
