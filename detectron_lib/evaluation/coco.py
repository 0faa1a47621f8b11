"""COCO evaluation through pycocotools: result conversion, box/mask/keypoint AP, proposal AR.

Model outputs are per image: ``boxes (N, 4)`` x1y1x2y2 in original-image pixels, ``scores (N,)``,
``classes (N,)`` contiguous class ids (1..C, 0 is background), optionally ``masks (N, H, W)``
and ``keypoints (N, K, 3)``. The converters turn them into COCO result dicts
(``{"image_id", "category_id", "bbox" | "segmentation" | "keypoints", "score"}``) that
``evaluate_coco`` scores against a COCO-format ground truth.

Metrics come back as a flat dict of fractions in [0, 1]: ``bbox/AP``, ``bbox/AP50``, ...,
``bbox/AP-<category name>``. Where pycocotools reports -1 (no ground truth in that area range
or category) the metric is NaN, never omitted, so every run has the same keys;
``write_metrics`` stores NaN as ``null``.

pycocotools prints its progress and summary table to stdout; here that output is captured
and sent to this module's logger (summary at INFO, progress at DEBUG).
"""
import contextlib
import copy
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.structures.boxes import CONTINUOUS

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm", "keypoints")

# Names of COCOeval.stats entries, in pycocotools' order (see COCOeval.summarize).
DETECTION_METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR@1", "AR@10", "AR@100", "ARs", "ARm", "ARl",
)
# Keypoints: 20 detections per image and no "small" area range (COCO keypoint protocol).
KEYPOINT_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# Detectron's KRCNN.KEYPOINT_CONFIDENCE: where a keypoint instance's score comes from.
KEYPOINT_CONFIDENCE_SOURCES = ("bbox", "logit", "prob")
KEYPOINT_RESULTS_FORMATS = ("detectron", "detectron2")



# ---------------------------------------------------------------------------------------------
# Model outputs -> COCO result lists
# ---------------------------------------------------------------------------------------------


def _to_numpy(array, dtype=None):
    """A numpy array from a numpy array, list or (CPU/GPU) torch tensor."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)


def boxes_to_coco_xywh(boxes):
    """Convert x1y1x2y2 boxes to COCO's [x, y, width, height].

    boxes: (N, 4) x1y1x2y2 in image pixels (array, list or tensor), continuous as COCO's
    (width x2 - x1; pixel-index boxes go through BoxConvention.regions first).
    Returns (N, 4) float64.
    """
    return CONTINUOUS.to_xywh(_to_numpy(boxes, np.float64).reshape(-1, 4))


def _json_category_ids(classes, label_to_json_id):
    """Map class labels (N,) to the dataset's json category ids, as Python ints."""
    json_ids = []
    for class_id in _to_numpy(classes).astype(np.int64).reshape(-1).tolist():
        if class_id not in label_to_json_id:
            known = sorted(label_to_json_id)
            raise ConfigError(
                f"class id {class_id} has no COCO category in the dataset mapping (known class ids "
                f"{known[:1]}..{known[-1:]}); check that MODEL.NUM_CLASSES matches the dataset"
            )
        json_ids.append(int(label_to_json_id[class_id]))
    return json_ids


def _check_lengths(what, *arrays):
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"{what}: per-instance arrays have different lengths {[len(a) for a in arrays]}")


def detections_to_coco_results(image_id, boxes, scores, classes, label_to_json_id):
    """COCO 'bbox' results for one image.

    boxes: (N, 4) x1y1x2y2 in original-image pixels, continuous (see boxes_to_coco_xywh); scores: (N,); classes: (N,) class
    labels; label_to_json_id: {class label: json category id} of the dataset
    (CategoryMap.label_to_json_id).
    Returns N dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    """
    xywh = boxes_to_coco_xywh(boxes).tolist()
    scores = _to_numpy(scores, np.float64).reshape(-1).tolist()
    category_ids = _json_category_ids(classes, label_to_json_id)
    _check_lengths(f"image {image_id} detections", xywh, scores, category_ids)
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
        for box, score, category_id in zip(xywh, scores, category_ids)
    ]


def encode_masks_rle(masks):
    """Encode binary masks as COCO compressed RLE, counts as str (ready for JSON).

    masks: (N, H, W) bool or {0, 1} integers, full-image masks (already binarized, e.g. at
    Detectron's MRCNN.THRESH_BINARIZE). Returns N dicts ``{"size": [H, W], "counts": str}``.
    """
    masks = _to_numpy(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W); got shape {masks.shape}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must be binary (bool or 0/1); threshold mask probabilities first")
    # pycocotools wants (H, W, N) uint8 in Fortran order.
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    return [_rle_with_str_counts(rle) for rle in rles]


def _rle_with_str_counts(rle):
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def masks_to_coco_results(image_id, masks, scores, classes, label_to_json_id):
    """COCO 'segm' results for one image.

    masks: (N, H, W) binary full-image masks, or a list of N compressed RLE dicts (counts as
    bytes or str); scores: (N,); classes: (N,) contiguous class ids.
    Returns N dicts ``{"image_id", "category_id", "segmentation": RLE, "score"}``.
    """
    if isinstance(masks, (list, tuple)) and all(isinstance(m, dict) for m in masks):
        rles = [_rle_with_str_counts(m) for m in masks]
    else:
        rles = encode_masks_rle(masks)
    scores = _to_numpy(scores, np.float64).reshape(-1).tolist()
    category_ids = _json_category_ids(classes, label_to_json_id)
    _check_lengths(f"image {image_id} masks", rles, scores, category_ids)
    return [
        {"image_id": image_id, "category_id": category_id, "segmentation": rle, "score": score}
        for rle, score, category_id in zip(rles, scores, category_ids)
    ]


def keypoints_to_coco_results(
    image_id, keypoints, scores, classes, label_to_json_id, keypoint_confidence="bbox",
    results_format="detectron",
):
    """COCO 'keypoints' results for one image, with Detectron's score convention.

    keypoints: (N, K, 3) rows (x, y, per-keypoint score) in image pixels; scores: (N,) box
    scores; classes: (N,) contiguous class ids. As in Detectron, every keypoint is written
    with visibility 1 (COCO ignores predicted visibility), and the instance score is chosen
    by ``keypoint_confidence`` (KRCNN.KEYPOINT_CONFIDENCE): 'bbox' uses the box score;
    'logit' or 'prob' use the mean over the K keypoints of the third column, which then must
    hold that kind of per-keypoint score. ``results_format`` 'detectron2'
    (KRCNN.RESULTS_FORMAT) writes keypoints as detectron2 does: x and y - 0.5, from its
    pixel-centre coordinates to COCO's pixel indices, and the third column as it is.
    Returns N dicts ``{"image_id", "category_id", "keypoints": [x1, y1, 1, ...], "score"}``.
    """
    if keypoint_confidence not in KEYPOINT_CONFIDENCE_SOURCES:
        raise ConfigError(
            f"KRCNN.KEYPOINT_CONFIDENCE is '{keypoint_confidence}'; use one of {KEYPOINT_CONFIDENCE_SOURCES}"
        )
    if results_format not in KEYPOINT_RESULTS_FORMATS:
        raise ConfigError(f"KRCNN.RESULTS_FORMAT is '{results_format}'; use one of "
                          f"{KEYPOINT_RESULTS_FORMATS}")
    keypoints = _to_numpy(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must be (N, K, 3) rows of (x, y, score); got shape {keypoints.shape}")
    if keypoint_confidence == "bbox":
        instance_scores = _to_numpy(scores, np.float64).reshape(-1)
    else:
        instance_scores = keypoints[:, :, 2].mean(axis=1)
    flat = keypoints.copy()
    if results_format == "detectron2":
        flat[:, :, :2] -= 0.5
    else:
        flat[:, :, 2] = 1.0
    flat = flat.reshape(len(keypoints), keypoints.shape[1] * 3).tolist()  # N may be 0
    category_ids = _json_category_ids(classes, label_to_json_id)
    _check_lengths(f"image {image_id} keypoints", flat, instance_scores, category_ids)
    return [
        {"image_id": image_id, "category_id": category_id, "keypoints": kps, "score": score}
        for kps, score, category_id in zip(flat, instance_scores.tolist(), category_ids)
    ]


# ---------------------------------------------------------------------------------------------
# Running COCOeval
# ---------------------------------------------------------------------------------------------


def load_coco_gt(coco_gt):
    """A pycocotools COCO object from a path to a COCO-format json, or the object itself."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    path = Path(coco_gt)
    if not path.is_file():
        raise DatasetError(f"COCO ground-truth file not found: {path}; prepare the dataset first")
    try:
        with open(path) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"COCO ground-truth file {path} is not valid JSON: {err}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset, dict) or not isinstance(dataset.get(key), list):
            raise DatasetError(f"COCO ground-truth file {path} has no '{key}' list; is it a COCO instances json?")
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _empty_results(coco_gt):
    """A results COCO object with no detections (pycocotools' loadRes cannot take [])."""
    empty = COCO()
    empty.dataset = {
        "images": copy.deepcopy(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _check_results(coco_gt, results, iou_type):
    """Raise DatasetError if results name images or categories the ground truth lacks."""
    field = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for index, result in enumerate(results):
        missing = [k for k in ("image_id", "category_id", field, "score") if k not in result]
        if missing:
            raise DatasetError(
                f"{iou_type} result #{index} lacks {missing}; results need image_id, category_id, {field}, score"
            )
        if result["image_id"] not in image_ids:
            raise DatasetError(
                f"{iou_type} result #{index} is for image_id {result['image_id']!r}, which is not in the "
                "ground truth; evaluate against the dataset the results were computed on"
            )
        if result["category_id"] not in category_ids:
            raise DatasetError(
                f"{iou_type} result #{index} has category_id {result['category_id']!r}, which the ground "
                f"truth does not define (it has {sorted(category_ids)}); map contiguous class ids to json ids"
            )


def _check_ground_truth_fields(coco_gt, iou_type):
    """Raise DatasetError if ground-truth annotations lack what ``iou_type`` evaluation reads."""
    required = {
        "bbox": ("bbox", "area"),
        "segm": ("segmentation", "area"),
        "keypoints": ("keypoints", "num_keypoints", "area"),
    }
    for annotation in coco_gt.dataset["annotations"]:
        missing = [key for key in required[iou_type] if key not in annotation]
        if missing:
            raise DatasetError(
                f"ground-truth annotation id {annotation.get('id')!r} (image {annotation.get('image_id')!r}) "
                f"lacks {missing}, needed for '{iou_type}' evaluation; "
                f"does this dataset have {iou_type} annotations?"
            )


def _keypoint_count(coco_gt):
    """K, the keypoints per instance declared by the ground truth, or None if it has none."""
    for category in coco_gt.dataset["categories"]:
        if category.get("keypoints"):
            return len(category["keypoints"])
    for annotation in coco_gt.dataset["annotations"]:
        if annotation.get("keypoints"):
            return len(annotation["keypoints"]) // 3
    return None


def _keypoint_sigmas(coco_gt, kpt_oks_sigmas):
    """The per-keypoint OKS sigmas (K,) to use, checked against the dataset's K."""
    num_keypoints = _keypoint_count(coco_gt)
    if kpt_oks_sigmas is None:
        if num_keypoints not in (None, 17):
            raise ConfigError(
                f"the ground truth has {num_keypoints} keypoints per instance but no kpt_oks_sigmas were "
                "given; COCO's default sigmas cover the 17 COCO person keypoints only"
            )
        return None
    sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64).reshape(-1)
    if num_keypoints is not None and len(sigmas) != num_keypoints:
        raise ConfigError(
            f"kpt_oks_sigmas has {len(sigmas)} values but the ground truth has {num_keypoints} keypoints"
        )
    if not (sigmas > 0).all():
        raise ConfigError(f"kpt_oks_sigmas must all be positive; got {sigmas.tolist()}")
    return sigmas


def _check_keypoint_lengths(results, num_keypoints):
    for index, result in enumerate(results):
        if len(result["keypoints"]) != 3 * num_keypoints:
            raise DatasetError(
                f"keypoints result #{index} (image {result['image_id']!r}) has {len(result['keypoints'])} values; "
                f"expected 3 x {num_keypoints} (x, y, v per keypoint of the dataset)"
            )


@dataclass
class CocoEvalRun:
    """One finished pycocotools evaluation: the COCOeval (evaluated, accumulated, summarized)
    and the summary table it printed."""

    coco_eval: COCOeval
    summary: str


def run_cocoeval(coco_gt, results, iou_type, kpt_oks_sigmas=None):
    """Evaluate one result list with pycocotools, capturing everything it prints.

    coco_gt: COCO object or path; results: list of COCO result dicts of ``iou_type``
    ('bbox', 'segm' or 'keypoints'); kpt_oks_sigmas: (K,) OKS sigmas for keypoints (None:
    COCO's 17 person sigmas). An empty list is valid and scores AP 0.
    """
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"unknown COCO evaluation type '{iou_type}'; use one of {IOU_TYPES}")
    coco_gt = load_coco_gt(coco_gt)
    # pycocotools adds keys (id, area, ...) to each result dict: give it copies.
    results = [dict(result) for result in results]
    _check_ground_truth_fields(coco_gt, iou_type)
    _check_results(coco_gt, results, iou_type)
    sigmas = None
    if iou_type == "keypoints":
        sigmas = _keypoint_sigmas(coco_gt, kpt_oks_sigmas)
        _check_keypoint_lengths(results, len(sigmas) if sigmas is not None else 17)

    progress = io.StringIO()
    with contextlib.redirect_stdout(progress):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            coco_eval.params.kpt_oks_sigmas = sigmas
        coco_eval.evaluate()
        coco_eval.accumulate()
    logger.debug("pycocotools (%s):\n%s", iou_type, progress.getvalue().rstrip())

    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    return CocoEvalRun(coco_eval=coco_eval, summary=summary.getvalue())


def _nan_if_undefined(value):
    """pycocotools' -1 ("no ground truth here") as NaN; anything else as a float."""
    value = float(value)
    return math.nan if value < 0 else value


def per_category_ap(coco_eval):
    """AP at IoU .50:.95, all areas, the largest maxDets, per category: {json id: AP or NaN}.

    This is the per-class number Detectron logged beside the summary.
    """
    # precision: (T iou thresholds, R recall points, K categories, A area ranges, M maxDets)
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    per_category = {}
    for index, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        per_category[category_id] = float(values.mean()) if values.size else math.nan
    return per_category


def evaluate_coco(coco_gt, results_by_type, kpt_oks_sigmas=None, category_names=None):
    """COCO AP/AR for each result type, as one flat metrics dict.

    coco_gt: path to a COCO-format json or a pycocotools COCO object.
    results_by_type: {'bbox' | 'segm' | 'keypoints': list of COCO result dicts}.
    kpt_oks_sigmas: (K,) per-keypoint OKS sigmas for datasets other than COCO persons.
    category_names: {json category id: name} for the per-category keys (default: the names in
    the ground truth).

    Returns ``{"<type>/<metric>": value}`` with the 12 detection metrics for 'bbox' and
    'segm' (AP, AP50, AP75, APs, APm, APl, AR@1, AR@10, AR@100, ARs, ARm, ARl), the 10
    keypoint metrics for 'keypoints' (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl),
    and ``<type>/AP-<category name>`` per category. Values are fractions in [0, 1]; NaN where
    pycocotools reports -1 (no ground truth in that area range or category).
    """
    unknown = set(results_by_type) - set(IOU_TYPES)
    if unknown:
        raise ConfigError(f"unknown COCO evaluation type(s) {sorted(unknown)}; use {IOU_TYPES}")
    coco_gt = load_coco_gt(coco_gt)
    if category_names is None:
        category_names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}

    metrics = {}
    for iou_type in IOU_TYPES:
        if iou_type not in results_by_type:
            continue
        run = run_cocoeval(coco_gt, results_by_type[iou_type], iou_type, kpt_oks_sigmas)
        logger.info("COCO %s evaluation:\n%s", iou_type, run.summary.rstrip())
        names = KEYPOINT_METRIC_NAMES if iou_type == "keypoints" else DETECTION_METRIC_NAMES
        for name, value in zip(names, run.coco_eval.stats):
            metrics[f"{iou_type}/{name}"] = _nan_if_undefined(value)
        for category_id, ap in per_category_ap(run.coco_eval).items():
            metrics[f"{iou_type}/AP-{category_names.get(category_id, category_id)}"] = ap
    return metrics


# ---------------------------------------------------------------------------------------------
# Proposal recall
# ---------------------------------------------------------------------------------------------


def _proposal_results(coco_gt, proposals_by_image):
    """Proposals as class-agnostic COCO bbox results (all under one ground-truth category)."""
    any_category = coco_gt.getCatIds()[0]
    results = []
    for image_id, proposals in proposals_by_image.items():
        proposals = _to_numpy(proposals, np.float64)
        if proposals.size == 0:
            continue
        if proposals.ndim != 2 or proposals.shape[1] not in (4, 5):
            raise DatasetError(
                f"proposals for image {image_id} have shape {proposals.shape}; expected (N, 4) boxes "
                "in rank order or (N, 5) boxes with an objectness score column"
            )
        if proposals.shape[1] == 5:
            scores = proposals[:, 4]
        else:  # rank order: the first proposal is the most confident
            scores = np.arange(len(proposals), 0, -1, dtype=np.float64)
        xywh = boxes_to_coco_xywh(proposals[:, :4]).tolist()
        results.extend(
            {"image_id": image_id, "category_id": any_category, "bbox": box, "score": score}
            for box, score in zip(xywh, scores.tolist())
        )
    return results


def evaluate_proposals(coco_gt, proposals_by_image, limits=(100, 1000)):
    """Average recall of class-agnostic proposals, as Detectron reported for RPN models.

    coco_gt: path or COCO object. proposals_by_image: {image id: (N, 4) x1y1x2y2 boxes, most
    confident first, or (N, 5) with an objectness score column}, continuous (see
    boxes_to_coco_xywh). Images without an entry
    have no proposals (their objects count as missed). Recall is pycocotools' with
    ``useCats=0`` and ``maxDets=limits``: greedy matching by score, IoU .50:.95, crowd
    ground truth ignored. AR is the mean recall over the 10 IoU thresholds.

    Returns ``proposals/AR@<limit>`` for every limit and ``proposals/AR{s,m,l}@<largest>``
    for COCO's small, medium and large areas (NaN where there is no such ground truth).
    """
    limits = sorted(int(limit) for limit in limits)
    if not limits or limits[0] < 1:
        raise ConfigError(f"proposal limits must be positive integers; got {limits}")
    coco_gt = load_coco_gt(coco_gt)
    results = _proposal_results(coco_gt, proposals_by_image)
    _check_results(coco_gt, results, "bbox")

    progress = io.StringIO()
    with contextlib.redirect_stdout(progress):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = limits
        coco_eval.evaluate()
        coco_eval.accumulate()
    logger.debug("pycocotools (proposals):\n%s", progress.getvalue().rstrip())

    # recall: (T iou thresholds, K=1 with useCats=0, A area ranges, M limits)
    recall = coco_eval.eval["recall"]
    area_index = {label: i for i, label in enumerate(coco_eval.params.areaRngLbl)}

    def average_recall(area, limit_index):
        values = recall[:, 0, area_index[area], limit_index]
        values = values[values > -1]
        return float(values.mean()) if values.size else math.nan

    metrics = {f"proposals/AR@{limit}": average_recall("all", m) for m, limit in enumerate(limits)}
    for area, suffix in (("small", "s"), ("medium", "m"), ("large", "l")):
        metrics[f"proposals/AR{suffix}@{limits[-1]}"] = average_recall(area, len(limits) - 1)
    logger.info(
        "Proposal recall: %s", ", ".join(f"{name.split('/')[1]}={value:.4f}" for name, value in metrics.items())
    )
    return metrics
