"""Evaluation: COCO box/mask/keypoint AP and proposal AR (pycocotools), PASCAL VOC AP."""
from detectron_lib.evaluation.coco import (
    boxes_to_coco_xywh,
    detections_to_coco_results,
    encode_masks_rle,
    evaluate_coco,
    evaluate_proposals,
    keypoints_to_coco_results,
    load_coco_gt,
    masks_to_coco_results,
    per_category_ap,
    run_cocoeval,
)
from detectron_lib.evaluation.metrics import read_metrics, write_metrics
from detectron_lib.evaluation.voc import VocGroundTruth, evaluate_voc, voc_ap, voc_precision_recall

__all__ = [
    "VocGroundTruth",
    "boxes_to_coco_xywh",
    "detections_to_coco_results",
    "encode_masks_rle",
    "evaluate_coco",
    "evaluate_proposals",
    "evaluate_voc",
    "keypoints_to_coco_results",
    "load_coco_gt",
    "masks_to_coco_results",
    "per_category_ap",
    "read_metrics",
    "run_cocoeval",
    "voc_ap",
    "voc_precision_recall",
    "write_metrics",
]
