"""NMS, batched NMS, soft-NMS and box IoU: detectron_lib.ops against torchvision.ops on CPU.

10,000 boxes in clusters (like detector outputs before NMS) in an 800x1333 image.
Soft-NMS has no torchvision counterpart: its time alone is reported (target < 100 ms).
Run: .venv/bin/python benchmarks/bench_nms.py
"""

import torch
import torchvision

from detectron_lib import ops
from timing import bench_args, compare, timed


def clustered_boxes(num_boxes, num_objects, generator):
    centers = torch.rand(num_objects, 2, generator=generator) * torch.tensor([1333.0, 800.0])
    sizes = torch.rand(num_objects, 2, generator=generator) * 250 + 20
    pick = torch.randint(0, num_objects, (num_boxes,), generator=generator)
    jitter = torch.randn(num_boxes, 4, generator=generator) * 0.1
    center = centers[pick] + jitter[:, :2] * sizes[pick]
    size = sizes[pick] * (1 + jitter[:, 2:]).clamp(min=0.3)
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    # Distinct scores: with ties, the order of equal-score boxes is implementation-defined.
    return boxes, (torch.randperm(num_boxes, generator=generator).float() + 1) / num_boxes


def main():
    args = bench_args(__doc__, repeats=9,
                      extra=lambda parser: parser.add_argument("--boxes", type=int, default=10_000))
    generator = torch.Generator().manual_seed(0)
    boxes, scores = clustered_boxes(args.boxes, 300, generator)
    classes = torch.randint(0, 80, (args.boxes,), generator=generator)
    keep = ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(ops.batched_nms(boxes, scores, classes, 0.5),
                       torchvision.ops.batched_nms(boxes, scores, classes, 0.5))
    print(f"{args.boxes} boxes, nms keeps {len(keep)} at IoU 0.5 (same indices as torchvision)")
    for threshold in (0.5, 0.7):
        compare(f"nms, IoU {threshold}", lambda: ops.nms(boxes, scores, threshold),
                lambda: torchvision.ops.nms(boxes, scores, threshold), args.repeats)
    compare("batched_nms, 80 classes, IoU 0.5", lambda: ops.batched_nms(boxes, scores, classes, 0.5),
            lambda: torchvision.ops.batched_nms(boxes, scores, classes, 0.5), args.repeats)
    single = torch.zeros_like(classes)
    compare("batched_nms, 1 class, IoU 0.5", lambda: ops.batched_nms(boxes, scores, single, 0.5),
            lambda: torchvision.ops.batched_nms(boxes, scores, single, 0.5), args.repeats)
    compare("box_iou 2000 x 2000", lambda: ops.box_iou(boxes[:2000], boxes[:2000]),
            lambda: torchvision.ops.box_iou(boxes[:2000], boxes[:2000]), args.repeats)
    for method in ("gaussian", "linear"):
        kept, _ = ops.soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
        timed(f"soft_nms {method} (keeps {len(kept)})",
              lambda: ops.soft_nms(boxes, scores, method, 0.5, 0.3, 0.001), args.repeats)


if __name__ == "__main__":
    main()
