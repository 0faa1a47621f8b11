"""COCO evaluation against hand-computed answers.

Every expected number below is worked out by hand from the COCO protocol as pycocotools
implements it (the reference): 10 IoU thresholds .50:.05:.95 (a match needs IoU >= t), 101
recall points 0:.01:1, precision made non-increasing from the right, AP = mean of the
precision read at the 101 recall points, averaged over thresholds and categories.
The ground-truth json files are written by the tests themselves.
"""
import json
import logging
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.evaluation import (
    boxes_to_coco_xywh,
    detections_to_coco_results,
    encode_masks_rle,
    evaluate_coco,
    evaluate_proposals,
    keypoints_to_coco_results,
    masks_to_coco_results,
)
from detectron_lib.structures.boxes import PIXEL_INDICES

DETECTION_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs", "ARm", "ARl")


def write_gt(path, annotations, categories, num_images=3, size=200):
    """Write a COCO ground-truth json; annotations get ids, iscrowd=0 and area=w*h by default."""
    for index, annotation in enumerate(annotations, start=1):
        annotation.setdefault("id", index)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    images = [{"id": i, "width": size, "height": size, "file_name": f"{i}.jpg"} for i in range(1, num_images + 1)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def xywh_to_xyxy(box):
    x, y, w, h = box
    return [x, y, x + w, y + h]


# Three json categories with non-contiguous ids; the model's contiguous ids are 1, 2, 3.
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
CONTIGUOUS_TO_JSON = {1: 1, 2: 3, 3: 7}
# (image id, contiguous class, xywh box): cat medium (1600 px), dog small (400), cat medium,
# bird large (12000).
OBJECTS = [
    (1, 1, [10, 10, 40, 40]),
    (1, 2, [100, 100, 20, 20]),
    (2, 1, [50, 60, 40, 40]),
    (3, 3, [20, 20, 120, 100]),
]


@pytest.fixture
def three_class_gt(tmp_path):
    annotations = [
        {"image_id": image, "category_id": CONTIGUOUS_TO_JSON[cls], "bbox": box} for image, cls, box in OBJECTS
    ]
    return write_gt(tmp_path / "gt.json", annotations, CATEGORIES)


def perfect_results(scores=(0.9, 0.8, 0.7, 0.6)):
    results = []
    for (image, cls, box), score in zip(OBJECTS, scores):
        results += detections_to_coco_results(image, [xywh_to_xyxy(box)], [score], [cls], CONTIGUOUS_TO_JSON)
    return results


# --------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------


def test_boxes_to_xywh_with_and_without_detectron_plus_one():
    # Hand-computed: x2 - x1 = 30 - 10 = 20, y2 - y1 = 60 - 20 = 40; +1 gives 21 x 41.
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    assert boxes_to_coco_xywh(boxes).tolist() == [[10, 20, 20, 40]]
    assert boxes_to_coco_xywh(PIXEL_INDICES.regions(boxes)).tolist() == [[10, 20, 21, 41]]
    assert boxes_to_coco_xywh(torch.tensor(boxes)).tolist() == [[10, 20, 20, 40]]


def test_detection_results_map_contiguous_classes_to_json_ids():
    results = detections_to_coco_results(
        5, torch.tensor([[0.0, 0, 10, 10], [1, 2, 3, 4]]), torch.tensor([0.5, 0.25]), torch.tensor([2, 3]),
        CONTIGUOUS_TO_JSON,
    )
    assert [r["category_id"] for r in results] == [3, 7]
    assert results[1] == {"image_id": 5, "category_id": 7, "bbox": [1, 2, 2, 2], "score": 0.25}
    json.dumps(results)  # plain Python numbers only


def test_unknown_contiguous_class_is_a_config_error():
    with pytest.raises(ConfigError, match="class id 9"):
        detections_to_coco_results(1, [[0, 0, 1, 1]], [0.5], [9], CONTIGUOUS_TO_JSON)


def test_mask_results_are_json_ready_rle_that_decode_to_the_mask():
    masks = np.zeros((2, 30, 20), dtype=bool)
    masks[0, 5:10, 2:8] = True
    masks[1, 0:30, 19] = True
    results = masks_to_coco_results(4, torch.from_numpy(masks), [0.9, 0.1], [1, 2], CONTIGUOUS_TO_JSON)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    json.dumps(results)
    # Reference: pycocotools' own decoder gives the masks back.
    for result, mask in zip(results, masks):
        assert result["segmentation"]["size"] == [30, 20]
        assert np.array_equal(mask_utils.decode(result["segmentation"]).astype(bool), mask)
    # Already-encoded RLEs (bytes counts) are accepted too.
    raw = mask_utils.encode(np.asfortranarray(masks[:1].transpose(1, 2, 0).astype(np.uint8)))
    from_rle = masks_to_coco_results(4, raw, [0.9], [1], CONTIGUOUS_TO_JSON)
    assert from_rle[0]["segmentation"] == results[0]["segmentation"]


def test_non_binary_masks_are_rejected():
    with pytest.raises(ValueError, match="binary"):
        encode_masks_rle(np.full((1, 4, 4), 0.7))


def test_keypoint_results_follow_detectron_score_convention():
    # (x, y, per-keypoint score) for 1 instance with 3 keypoints.
    keypoints = np.array([[[1.0, 2.0, 1.0], [3.0, 4.0, 2.0], [5.0, 6.0, 6.0]]])
    by_box = keypoints_to_coco_results(8, keypoints, [0.75], [1], CONTIGUOUS_TO_JSON, keypoint_confidence="bbox")
    # Visibility is written as 1 for every keypoint; the score is the box score.
    assert by_box == [{"image_id": 8, "category_id": 1, "keypoints": [1, 2, 1, 3, 4, 1, 5, 6, 1], "score": 0.75}]
    by_logit = keypoints_to_coco_results(
        8, keypoints, [0.75], [1], CONTIGUOUS_TO_JSON, keypoint_confidence="logit"
    )
    assert by_logit[0]["score"] == pytest.approx((1.0 + 2.0 + 6.0) / 3)  # mean keypoint score = 3
    with pytest.raises(ConfigError, match="KEYPOINT_CONFIDENCE"):
        keypoints_to_coco_results(8, keypoints, [0.75], [1], CONTIGUOUS_TO_JSON, keypoint_confidence="heatmap")


@pytest.mark.parametrize("confidence", ["bbox", "logit"])
def test_an_image_without_keypoint_detections_gives_no_results(confidence):
    # A keypoint model may detect nothing in an image: (0, K, 3) keypoints, no scores.
    assert keypoints_to_coco_results(8, np.zeros((0, 3, 3)), [], [], CONTIGUOUS_TO_JSON,
                                     keypoint_confidence=confidence) == []


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def test_perfect_boxes_score_one_everywhere(three_class_gt):
    metrics = evaluate_coco(three_class_gt, {"bbox": perfect_results()})
    # Every object is found exactly (IoU 1) by a detection and nothing else is detected:
    # precision 1 at every recall point, recall 1 at every threshold, in every area range
    # (each of small / medium / large holds at least one object).
    for key in DETECTION_KEYS:
        assert metrics[f"bbox/{key}"] == pytest.approx(1.0), key
    for name in ("cat", "dog", "bird"):
        assert metrics[f"bbox/AP-{name}"] == pytest.approx(1.0)
    assert set(metrics) == {f"bbox/{k}" for k in DETECTION_KEYS} | {"bbox/AP-cat", "bbox/AP-dog", "bbox/AP-bird"}


def test_box_at_iou_0_6_counts_from_0_5_to_0_6_only(tmp_path):
    # One object, xywh [10, 10, 40, 40] (medium, area 1600). The detection is shifted 10 px
    # right: x1y1x2y2 [20, 10, 60, 50]. Intersection 30 x 40 = 1200, union 1600 + 1600 - 1200
    # = 2000, IoU = 1200 / 2000 = 0.6 (exact in binary floating point, as is the threshold .60).
    gt = write_gt(tmp_path / "gt.json", [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}],
                  [{"id": 1, "name": "cat"}], num_images=1)
    results = detections_to_coco_results(1, [[20, 10, 60, 50]], [0.9], [1], {1: 1})
    metrics = evaluate_coco(gt, {"bbox": results})
    # Thresholds .50, .55, .60 (IoU >= t): a true positive, precision 1 at all 101 recall
    # points -> AP_t = 1. Thresholds .65 ... .95: a false positive, recall 0 -> AP_t = 0.
    # AP = (1 + 1 + 1 + 0 * 7) / 10 = 0.3; AP50 = 1; AP75 = 0.
    assert metrics["bbox/AP"] == pytest.approx(0.3)
    assert metrics["bbox/AP50"] == pytest.approx(1.0)
    assert metrics["bbox/AP75"] == pytest.approx(0.0)
    assert metrics["bbox/APm"] == pytest.approx(0.3)
    assert metrics["bbox/AP-cat"] == pytest.approx(0.3)
    # Recall per threshold is 1, 1, 1, 0 x 7 -> AR = 3 / 10 at every maxDets.
    for key in ("AR@1", "AR@10", "AR@100", "ARm"):
        assert metrics[f"bbox/{key}"] == pytest.approx(0.3)
    # No small or large object: pycocotools' -1 comes back as NaN (the key is kept).
    for key in ("APs", "APl", "ARs", "ARl"):
        assert math.isnan(metrics[f"bbox/{key}"])


def test_higher_scored_false_positive_lowers_ap_by_hand_computed_amount(three_class_gt):
    results = perfect_results(scores=(0.9, 0.8, 0.7, 0.6))
    # A 'cat' detection on image 3 (no cat there), scored 0.8: between the two true cats
    # (0.9 on image 1, 0.7 on image 2).
    results += detections_to_coco_results(3, [[150, 150, 190, 190]], [0.8], [1], CONTIGUOUS_TO_JSON)
    metrics = evaluate_coco(three_class_gt, {"bbox": results})
    # 'cat', in score order: TP, FP, TP; 2 cat objects.
    #   cumulative TP 1, 1, 2; FP 0, 1, 1 -> recall .5, .5, 1; precision 1, 1/2, 2/3.
    #   Made non-increasing from the right: 1, 2/3, 2/3.
    #   Recall points 0, .01, ..., .50 (51 points): first detection with recall >= r is #1 -> 1.
    #   Recall points .51, ..., 1.00 (50 points): first is #3 -> 2/3.
    #   AP = (51 * 1 + 50 * 2/3) / 101 = (153 + 100) / 303 = 253 / 303 = 0.834983...
    # Boxes are exact, so this holds at all 10 IoU thresholds.
    cat_ap = 253 / 303
    assert metrics["bbox/AP-cat"] == pytest.approx(cat_ap)
    # Without the false positive the cat AP is 1: it drops by 50 / 303 = 0.165016...
    assert 1.0 - metrics["bbox/AP-cat"] == pytest.approx(50 / 303)
    assert metrics["bbox/AP-dog"] == pytest.approx(1.0)
    assert metrics["bbox/AP-bird"] == pytest.approx(1.0)
    # AP is the mean over the 3 categories: (253/303 + 1 + 1) / 3.
    assert metrics["bbox/AP"] == pytest.approx((cat_ap + 2) / 3)
    assert metrics["bbox/AP50"] == pytest.approx((cat_ap + 2) / 3)
    # Medium (the cats' range; the 40 x 40 false positive is medium too): only 'cat' has a
    # medium object, so APm = 253/303. Recall is unchanged by a false positive: AR@100 = 1.
    assert metrics["bbox/APm"] == pytest.approx(cat_ap)
    assert metrics["bbox/AR@100"] == pytest.approx(1.0)


def test_empty_results_score_zero_without_crashing(three_class_gt):
    metrics = evaluate_coco(three_class_gt, {"bbox": []})
    # Objects exist but nothing was detected: precision 0, recall 0 (not -1).
    assert metrics["bbox/AP"] == 0.0
    assert metrics["bbox/AR@100"] == 0.0
    assert metrics["bbox/AP-dog"] == 0.0


def test_segm_on_a_box_only_dataset_is_a_dataset_error(three_class_gt):
    with pytest.raises(DatasetError, match="lacks \\['segmentation'\\]"):
        evaluate_coco(three_class_gt, {"segm": []})


def test_summary_is_logged_not_printed(three_class_gt, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="detectron_lib.evaluation.coco"):
        evaluate_coco(str(three_class_gt), {"bbox": perfect_results()})
    assert capsys.readouterr().out == ""
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in caplog.text


def test_results_for_unknown_images_or_categories_are_dataset_errors(three_class_gt):
    with pytest.raises(DatasetError, match="image_id 99"):
        evaluate_coco(three_class_gt, {"bbox": [
            {"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}
        ]})
    with pytest.raises(DatasetError, match="category_id 2"):
        evaluate_coco(three_class_gt, {"bbox": [
            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1}
        ]})
    with pytest.raises(ConfigError, match="boxes"):
        evaluate_coco(three_class_gt, {"boxes": []})


def test_missing_ground_truth_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        evaluate_coco(tmp_path / "missing.json", {"bbox": []})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        evaluate_coco(tmp_path / "bad.json", {"bbox": []})


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def test_segm_perfect_masks_and_half_mask(tmp_path):
    # Two 100 x 100 images, one 'blob' each: rows 20:60, cols 10:50 (40 x 40 = 1600 px).
    gt_mask = np.zeros((100, 100), dtype=np.uint8)
    gt_mask[20:60, 10:50] = 1
    rle = mask_utils.encode(np.asfortranarray(gt_mask))  # reference encoder for the GT file
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = [
        {"image_id": image, "category_id": 1, "bbox": [10, 20, 40, 40], "area": 1600, "segmentation": rle}
        for image in (1, 2)
    ]
    gt = write_gt(tmp_path / "gt.json", annotations, [{"id": 1, "name": "blob"}], num_images=2, size=100)
    box = [[10, 20, 50, 60]]

    perfect = []
    for image in (1, 2):
        perfect += masks_to_coco_results(image, gt_mask[None].astype(bool), [0.9], [1], {1: 1})
    metrics = evaluate_coco(gt, {"segm": perfect, "bbox": detections_to_coco_results(1, box, [0.9], [1], {1: 1})})
    # Masks identical to the ground truth: IoU 1 -> AP 1 at every threshold.
    assert metrics["segm/AP"] == pytest.approx(1.0)
    assert metrics["segm/AP50"] == pytest.approx(1.0)
    assert metrics["segm/AP75"] == pytest.approx(1.0)
    # The one box on image 1 finds 1 of 2 objects: recall .5, precision 1 -> the recall points
    # 0 ... .50 (51 of 101) read precision 1, the rest 0: AP = 51 / 101.
    assert metrics["bbox/AP"] == pytest.approx(51 / 101)

    # Left half of the object on both images: cols 10:30, 40 x 20 = 800 px, all inside the
    # object: IoU = 800 / 1600 = 0.5 -> true positive at threshold .50 only.
    half_mask = np.zeros((1, 100, 100), dtype=bool)
    half_mask[0, 20:60, 10:30] = True
    half = []
    for image in (1, 2):
        half += masks_to_coco_results(image, half_mask, [0.9], [1], {1: 1})
    metrics = evaluate_coco(gt, {"segm": half})
    # AP_.50 = 1 (both found, precision 1); the other 9 thresholds 0 -> AP = 1 / 10.
    assert metrics["segm/AP50"] == pytest.approx(1.0)
    assert metrics["segm/AP75"] == pytest.approx(0.0)
    assert metrics["segm/AP"] == pytest.approx(0.1)
    assert metrics["segm/AR@100"] == pytest.approx(0.1)
    # No masks at all: AP 0, not a crash.
    assert evaluate_coco(gt, {"segm": []})["segm/AP"] == 0.0


# --------------------------------------------------------------------------------------------
# Keypoints
# --------------------------------------------------------------------------------------------

KEYPOINT_NAMES = ["head", "left_hand", "right_hand", "left_foot", "right_foot"]
# A 5-keypoint dataset with its own OKS sigmas (COCO's defaults cover 17 keypoints only).
SIGMAS = [0.025, 0.05, 0.075, 0.1, 0.125]
GT_KEYPOINTS = np.array([[100, 60], [70, 100], [130, 100], [85, 145], [115, 145]], dtype=float)
AREA = 10000.0  # object area s^2 in OKS; > 96^2, so 'large'


@pytest.fixture
def keypoint_gt(tmp_path):
    flat = np.concatenate([GT_KEYPOINTS, np.full((5, 1), 2.0)], axis=1).reshape(-1).tolist()
    annotation = {"image_id": 1, "category_id": 1, "bbox": [50, 50, 100, 100], "area": AREA,
                  "keypoints": flat, "num_keypoints": 5}
    categories = [{"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]}]
    return write_gt(tmp_path / "kp_gt.json", [annotation], categories, num_images=1)


def keypoint_results(points):
    keypoints = np.concatenate([points, np.ones((5, 1))], axis=1)[None]
    return keypoints_to_coco_results(1, keypoints, [0.9], [1], {1: 1})


def test_exact_keypoints_score_one(keypoint_gt):
    metrics = evaluate_coco(keypoint_gt, {"keypoints": keypoint_results(GT_KEYPOINTS)}, kpt_oks_sigmas=SIGMAS)
    # Every keypoint exactly on its ground truth: OKS = mean(exp(0)) = 1 -> AP 1 everywhere.
    for key in ("AP", "AP50", "AP75", "APl", "AR", "AR50", "AR75", "ARl", "AP-person"):
        assert metrics[f"keypoints/{key}"] == pytest.approx(1.0), key
    # The one object is large: the medium range has no ground truth -> NaN.
    assert math.isnan(metrics["keypoints/APm"]) and math.isnan(metrics["keypoints/ARm"])


def test_displaced_keypoints_give_hand_computed_ap_with_custom_sigmas(keypoint_gt):
    # OKS = mean_k exp(-d_k^2 / (2 s^2 (2 sigma_k)^2)) over visible keypoints (s^2 = area).
    # Keypoints 1-3 exact (term 1). Keypoints 4 and 5 are moved along x by
    #   d_k = 2 sigma_k sqrt(2 s^2 ln(1 / 0.3)), so each term is exp(-ln(1/0.3)) = 0.3:
    #   sigma 0.1  -> d = 0.2  * sqrt(20000 * 1.2039728) = 0.2  * 155.17 = 31.03 px
    #   sigma 0.125 -> d = 0.25 * 155.17 = 38.79 px
    # OKS = (1 + 1 + 1 + 0.3 + 0.3) / 5 = 0.72.
    points = GT_KEYPOINTS.copy()
    for k in (3, 4):
        points[k, 0] += 2 * SIGMAS[k] * math.sqrt(2 * AREA * math.log(1 / 0.3))
    metrics = evaluate_coco(keypoint_gt, {"keypoints": keypoint_results(points)}, kpt_oks_sigmas=SIGMAS)
    # 0.72 passes the thresholds .50, .55, .60, .65, .70 (5 of 10), fails .75 ... .95:
    # AP = 5 / 10 = 0.5, AP50 = 1, AP75 = 0; recall likewise.
    assert metrics["keypoints/AP"] == pytest.approx(0.5)
    assert metrics["keypoints/AP50"] == pytest.approx(1.0)
    assert metrics["keypoints/AP75"] == pytest.approx(0.0)
    assert metrics["keypoints/AR"] == pytest.approx(0.5)
    # With one sigma for all keypoints (0.125) the same displacements give a different OKS:
    # keypoint 4's term becomes exp(-1.204 * (0.1/0.125)^2) = exp(-0.7705) = 0.4628, so
    # OKS = (3 + 0.4628 + 0.3) / 5 = 0.7526 -> thresholds .50 ... .75 pass: AP = 6 / 10.
    metrics = evaluate_coco(keypoint_gt, {"keypoints": keypoint_results(points)}, kpt_oks_sigmas=[0.125] * 5)
    assert metrics["keypoints/AP"] == pytest.approx(0.6)


def test_no_keypoint_results_score_zero(keypoint_gt):
    metrics = evaluate_coco(keypoint_gt, {"keypoints": []}, kpt_oks_sigmas=SIGMAS)
    assert metrics["keypoints/AP"] == 0.0 and metrics["keypoints/AR"] == 0.0


def test_keypoint_sigmas_must_fit_the_dataset(keypoint_gt):
    results = {"keypoints": keypoint_results(GT_KEYPOINTS)}
    with pytest.raises(ConfigError, match="5 keypoints"):
        evaluate_coco(keypoint_gt, results)  # COCO's 17 default sigmas do not fit
    with pytest.raises(ConfigError, match="has 3 values"):
        evaluate_coco(keypoint_gt, results, kpt_oks_sigmas=[0.1, 0.1, 0.1])
    four_keypoints = keypoint_results(GT_KEYPOINTS)[0]
    four_keypoints["keypoints"] = four_keypoints["keypoints"][:12]
    with pytest.raises(DatasetError, match="expected 3 x 5"):
        evaluate_coco(keypoint_gt, {"keypoints": [four_keypoints]}, kpt_oks_sigmas=SIGMAS)


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


@pytest.fixture
def proposal_gt(tmp_path):
    # One 200 x 200 image: A (a cat) and B (a dog), both medium (40 x 40), and a crowd region
    # C that recall ignores. Proposals are class-agnostic: A and B count alike.
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},  # A
        {"image_id": 1, "category_id": 2, "bbox": [100, 100, 40, 40]},  # B
        {"image_id": 1, "category_id": 1, "bbox": [150, 10, 40, 40], "iscrowd": 1},  # C
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    return write_gt(tmp_path / "gt.json", annotations, categories, num_images=1)


def test_proposal_ar_for_exact_and_0_75_iou_matches(proposal_gt):
    # Proposal 1 = A exactly (IoU 1). Proposal 2 = B cut to 30 px high: x1y1x2y2
    # [100, 100, 140, 130], intersection 40 x 30 = 1200 inside B -> IoU = 1200 / 1600 = 0.75.
    proposals = {1: np.array([[10, 10, 50, 50], [100, 100, 140, 130]], dtype=float)}
    metrics = evaluate_proposals(proposal_gt, proposals)
    # Recall per threshold: .50 ... .75 (6 thresholds): 2 / 2 = 1; .80 ... .95 (4): 1 / 2.
    # AR = (6 * 1 + 4 * 0.5) / 10 = 0.8. (Were the crowd region counted, recall would be
    # 2/3 and 1/3 and AR = 0.5333.) Both objects are medium.
    assert metrics["proposals/AR@100"] == pytest.approx(0.8)
    assert metrics["proposals/AR@1000"] == pytest.approx(0.8)
    assert metrics["proposals/ARm@1000"] == pytest.approx(0.8)
    assert math.isnan(metrics["proposals/ARs@1000"]) and math.isnan(metrics["proposals/ARl@1000"])
    assert set(metrics) == {"proposals/AR@100", "proposals/AR@1000", "proposals/ARs@1000",
                            "proposals/ARm@1000", "proposals/ARl@1000"}


def test_proposal_limits_cut_by_rank_or_score(proposal_gt):
    # 150 proposals: #0 = A, #1 ... #119 = a 5 x 5 box touching no object, #120 = B.
    junk = np.tile([[0.0, 150.0, 5.0, 155.0]], (119, 1))
    boxes = np.concatenate([[[10, 10, 50, 50]], junk, [[100, 100, 140, 140]], np.tile(junk[:1], (29, 1))])
    metrics = evaluate_proposals(proposal_gt, {1: boxes}, limits=(100, 1000))
    # Top 100 hold A only: recall 1/2 at every threshold -> AR@100 = 0.5. Top 1000 hold both.
    assert metrics["proposals/AR@100"] == pytest.approx(0.5)
    assert metrics["proposals/AR@1000"] == pytest.approx(1.0)
    # With an objectness column ranking B first and A last, the top 100 hold B only.
    scores = np.linspace(0.5, 0.6, len(boxes))[:, None]
    scores[120], scores[0] = 1.0, 0.0
    metrics = evaluate_proposals(proposal_gt, {1: np.concatenate([boxes, scores], axis=1)}, limits=(100, 1000))
    assert metrics["proposals/AR@100"] == pytest.approx(0.5)
    assert metrics["proposals/AR@1000"] == pytest.approx(1.0)


def test_no_proposals_give_zero_recall(proposal_gt):
    metrics = evaluate_proposals(proposal_gt, {})
    assert metrics["proposals/AR@1000"] == 0.0
    with pytest.raises(DatasetError, match="image_id 5"):
        evaluate_proposals(proposal_gt, {5: np.array([[0, 0, 1, 1.0]])})
