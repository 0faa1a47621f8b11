"""NMS, class-wise NMS, soft-NMS and pairwise IoU of (x1, y1, x2, y2) boxes (no +1 widths).

nms, batched_nms and box_iou are drop-ins for torchvision.ops'. CPU tensors run the
compiled kernels (or the references when that backend is selected); CUDA tensors run
torchvision (soft-NMS, which torchvision lacks, runs on the CPU and moves back).
"""
import torch
import torchvision

from detectron_lib.errors import ConfigError
from detectron_lib.ops import _backend, reference


def nms(boxes, scores, iou_threshold):
    """Greedy NMS. boxes: (N, 4); scores: (N,). Returns int64 kept indices, decreasing score."""
    if boxes.device.type != "cpu":
        return torchvision.ops.nms(boxes, scores, iou_threshold)
    if not _backend.use_kernels():
        return reference.nms(boxes, scores, iou_threshold)
    return torch.ops.detectron.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS applied independently within each category of idxs (N,) int.

    Returns int64 kept indices in decreasing score order, like torchvision's batched_nms.
    """
    if boxes.device.type != "cpu":
        return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    if not _backend.use_kernels():
        return reference.batched_nms(boxes, scores, idxs, iou_threshold)
    return torch.ops.detectron.batched_nms(boxes, scores.to(boxes.dtype), idxs, float(iou_threshold))


def soft_nms(boxes, scores, method="linear", sigma=0.5, iou_threshold=0.3, score_threshold=0.001):
    """Soft-NMS of Detectron (cython_nms.soft_nms, Bodla et al. 2017), without its +1 areas.

    boxes: (N, 4); scores: (N,). method: "linear" (score * (1 - IoU) above iou_threshold),
    "gaussian" (score * exp(-IoU^2 / sigma)) or "hard" (0 above iou_threshold). A box whose
    decayed score falls below score_threshold is dropped. Defaults are Detectron's
    box_utils.soft_nms. Returns (keep, kept_scores): int64 indices in decreasing score
    order and their decayed scores.
    """
    if method not in reference.SOFT_NMS_METHODS:
        raise ConfigError(
            f"soft-NMS method {method!r} is unknown (TEST.SOFT_NMS.METHOD); use one of "
            f"{', '.join(reference.SOFT_NMS_METHODS)}"
        )
    if method == "gaussian" and not sigma > 0:
        raise ConfigError(f"soft-NMS sigma must be > 0 (TEST.SOFT_NMS.SIGMA), got {sigma}")
    device = boxes.device
    boxes, scores = boxes.cpu(), scores.cpu().to(boxes.dtype)
    if _backend.use_kernels():
        keep, kept_scores = torch.ops.detectron.soft_nms(
            boxes, scores, reference.SOFT_NMS_METHODS[method], float(sigma), float(iou_threshold),
            float(score_threshold))
    else:
        keep, kept_scores = reference.soft_nms(boxes, scores, method, sigma, iou_threshold, score_threshold)
    return keep.to(device), kept_scores.to(device)


def box_iou(boxes1, boxes2):
    """IoU of every pair: (N, 4), (M, 4) -> (N, M), as torchvision.ops.box_iou."""
    if boxes1.device.type != "cpu":
        return torchvision.ops.box_iou(boxes1, boxes2)
    if not boxes1.is_floating_point():
        boxes1, boxes2 = boxes1.float(), boxes2.float()
    if not _backend.use_kernels():
        return reference.box_iou(boxes1, boxes2)
    return torch.ops.detectron.box_iou(boxes1, boxes2.to(boxes1.dtype))
