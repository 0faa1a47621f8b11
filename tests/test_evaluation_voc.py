"""PASCAL VOC AP against hand-computed answers (the devkit protocol: IoU > 0.5, 'difficult'
objects ignored, VOC2007 11-point AP and VOC2010+ area AP)."""
import math

import numpy as np
import pytest

from detectron_lib.errors import DatasetError
from detectron_lib.evaluation import VocGroundTruth, evaluate_voc, voc_ap, voc_precision_recall
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES

CAT, DOG = 1, 2
NAMES = {CAT: "cat", DOG: "dog"}


@pytest.fixture
def ground_truth():
    # Image a: cat1, cat2 (difficult), dog. Image b: cat3. Image c: cat4.
    # Non-difficult cats: 3 (cat1, cat3, cat4).
    return {
        "a": VocGroundTruth(
            boxes=[[10, 10, 50, 50], [100, 100, 150, 150], [200, 10, 260, 70]],
            classes=[CAT, CAT, DOG],
            difficult=[False, True, False],
        ),
        "b": VocGroundTruth(boxes=[[20, 20, 80, 80]], classes=[CAT], difficult=[False]),
        "c": VocGroundTruth(boxes=[[30, 30, 90, 90]], classes=[CAT]),
    }


def cat_detections():
    return [
        ("a", 0.9, [10, 10, 50, 50]),  # d1: cat1 -> TP
        ("a", 0.8, [100, 100, 150, 150]),  # d2: cat2 (difficult) -> ignored
        ("b", 0.7, [300, 300, 340, 340]),  # d3: overlaps nothing -> FP
        ("b", 0.6, [20, 20, 80, 80]),  # d4: cat3 -> TP
        ("a", 0.5, [11, 11, 50, 50]),  # d5: cat1 again (already found) -> FP
    ]


# Hand computation for 'cat' (npos = 3), detections in score order d1 ... d5:
#   TP 1 0 0 1 0 -> cumulative 1 1 1 2 2;  FP 0 0 1 0 1 -> cumulative 0 0 1 1 2
#   recall    1/3 1/3 1/3 2/3 2/3
#   precision 1   1   1/2 2/3 1/2
# VOC2007 11-point: max precision at recall >= t for t = 0, .1, ..., 1:
#   t = 0, .1, .2, .3 -> 1;  t = .4, .5, .6 -> max(2/3, 1/2) = 2/3;  t = .7 ... 1 -> 0
#   AP = (4 * 1 + 3 * 2/3) / 11 = 6 / 11 = 0.545454...
# VOC2010+ area: recall padded 0 | ... | 1, precision 0 | ... | 0; envelope from the right:
#   recall    0  1/3 1/3 1/3 2/3 2/3  1
#   envelope  1  1   1   2/3 2/3 1/2  0
#   recall changes at 0 -> 1/3 (envelope 1), 1/3 -> 2/3 (2/3), 2/3 -> 1 (0)
#   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5 / 9 = 0.555...
CAT_AP_07 = 6 / 11
CAT_AP_AREA = 5 / 9


def test_precision_recall_curve_ignores_difficult_objects(ground_truth):
    recall, precision, num_positives = voc_precision_recall(cat_detections(), ground_truth, CAT)
    assert num_positives == 3
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(precision, [1, 1, 1 / 2, 2 / 3, 1 / 2])


def test_11_point_and_area_ap_differ_as_hand_computed(ground_truth):
    detections = {CAT: cat_detections(), DOG: [("a", 0.3, [200, 10, 260, 70])]}
    voc07 = evaluate_voc(detections, ground_truth, NAMES, use_07_metric=True)
    voc12 = evaluate_voc(detections, ground_truth, NAMES, use_07_metric=False)
    assert voc07["voc/AP-cat"] == pytest.approx(CAT_AP_07)
    assert voc12["voc/AP-cat"] == pytest.approx(CAT_AP_AREA)
    # 'dog': one exact detection of its one object -> recall 1, precision 1 -> AP 1 either way.
    assert voc07["voc/AP-dog"] == pytest.approx(1.0)
    assert voc12["voc/AP-dog"] == pytest.approx(1.0)
    # mAP = mean over the two classes: (6/11 + 1) / 2 = 17/22; (5/9 + 1) / 2 = 7/9.
    assert voc07["voc/mAP"] == pytest.approx(17 / 22)
    assert voc12["voc/mAP"] == pytest.approx(7 / 9)


def test_detection_of_a_difficult_object_is_neither_tp_nor_fp(ground_truth):
    # Dropping d2 (the match to the difficult cat) changes neither AP.
    without_d2 = [d for d in cat_detections() if d[1] != 0.8]
    for use_07, expected in ((True, CAT_AP_07), (False, CAT_AP_AREA)):
        metrics = evaluate_voc({CAT: without_d2}, ground_truth, {CAT: "cat"}, use_07_metric=use_07)
        assert metrics["voc/AP-cat"] == pytest.approx(expected)
    # Were cat2 not difficult, d2 would be a TP and npos 4: recall 1/4 2/4 2/4 3/4 3/4,
    # precision 1 1 2/3 3/4 3/5; area AP = 1/4*1 + 1/4*1 + 1/4*3/4 + 1/4*0 = 11/16.
    not_difficult = dict(ground_truth)
    not_difficult["a"] = VocGroundTruth(ground_truth["a"].boxes, ground_truth["a"].classes)
    metrics = evaluate_voc({CAT: cat_detections()}, not_difficult, {CAT: "cat"}, use_07_metric=False)
    assert metrics["voc/AP-cat"] == pytest.approx(11 / 16)


def test_plus_one_pixel_convention_switch():
    # Object [0, 0, 2, 2], detection [0, 0, 2, 1].
    #   +1 (devkit): widths 3 x 3 = 9 and 3 x 2 = 6, intersection 6 -> IoU 6/9 = 0.667 > 0.5: TP.
    #   no +1: areas 4 and 2, intersection 2 -> IoU 2/4 = 0.5, not > 0.5: FP.
    ground_truth = {"x": VocGroundTruth(boxes=[[0, 0, 2, 2]], classes=[CAT])}
    detections = {CAT: [("x", 1.0, [0, 0, 2, 1])]}
    with_plus_one = evaluate_voc(detections, ground_truth, {CAT: "cat"}, use_07_metric=False, convention=PIXEL_INDICES)
    without = evaluate_voc(detections, ground_truth, {CAT: "cat"}, use_07_metric=False, convention=CONTINUOUS)
    assert with_plus_one["voc/AP-cat"] == pytest.approx(1.0)
    assert without["voc/AP-cat"] == pytest.approx(0.0)


def test_class_without_objects_is_nan_and_left_out_of_the_mean(ground_truth):
    names = {CAT: "cat", DOG: "dog", 3: "bird"}
    metrics = evaluate_voc({CAT: cat_detections()}, ground_truth, names, use_07_metric=False)
    assert math.isnan(metrics["voc/AP-bird"])
    # 'dog' has an object and no detection: AP 0. mAP = (5/9 + 0) / 2 = 5/18.
    assert metrics["voc/AP-dog"] == 0.0
    assert metrics["voc/mAP"] == pytest.approx(5 / 18)


def test_voc_ap_on_a_bare_curve():
    # Recall .5 at precision 1, then recall 1 at precision .5.
    #   11-point: t = 0 ... .5 (6 points) -> 1; t = .6 ... 1 (5 points) -> .5: (6 + 2.5) / 11.
    #   area: .5 * 1 + .5 * .5 = .75.
    assert voc_ap([0.5, 1.0], [1.0, 0.5], use_07_metric=True) == pytest.approx(8.5 / 11)
    assert voc_ap([0.5, 1.0], [1.0, 0.5], use_07_metric=False) == pytest.approx(0.75)


def test_11_point_thresholds_are_detectrons_arange():
    # Detectron's thresholds come from np.arange(0, 1.1, 0.1): the 4th is 0.1 * 3 =
    # 0.30000000000000004, above a recall of exactly 3/10 = 0.3. So recall .3 at precision 1
    # reaches t = 0, .1, .2 only: AP = 3 / 11 (not 4 / 11).
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(3 / 11)


def test_bad_ground_truth_and_unknown_images_are_dataset_errors(ground_truth):
    with pytest.raises(DatasetError, match="image 'z'"):
        mismatched = {"z": VocGroundTruth([[0, 0, 1, 1]], [CAT, CAT])}
        evaluate_voc({CAT: cat_detections()}, mismatched, NAMES, use_07_metric=True)
    with pytest.raises(DatasetError, match="image 'nowhere'"):
        evaluate_voc({CAT: [("nowhere", 0.5, [0, 0, 1, 1])]}, ground_truth, NAMES, use_07_metric=True)
