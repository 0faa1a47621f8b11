"""Final detection post-processing shared by the R-CNN box head and RetinaNet: class-wise NMS
or soft-NMS (TEST.NMS, TEST.SOFT_NMS), box voting (TEST.BBOX_VOTE) and the per-image limit
(TEST.DETECTIONS_PER_IM), as Detectron's test.box_results_with_nms_and_limit.

Usage: ``class_wise_nms(boxes, scores, classes, cfg.TEST.NMS, soft_nms_from_config(cfg),
box_voting_from_config(cfg), cfg.TEST.DETECTIONS_PER_IM)`` on score-thresholded candidates.
"""
from dataclasses import dataclass

import torch

# Detectron's test.py drops a box once soft-NMS has decayed its score below this.
SOFT_NMS_SCORE_THRESH = 0.0001


@dataclass(frozen=True)
class SoftNMS:
    """TEST.SOFT_NMS: score decay ('linear', 'gaussian' or 'hard'), the gaussian's sigma, and
    the decayed score under which a box is dropped. The IoU threshold is TEST.NMS."""

    method: str = "linear"
    sigma: float = 0.5
    score_thresh: float = SOFT_NMS_SCORE_THRESH


@dataclass(frozen=True)
class BoxVoting:
    """TEST.BBOX_VOTE: IoU of a voter with a kept box (VOTE_TH), SCORING_METHOD and its beta."""

    iou_thresh: float = 0.8
    scoring_method: str = "ID"
    beta: float = 1.0


def soft_nms_from_config(cfg):
    """SoftNMS of TEST.SOFT_NMS, or None when it is disabled."""
    s = cfg.TEST.SOFT_NMS
    return SoftNMS(s.METHOD, s.SIGMA) if s.ENABLED else None


def box_voting_from_config(cfg):
    """BoxVoting of TEST.BBOX_VOTE, or None when it is disabled."""
    v = cfg.TEST.BBOX_VOTE
    return BoxVoting(v.VOTE_TH, v.SCORING_METHOD, v.SCORING_METHOD_BETA) if v.ENABLED else None


def topk_size(values, k):
    """min(k, len(values)), the size of a top-k of ``values``: an int, or while traced for
    ONNX export a traced tensor, so that the graph takes each image's own count."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(values)[0].clamp(max=k)
    return min(k, len(values))


def class_wise_nms(boxes, scores, classes, nms_thresh, soft_nms=None, box_voting=None,
                   detections_per_image=0):
    """NMS (or soft-NMS) within each class, then box voting, then the top detections.

    boxes: Boxes (N, 4), scores: (N,), classes: (N,) int - the candidates above the score
    threshold; NMS, soft-NMS and box voting use the IoU of the boxes' convention (Detectron's
    +1 widths and areas for its pixel indices). soft_nms: SoftNMS or None (plain NMS at IoU
    ``nms_thresh``). box_voting: BoxVoting or None; the kept boxes vote with all candidates of
    their class. detections_per_image: keep the best that many over all classes (<= 0: keep
    all).
    Returns (boxes, scores, classes) of the kept detections, in decreasing score order.
    """
    if soft_nms is None:
        keep = boxes.batched_nms(scores, classes, nms_thresh)
        kept_scores = scores[keep]
    else:
        # One soft-NMS per class: the kernel is quadratic in its input, classes are few.
        parts = []
        for label in torch.unique(classes):
            members = torch.nonzero(classes == label).flatten()
            keep, decayed = boxes[members].soft_nms(
                scores[members], method=soft_nms.method, sigma=soft_nms.sigma,
                iou_threshold=nms_thresh, score_threshold=soft_nms.score_thresh)
            parts.append((members[keep], decayed.to(scores.dtype)))
        keep = torch.cat([p[0] for p in parts]) if parts else classes.new_zeros(0)
        kept_scores = torch.cat([p[1] for p in parts]) if parts else scores[:0]
    kept_boxes, kept_classes = boxes[keep], classes[keep]
    if box_voting is not None:
        kept_boxes, kept_scores = kept_boxes.box_voting(
            kept_scores, boxes, scores, box_voting.iou_thresh,
            scoring_method=box_voting.scoring_method, beta=box_voting.beta,
            top_labels=kept_classes, all_labels=classes)
    if torch.jit.is_tracing():  # the ONNX exporter has no stable sort; ONNX's TopK is stable
        order = kept_scores.topk(kept_scores.shape[0]).indices
    else:
        order = torch.sort(kept_scores, descending=True, stable=True).indices
    if detections_per_image > 0:
        order = order[:detections_per_image]
    return kept_boxes[order], kept_scores[order], kept_classes[order]
