"""NMS, class-wise NMS, soft-NMS, box voting and pairwise IoU of (x1, y1, x2, y2) boxes.

nms, batched_nms and box_iou are drop-ins for torchvision.ops'. CPU tensors run the
compiled kernels (or the references when that backend is selected); CUDA tensors run
torchvision (soft-NMS, which torchvision lacks, runs on the CPU and moves back). Box voting
is plain tensor code on any device. Widths are x2 - x1 (continuous boxes); Detectron's
pixel-index boxes go through structures.boxes.BoxConvention, which hands these ops the
regions its boxes cover.
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
    """Soft-NMS of Detectron (cython_nms.soft_nms, Bodla et al. 2017).

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


BOX_VOTING_SCORING_METHODS = ("ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM")


def box_voting(top_boxes, top_scores, all_boxes, all_scores, iou_threshold, scoring_method="ID",
               beta=1.0, top_labels=None, all_labels=None, ious=None):
    """Box voting (Gidaris & Komodakis 2015) with Detectron's box_utils.box_voting scorings.

    The voters of a kept box are the boxes of ``all_boxes`` with IoU >= iou_threshold against
    it (and, when labels are given, the same label). The kept box becomes the score-weighted
    mean of its voters; its score becomes, over the voters' scores s_i (IoUs o_i, n voters):
    ID: unchanged; AVG: mean s_i; IOU_AVG: sum o_i s_i / sum o_i; GENERALIZED_AVG:
    (mean s_i^beta)^(1/beta); QUASI_SUM: sum s_i / n^beta; TEMP_AVG: mean of
    sigmoid(logit(s_i) / beta), the two-class softmax (s_i, 1 - s_i) at temperature beta.
    A box without voters (or whose voters all score 0) is returned unchanged.

    top_boxes: (N, 4), top_scores: (N,) - typically NMS survivors; all_boxes: (M, 4),
    all_scores: (M,) - the candidates before NMS; labels: (N,), (M,) int or None.
    ious: the (N, M) IoUs of top_boxes against all_boxes when not plain box_iou's (another box
    convention's). Pure tensor code (no kernel): one (N, M) IoU matrix. Returns (boxes (N, 4),
    scores (N,)).
    """
    if scoring_method not in BOX_VOTING_SCORING_METHODS:
        raise ConfigError(
            f"box-voting scoring method {scoring_method!r} is unknown "
            f"(TEST.BBOX_VOTE.SCORING_METHOD); use one of {', '.join(BOX_VOTING_SCORING_METHODS)}")
    if scoring_method in ("TEMP_AVG", "GENERALIZED_AVG") and beta == 0:
        raise ConfigError(f"box-voting scoring method {scoring_method} divides by beta "
                          "(TEST.BBOX_VOTE.SCORING_METHOD_BETA); it must not be 0")
    dtype = all_boxes.dtype
    iou = (box_iou(top_boxes, all_boxes) if ious is None else ious).to(dtype)
    voters = iou >= iou_threshold
    if top_labels is not None:
        voters = voters & (top_labels[:, None] == all_labels[None, :])
    is_voter = voters.to(dtype)
    scores = all_scores.to(dtype)
    weights = is_voter * scores[None, :]
    weight_sum = weights.sum(dim=1)
    valid = weight_sum > 0
    voted = (weights @ all_boxes) / weight_sum.clamp(min=torch.finfo(dtype).tiny)[:, None]
    boxes = torch.where(valid[:, None], voted, top_boxes.to(dtype))
    count = is_voter.sum(dim=1).clamp(min=1)
    if scoring_method == "ID":
        return boxes, top_scores
    if scoring_method == "AVG":
        new_scores = weight_sum / count
    elif scoring_method == "IOU_AVG":
        overlap = is_voter * iou
        new_scores = (overlap @ scores) / overlap.sum(dim=1).clamp(min=torch.finfo(dtype).tiny)
    elif scoring_method == "GENERALIZED_AVG":
        powered = torch.where(voters, scores.pow(beta)[None, :], torch.zeros_like(iou))
        new_scores = (powered.sum(dim=1) / count).pow(1.0 / beta)
    elif scoring_method == "QUASI_SUM":
        new_scores = weight_sum / count.pow(beta)
    else:  # TEMP_AVG
        new_scores = (is_voter @ torch.sigmoid(torch.logit(scores) / beta)) / count
    return boxes, torch.where(valid, new_scores.to(top_scores.dtype), top_scores)
