"""PASCAL VOC detection AP: the VOC2007 11-point metric and the VOC2010+ area metric.

The protocol is the devkit's (as in Detectron's voc_eval): per class, detections are sorted
by score; each one is matched to the ground-truth box of its image and class with the highest
IoU; IoU must be strictly greater than the threshold (0.5). A match to a 'difficult' object is
neither a true nor a false positive; a second match to an already-detected object is a false
positive. Recall counts non-difficult objects only.
"""
from dataclasses import dataclass

import numpy as np
import torch

from detectron_lib.errors import DatasetError
from detectron_lib.structures.boxes import PIXEL_INDICES


@dataclass(frozen=True)
class VocGroundTruth:
    """Ground-truth objects of one image.

    boxes: (G, 4) float, x1y1x2y2 in image pixels; classes: (G,) int class ids;
    difficult: (G,) bool, VOC's 'difficult' flag (None: no object is difficult).
    """

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray = None

    def __post_init__(self):
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        difficult = np.zeros(len(classes), bool) if self.difficult is None else self.difficult
        object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "difficult", np.asarray(difficult, dtype=bool).reshape(-1))


def _check_ground_truth(image_id, gt):
    if not len(gt.boxes) == len(gt.classes) == len(gt.difficult):
        raise DatasetError(
            f"VOC ground truth of image {image_id!r} has {len(gt.boxes)} boxes, {len(gt.classes)} classes "
            f"and {len(gt.difficult)} difficult flags; each object needs one of each"
        )


def voc_ap(recall, precision, use_07_metric):
    """AP from a precision/recall curve.

    recall, precision: (D,) cumulative values after each detection in score order.
    use_07_metric: VOC2007's mean of the maximum precision at recall >= 0, 0.1, ..., 1.0
    (11 points); otherwise VOC2010+'s area under the monotone (non-increasing) precision
    envelope, summed where recall changes.

    The 11 thresholds are ``np.arange(0, 1.1, 0.1)`` as in Detectron's voc_eval, so a recall
    of exactly 0.3, 0.6 or 0.7 falls just short of the (0.30000000000000004, ...) threshold
    there too, and the numbers match Detectron's to the last digit.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        points = []
        for threshold in np.arange(0.0, 1.1, 0.1):
            reached = recall >= threshold
            points.append(precision[reached].max() if reached.any() else 0.0)
        return float(np.mean(points))
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[changes + 1] - recall[changes]) * envelope[changes + 1]))


def voc_precision_recall(detections, ground_truth_by_image, class_id, iou_threshold=0.5,
                         convention=PIXEL_INDICES):
    """Cumulative recall and precision of one class's detections, in descending score order.

    detections: sequence of (image id, score, box (4,) x1y1x2y2) for this class;
    ground_truth_by_image: {image id: VocGroundTruth}; IoUs in the box ``convention``. Ties in
    score keep input order.
    Returns (recall (D,), precision (D,), num_positives); recall is NaN when the class has
    no non-difficult object.
    """
    class_boxes, class_difficult, detected = {}, {}, {}
    num_positives = 0
    for image_id, gt in ground_truth_by_image.items():
        _check_ground_truth(image_id, gt)
        keep = gt.classes == class_id
        class_boxes[image_id] = gt.boxes[keep]
        class_difficult[image_id] = gt.difficult[keep]
        detected[image_id] = np.zeros(int(keep.sum()), bool)
        num_positives += int((~gt.difficult[keep]).sum())

    scores = np.array([score for _, score, _ in detections], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    true_positive = np.zeros(len(detections))
    false_positive = np.zeros(len(detections))
    for rank, index in enumerate(order):
        image_id, _, box = detections[index]
        if image_id not in class_boxes:
            raise DatasetError(
                f"VOC detection of class {class_id} is for image {image_id!r}, which has no ground truth; "
                "evaluate against the image set the detections were computed on"
            )
        gt_boxes = class_boxes[image_id]
        best_iou, best = -np.inf, -1
        if len(gt_boxes):
            ious = convention.iou(torch.as_tensor([box], dtype=torch.float64),
                                  torch.as_tensor(gt_boxes, dtype=torch.float64))[0].numpy()
            best = int(ious.argmax())
            best_iou = ious[best]
        if best_iou > iou_threshold:
            if class_difficult[image_id][best]:
                continue
            if detected[image_id][best]:
                false_positive[rank] = 1
            else:
                true_positive[rank] = 1
                detected[image_id][best] = True
        else:
            false_positive[rank] = 1

    true_positive = np.cumsum(true_positive)
    false_positive = np.cumsum(false_positive)
    recall = true_positive / num_positives if num_positives else np.full(len(detections), np.nan)
    # The floor avoids 0/0 when the first detections all match difficult objects.
    precision = true_positive / np.maximum(true_positive + false_positive, np.finfo(np.float64).eps)
    return recall, precision, num_positives


def evaluate_voc(
    detections_by_class,
    ground_truth_by_image,
    class_names,
    use_07_metric,
    iou_threshold=0.5,
    convention=PIXEL_INDICES,
):
    """Per-class VOC AP and their mean.

    detections_by_class: {class id: sequence of (image id, score, box (4,) x1y1x2y2)};
    ground_truth_by_image: {image id: VocGroundTruth} for every image of the test set;
    class_names: {class id: name}, the classes to evaluate (background excluded).
    use_07_metric: True for VOC2007's 11-point AP, False for the VOC2010+ area AP.
    convention: a structures.boxes.BoxConvention; the devkit's inclusive-pixel box widths
    (x2 - x1 + 1, PIXEL_INDICES) by default because the official VOC numbers use them.

    Returns ``{"voc/AP-<name>": AP, "voc/mAP": mean}``. A class with no non-difficult
    object has AP NaN and is left out of the mean.
    """
    metrics = {}
    for class_id, name in class_names.items():
        recall, precision, num_positives = voc_precision_recall(
            detections_by_class.get(class_id, ()), ground_truth_by_image, class_id, iou_threshold, convention
        )
        metrics[f"voc/AP-{name}"] = voc_ap(recall, precision, use_07_metric) if num_positives else float("nan")
    defined = [ap for ap in metrics.values() if not np.isnan(ap)]
    metrics["voc/mAP"] = float(np.mean(defined)) if defined else float("nan")
    return metrics
