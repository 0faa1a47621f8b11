"""Final detection post-processing: soft-NMS and box voting (TEST.SOFT_NMS, TEST.BBOX_VOTE) in
ops.box_voting, modeling.postprocess.class_wise_nms and the R-CNN box_results_with_nms_and_limit.

References: hand-computed cases (Detectron's formulas: linear decay 1 - IoU above Nt, gaussian
exp(-IoU^2 / sigma), box_utils.box_voting's scorings) and a per-box NumPy loop written from
those formulas."""
import math

import numpy as np
import pytest
import torch

from detectron_lib import ops
from detectron_lib.config import load_config
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.postprocess import (
    BoxVoting,
    SoftNMS,
    box_voting_from_config,
    class_wise_nms,
    soft_nms_from_config,
)
from detectron_lib.modeling.roi_heads.fast_rcnn import box_results_with_nms_and_limit
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, Boxes

# Two boxes overlapping with IoU 50 / 150 = 1/3 (same height, shifted by half the width).
A = [0.0, 0.0, 10.0, 10.0]
B_THIRD = [5.0, 0.0, 15.0, 10.0]
FAR = [40.0, 40.0, 50.0, 50.0]


# ---- soft-NMS ------------------------------------------------------------------------------


@pytest.mark.parametrize("nt,expected", [(0.5, 0.6), (0.3, 0.6 * (1 - 1 / 3))])
def test_linear_soft_nms_decays_only_above_the_threshold(nt, expected):
    """Linear: weight 1 - IoU when IoU > Nt, else 1 (IoU here 1/3)."""
    boxes = torch.tensor([A, B_THIRD], dtype=torch.float64)
    keep, scores = ops.soft_nms(boxes, torch.tensor([0.9, 0.6], dtype=torch.float64), "linear",
                                0.5, nt, 0.0001)
    assert keep.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([0.9, expected])


@pytest.mark.parametrize("sigma", [0.5, 0.1])
def test_gaussian_soft_nms_ignores_the_threshold(sigma):
    """Gaussian: weight exp(-IoU^2 / sigma) whatever Nt is."""
    boxes = torch.tensor([A, B_THIRD], dtype=torch.float64)
    for nt in (0.3, 0.9):
        _, scores = ops.soft_nms(boxes, torch.tensor([0.9, 0.6], dtype=torch.float64), "gaussian",
                                 sigma, nt, 0.0001)
        assert scores.tolist() == pytest.approx([0.9, 0.6 * math.exp(-(1 / 9) / sigma)])


def test_soft_nms_drops_boxes_decayed_below_the_score_threshold():
    # Identical boxes: linear weight 1 - 1 = 0 drops the second; a far box is untouched.
    boxes = torch.tensor([A, A, FAR])
    keep, scores = ops.soft_nms(boxes, torch.tensor([0.9, 0.8, 0.1]), "linear", 0.5, 0.3, 0.0001)
    assert keep.tolist() == [0, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.1])


def test_soft_nms_kernel_matches_reference_at_detectron_settings():
    """Compiled kernel vs ops.reference on random clustered boxes at TEST.NMS 0.3 / 0.5 and
    Detectron's final score threshold 0.0001."""
    if ops.KERNELS_ERROR is not None:
        pytest.skip("compiled kernels not built")
    g = torch.Generator().manual_seed(7)
    centers = torch.rand(8, 2, generator=g) * 200
    xy = centers[torch.randint(0, 8, (300,), generator=g)] + torch.randn(300, 2, generator=g) * 8
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 5], dim=1)
    scores = torch.rand(300, generator=g)
    for method, nt in (("linear", 0.3), ("gaussian", 0.5)):
        keep, kept = ops.soft_nms(boxes, scores, method, 0.5, nt, 0.0001)
        ref_keep, ref_kept = ops.reference.soft_nms(boxes, scores, method, 0.5, nt, 0.0001)
        assert torch.equal(keep, ref_keep)
        torch.testing.assert_close(kept, ref_kept)


def test_class_wise_soft_nms_decays_within_a_class_only():
    boxes = torch.tensor([A, B_THIRD, B_THIRD, FAR])
    scores = torch.tensor([0.9, 0.6, 0.5, 0.4])
    classes = torch.tensor([0, 0, 1, 0])
    out_boxes, out_scores, out_classes = class_wise_nms(
        Boxes(boxes), scores, classes, 0.3, SoftNMS("linear", 0.5))
    # Box 1 (class 0) decays by 1 - 1/3 under box 0; box 2 (class 1) keeps its score.
    assert out_scores.tolist() == pytest.approx([0.9, 0.5, 0.4, 0.4])
    assert out_classes.tolist() == [0, 1, 0, 0]
    assert torch.equal(out_boxes.tensor[1], boxes[2])
    # The limit keeps the best over all classes.
    _, limited, _ = class_wise_nms(Boxes(boxes), scores, classes, 0.3, SoftNMS("linear", 0.5),
                                   None, 2)
    assert limited.tolist() == pytest.approx([0.9, 0.5])


def test_class_wise_nms_without_candidates():
    boxes, scores, classes = class_wise_nms(Boxes(torch.zeros(0, 4)), torch.zeros(0),
                                            torch.zeros(0, dtype=torch.long), 0.5, SoftNMS())
    assert boxes.tensor.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)


# ---- box voting ----------------------------------------------------------------------------

# Kept box TOP (0.8) votes with TALL (0.4, IoU 100/120 = 5/6); OTHER is far away.
TOP = [0.0, 0.0, 10.0, 10.0]
TALL = [0.0, 0.0, 10.0, 12.0]
VOTE_BOXES = torch.tensor([TOP, TALL, FAR], dtype=torch.float64)
VOTE_SCORES = torch.tensor([0.8, 0.4, 0.5], dtype=torch.float64)


def _two_class_softmax_at_temperature(p, beta):
    """Detectron's TEMP_AVG step, written out: softmax of log(P / max P) / beta over (p, 1 - p)."""
    pair = np.array([p, 1 - p])
    x = np.exp(np.log(pair / pair.max()) / beta)
    return x[0] / x.sum()


@pytest.mark.parametrize("method,beta,expected", [
    ("ID", 1.0, 0.8),
    ("AVG", 1.0, 0.6),
    ("IOU_AVG", 1.0, (1 * 0.8 + 5 / 6 * 0.4) / (1 + 5 / 6)),
    ("GENERALIZED_AVG", 2.0, math.sqrt((0.8**2 + 0.4**2) / 2)),
    ("QUASI_SUM", 0.5, (0.8 + 0.4) / math.sqrt(2)),
    ("TEMP_AVG", 1.0, 0.6),
    ("TEMP_AVG", 2.0, (_two_class_softmax_at_temperature(0.8, 2.0)
                       + _two_class_softmax_at_temperature(0.4, 2.0)) / 2),
])
def test_box_voting_hand_computed(method, beta, expected):
    boxes, scores = ops.box_voting(VOTE_BOXES[:1], VOTE_SCORES[:1], VOTE_BOXES, VOTE_SCORES, 0.8,
                                   method, beta)
    # Score-weighted mean of TOP and TALL: y2 = (0.8 * 10 + 0.4 * 12) / 1.2.
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 10.0, 12.8 / 1.2]], dtype=torch.float64))
    assert scores.item() == pytest.approx(expected)


def test_box_voting_threshold_and_labels():
    # Above the IoU 5/6 of TALL nothing but the box itself votes.
    boxes, scores = ops.box_voting(VOTE_BOXES[:1], VOTE_SCORES[:1], VOTE_BOXES, VOTE_SCORES, 0.9, "AVG")
    assert boxes.tolist() == [TOP] and scores.tolist() == pytest.approx([0.8])
    # TALL of another class does not vote.
    labels = torch.tensor([1, 2, 1])
    boxes, _ = ops.box_voting(VOTE_BOXES[:1], VOTE_SCORES[:1], VOTE_BOXES, VOTE_SCORES, 0.8, "ID",
                              top_labels=labels[:1], all_labels=labels)
    assert boxes.tolist() == [TOP]
    # A kept box without voters stays as it is.
    boxes, scores = ops.box_voting(VOTE_BOXES[:1], VOTE_SCORES[:1], VOTE_BOXES[2:], VOTE_SCORES[2:],
                                   0.5, "AVG")
    assert boxes.tolist() == [TOP] and scores.tolist() == pytest.approx([0.8])


def _loop_box_voting(top_boxes, top_scores, all_boxes, all_scores, thresh, method, beta):
    """Per-box NumPy box voting from the formulas (np.average as the weighted mean)."""
    top_boxes, all_boxes, all_scores = top_boxes.numpy(), all_boxes.numpy(), all_scores.numpy()
    out_boxes, out_scores = top_boxes.copy(), top_scores.numpy().copy()
    for k, box in enumerate(top_boxes):
        ix1, iy1 = np.maximum(box[0], all_boxes[:, 0]), np.maximum(box[1], all_boxes[:, 1])
        ix2, iy2 = np.minimum(box[2], all_boxes[:, 2]), np.minimum(box[3], all_boxes[:, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        iou = inter / (area(box) + area(all_boxes) - inter)
        vote = iou >= thresh
        s, o = all_scores[vote], iou[vote]
        out_boxes[k] = np.average(all_boxes[vote], axis=0, weights=s)
        out_scores[k] = {
            "ID": out_scores[k],
            "AVG": s.mean(),
            "IOU_AVG": np.average(s, weights=o),
            "GENERALIZED_AVG": np.mean(s**beta) ** (1 / beta),
            "QUASI_SUM": s.sum() / len(s) ** beta,
            "TEMP_AVG": np.mean([_two_class_softmax_at_temperature(p, beta) for p in s]),
        }[method]
    return out_boxes, out_scores


@pytest.mark.parametrize("method", ["ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM"])
def test_box_voting_matches_per_box_loop(method):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(6, 2, generator=g)[torch.randint(0, 6, (200,), generator=g)] * 300
    xy = xy + torch.randn(200, 2, generator=g) * 4
    boxes = torch.cat([xy, xy + 20 + torch.rand(200, 2, generator=g) * 10], dim=1).double()
    scores = torch.rand(200, generator=g).double() * 0.9 + 0.05
    keep = ops.nms(boxes, scores, 0.3)
    voted, voted_scores = ops.box_voting(boxes[keep], scores[keep], boxes, scores, 0.6, method, 1.7)
    ref_boxes, ref_scores = _loop_box_voting(boxes[keep], scores[keep], boxes, scores, 0.6, method, 1.7)
    np.testing.assert_allclose(voted.numpy(), ref_boxes, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(voted_scores.numpy(), ref_scores, rtol=1e-9, atol=1e-9)


def test_box_voting_rejects_unknown_method():
    with pytest.raises(ConfigError, match="TEST.BBOX_VOTE.SCORING_METHOD"):
        ops.box_voting(VOTE_BOXES, VOTE_SCORES, VOTE_BOXES, VOTE_SCORES, 0.8, "MEDIAN")


# ---- R-CNN post-processing and config ------------------------------------------------------


def test_rcnn_post_processing_with_soft_nms_and_box_voting():
    # 3 RoIs, one fg class: RoI 1 overlaps RoI 0 with IoU 1/3, RoI 2 is TALL-like over RoI 0.
    rois = torch.tensor([A, B_THIRD, TALL])
    boxes = Boxes(rois.repeat(1, 2))
    scores = torch.tensor([[0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])
    dets = box_results_with_nms_and_limit(scores, boxes, (50, 50), 0.05, 0.3, 100,
                                          soft_nms=SoftNMS("linear", 0.5))
    # RoI 2 (IoU 5/6 with RoI 0) decays to 0.4/6; RoI 1 to 0.6 * 2/3 (its IoU with RoI 2 is
    # 50/170 < 0.3 after RoI 0 is selected, so it decays once).
    assert dets.scores.tolist() == pytest.approx([0.9, 0.4, 0.4 / 6])
    assert dets.classes.tolist() == [1, 1, 1]
    voted = box_results_with_nms_and_limit(scores, boxes, (50, 50), 0.05, 0.5, 100,
                                           box_voting=BoxVoting(0.8, "AVG"))
    # Plain NMS at 0.5 keeps RoI 0 and RoI 1; RoI 0 votes with RoI 2 (IoU 5/6 >= 0.8).
    assert voted.scores.tolist() == pytest.approx([(0.9 + 0.4) / 2, 0.6])
    torch.testing.assert_close(voted.boxes.tensor[0], torch.tensor([0.0, 0.0, 10.0, (9 + 4.8) / 1.3]))


def _legacy_iou(a, b):
    """Detectron's bbox_overlaps / cython NMS IoU, written out: inclusive pixel extents."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih)


def test_legacy_box_iou_is_detectron_iou():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 40, (30, 2, 2)).round()
    boxes = torch.tensor(np.concatenate([corners.min(1), corners.max(1)], axis=1))
    ours = PIXEL_INDICES.iou(boxes, boxes)
    expected = [[_legacy_iou(a, b) for b in boxes.tolist()] for a in boxes.tolist()]
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=ours.dtype))
    assert CONTINUOUS.regions(boxes) is boxes
    torch.testing.assert_close(CONTINUOUS.iou(boxes, boxes), ops.box_iou(boxes, boxes), equal_nan=True)


def test_legacy_nms_soft_nms_and_voting_use_plus_one_iou():
    # Pixel boxes 0..9 and 5..14: legacy IoU 50 / 150 = 1/3, plain IoU 36 / 126 = 2/7.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    scores = torch.tensor([0.9, 0.6])
    classes = torch.tensor([0, 0])
    assert len(class_wise_nms(Boxes(boxes), scores, classes, 0.3)[0]) == 2
    pixels = Boxes(boxes, PIXEL_INDICES)
    kept, _, _ = class_wise_nms(pixels, scores, classes, 0.3)
    assert kept.tensor.tolist() == [[0.0, 0.0, 9.0, 9.0]]
    kept, decayed, _ = class_wise_nms(pixels, scores, classes, 0.3, SoftNMS("linear", 0.5))
    assert decayed.tolist() == pytest.approx([0.9, 0.6 * (1 - 1 / 3)])
    # The boxes come back in their own coordinates and convention.
    assert torch.equal(kept.tensor, boxes) and kept.convention is PIXEL_INDICES
    # Voting at VOTE_TH 0.825: pixel boxes 0..9 and 0..11 have legacy IoU 100/120 (a voter)
    # and plain IoU 81/99 (not one); the vote averages y2 to (0.9 * 9 + 0.6 * 11) / 1.5.
    tall = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 11.0]])
    voting = BoxVoting(0.825, "ID")
    voted, _, _ = class_wise_nms(Boxes(tall, PIXEL_INDICES), scores, classes, 0.5, None, voting)
    torch.testing.assert_close(voted.tensor, torch.tensor([[0.0, 0.0, 9.0, (8.1 + 6.6) / 1.5]]))
    plain, _, _ = class_wise_nms(Boxes(tall), scores, classes, 0.5, None, voting)
    assert plain.tensor.tolist() == [[0.0, 0.0, 9.0, 9.0]]


def test_config_turns_soft_nms_and_box_voting_on(reference_dir):
    name = reference_dir / "detectron_configs" / "12_2017_baselines" / "e2e_faster_rcnn_R-50-FPN_1x.yaml"
    cfg = load_config(name, ["MODEL.NUM_CLASSES", "3", "TEST.SOFT_NMS.ENABLED", "True",
                             "TEST.SOFT_NMS.METHOD", "gaussian", "TEST.SOFT_NMS.SIGMA", "0.7",
                             "TEST.BBOX_VOTE.ENABLED", "True", "TEST.BBOX_VOTE.SCORING_METHOD",
                             "QUASI_SUM", "TEST.BBOX_VOTE.SCORING_METHOD_BETA", "0.5"])
    assert soft_nms_from_config(cfg) == SoftNMS("gaussian", 0.7, 0.0001)
    assert box_voting_from_config(cfg) == BoxVoting(0.8, "QUASI_SUM", 0.5)
    heads = build_model(cfg).roi_heads
    assert heads.soft_nms == SoftNMS("gaussian", 0.7) and heads.box_voting.scoring_method == "QUASI_SUM"
    assert soft_nms_from_config(load_config(name, ["MODEL.NUM_CLASSES", "3"])) is None
