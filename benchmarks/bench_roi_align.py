"""RoIAlign: detectron_lib.ops against torchvision.ops on CPU, forward and backward.

Cases: the issue's size (4x256x40x40 features, 2048 RoIs, 7x7, spatial_scale 0.25,
sampling_ratio 2) and an FPN training step (512 RoIs per image x 2 images over P2-P5 of an
800x1333 input, levels assigned with Detectron's rule), where ours is one multi-level call
and torchvision one roi_align per level. Run: .venv/bin/python benchmarks/bench_roi_align.py
"""
import math

import torch
import torchvision

from detectron_lib import ops
from detectron_lib.ops import reference
from timing import bench_args, compare


def random_rois(num_rois, batch_size, image_h, image_w, min_size, max_size, generator):
    size = torch.rand(num_rois, 2, generator=generator) * (max_size - min_size) + min_size
    x1 = torch.rand(num_rois, generator=generator) * (image_w - size[:, 0])
    y1 = torch.rand(num_rois, generator=generator) * (image_h - size[:, 1])
    batch = torch.randint(0, batch_size, (num_rois,), generator=generator).float()
    return torch.stack([batch, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)


def forward_backward(fn, features, grad_out):
    def run():
        out = fn()
        torch.autograd.grad(out, features, grad_out)
    return run


def issue_case(generator, repeats):
    features = torch.randn(4, 256, 40, 40, generator=generator, requires_grad=True)
    rois = random_rois(2048, 4, 160, 160, 8, 160, generator)
    args = (7, 0.25, 2, False)
    ours_out = ops.roi_align(features, rois, *args)
    tv_out = torchvision.ops.roi_align(features, rois, *args)
    print(f"max |ours - torchvision| forward: {(ours_out - tv_out).abs().max().item():.2e}")
    grad_out = torch.randn(ours_out.shape, generator=generator)
    # Against the pure-PyTorch reference (slow: a subset of RoIs), values and gradients.
    small = rois[:128]
    ours_small = ops.roi_align(features, small, *args)
    ref_small = reference.roi_align(features, small, (7, 7), 0.25, 2, False)
    print(f"max |ours - reference| forward, 128 RoIs: {(ours_small - ref_small).abs().max().item():.2e}")
    small_grad = grad_out[:128]
    grad_diff = (torch.autograd.grad(ours_small, features, small_grad)[0]
                 - torch.autograd.grad(ref_small, features, small_grad)[0]).abs().max().item()
    print(f"max |ours - reference| input gradient, 128 RoIs: {grad_diff:.2e}")
    with torch.no_grad():
        compare("roi_align forward (issue size)", lambda: ops.roi_align(features, rois, *args),
                lambda: torchvision.ops.roi_align(features, rois, *args), repeats)
    # Backward alone: forward once, then time the gradient computation.
    ours_fwd = ops.roi_align(features, rois, *args)
    tv_fwd = torchvision.ops.roi_align(features, rois, *args)
    compare("roi_align backward (issue size)",
            lambda: torch.autograd.grad(ours_fwd, features, grad_out, retain_graph=True),
            lambda: torch.autograd.grad(tv_fwd, features, grad_out, retain_graph=True), repeats)


def fpn_case(generator, repeats):
    image_h, image_w, channels = 800, 1333, 256
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    features = [torch.randn(2, channels, math.ceil(image_h * s), math.ceil(image_w * s), generator=generator,
                            requires_grad=True) for s in scales]
    rois = random_rois(1024, 2, image_h, image_w, 16, 600, generator)
    # Detectron's FPN level rule: floor(4 + log2(sqrt(area) / 224)), clamped to P2..P5.
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    levels = (4 + torch.log2(area.sqrt() / 224 + 1e-6)).floor().clamp(2, 5).long() - 2

    def ours():
        return ops.multilevel_roi_align(features, rois, levels, 7, scales, 2, False)

    def theirs():
        out = features[0].new_zeros((len(rois), channels, 7, 7))
        for level, scale in enumerate(scales):
            members = torch.nonzero(levels == level).flatten()
            out = out.index_copy(0, members, torchvision.ops.roi_align(features[level], rois[members], 7, scale, 2))
        return out

    print(f"FPN RoIs per level P2..P5: {torch.bincount(levels, minlength=4).tolist()}")
    print(f"max |ours - torchvision| FPN forward: {(ours() - theirs()).abs().max().item():.2e}")
    grad_out = torch.randn(len(rois), channels, 7, 7, generator=generator)
    with torch.no_grad():
        compare("multilevel roi_align forward (FPN P2-P5)", ours, theirs, repeats)
    compare("multilevel roi_align forward+backward (FPN)", forward_backward(ours, features, grad_out),
            forward_backward(theirs, features, grad_out), repeats)


def main():
    args = bench_args(__doc__, repeats=7)
    generator = torch.Generator().manual_seed(0)
    issue_case(generator, args.repeats)
    fpn_case(generator, args.repeats)


if __name__ == "__main__":
    main()
