"""Mask pasting: detectron_lib.ops.paste_masks against torchvision's paste_masks_in_image.

100 detections with 28x28 masks into an 800x1333 image. The two differ in method:
torchvision rounds each box to whole pixels and resizes the padded mask with
F.interpolate; ours samples the mask bilinearly at every pixel centre (grid_sample
semantics, sub-pixel boxes). The figures compare the cost of the same job.
Run: .venv/bin/python benchmarks/bench_paste_masks.py
"""

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from bench_roi_align import random_rois
from detectron_lib import ops
from detectron_lib.ops import reference
from timing import bench_args, compare


def main():
    args = bench_args(__doc__, repeats=7)
    generator = torch.Generator().manual_seed(0)
    height, width = 800, 1333
    masks = torch.rand(100, 28, 28, generator=generator)
    boxes = random_rois(100, 1, height, width, 20, 500, generator)[:, 1:]
    ours = ops.paste_masks(masks, boxes, height, width)
    print(f"max |ours - grid_sample reference|: {(ours - reference.paste_masks(masks, boxes, height, width)).abs().max().item():.2e}")
    with torch.no_grad():
        compare("paste_masks, 100 x 28x28 into 800x1333", lambda: ops.paste_masks(masks, boxes, height, width),
                lambda: paste_masks_in_image(masks[:, None], boxes, (height, width)), args.repeats)


if __name__ == "__main__":
    main()
