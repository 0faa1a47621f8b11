"""Test-time augmentation of generalized R-CNN models: Detectron's TEST.BBOX_AUG
(test.im_detect_bbox_aug), TEST.MASK_AUG (im_detect_mask_aug) and TEST.KPS_AUG
(im_detect_keypoints_aug).

A pass runs the model on one transform of the original image: a width-relative aspect-ratio
change (the width becomes int(ratio * width)), then an optional horizontal flip, then the usual
resize to a short side / long-side cap. Its predictions are mapped back into the original image
and the passes are combined:

- boxes: each pass gives every RoI's class scores (R, K+1) and class boxes (R, 4(K+1)) before
  NMS; TEST.BBOX_AUG.SCORE_HEUR / COORD_HEUR combine them - ID keeps the identity pass, AVG
  averages the passes (their RoIs must line up: precomputed proposals mapped through each
  transform), UNION stacks all passes' RoIs - and the ordinary post-processing (NMS or
  soft-NMS, box voting, DETECTIONS_PER_IM) runs once on the result.
- masks: the mask head predicts the final detections' soft masks in each pass (boxes mapped into
  the transformed image, masks of flipped passes mirrored back), combined by TEST.MASK_AUG.HEUR:
  SOFT_AVG (mean), SOFT_MAX (max) or LOGIT_AVG (sigmoid of the mean logit).
- keypoints: likewise the keypoint head's heatmap logits (flipped passes mirrored back with
  left/right keypoints swapped), combined by TEST.KPS_AUG.HEUR HM_AVG (mean) or HM_MAX (max),
  then decoded into keypoints once.

SCALE_SIZE_DEP: for keypoints as Detectron (detections smaller than AREA_TH ignore the passes
at scales below TEST.SCALE, the others the passes above it); masks follow the same rule, which
Detectron left unimplemented, as it did for boxes, where here a pass below TEST.SCALE drops
class boxes smaller than AREA_TH_LO and one above drops those larger than AREA_TH_HI (UNION).
Without augmentation of their own, masks and keypoints come from the identity pass.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from detectron_lib.data.catalog import get_dataset
from detectron_lib.data.loader import size_divisibility_from_cfg
from detectron_lib.data.transforms import (
    compute_resize_scale,
    normalize_image,
    pad_to_batch,
    read_image_bgr,
    resize_image,
)
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.precision import reuse_weight_casts
from detectron_lib.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
from detectron_lib.modeling.roi_heads.mask_head import paste_mask_probs
from detectron_lib.structures.boxes import box_area, flip_boxes
from detectron_lib.structures.instances import Instances
from detectron_lib.structures.keypoints import flip_permutation

# Detectron's LOGIT_AVG floors probabilities at this before taking logits.
_MIN_PROB = 1e-20


@dataclass(frozen=True)
class Augmentation:
    """One pass: resize to short side ``scale`` (long side <= ``max_size``) the original image
    after an ``aspect_ratio`` change of its width and an optional horizontal flip.

    size_tag: "down" / "up" for passes at a scale below / above TEST.SCALE, else None.
    """

    scale: int
    max_size: int
    hflip: bool = False
    aspect_ratio: float = 1.0
    size_tag: str = None

    @property
    def is_identity(self):
        return not self.hflip and self.aspect_ratio == 1.0 and self.size_tag is None


def augmentations(aug_cfg, test_scale, test_max_size):
    """The passes a TEST.BBOX_AUG / MASK_AUG / KPS_AUG node asks for, the identity first: H_FLIP,
    each of SCALES at MAX_SIZE (and flipped, with SCALE_H_FLIP), each of ASPECT_RATIOS at
    TEST.SCALE (and flipped, with ASPECT_RATIO_H_FLIP)."""
    passes = [Augmentation(test_scale, test_max_size)]
    if aug_cfg.H_FLIP:
        passes.append(Augmentation(test_scale, test_max_size, hflip=True))
    for scale in aug_cfg.SCALES:
        tag = "down" if scale < test_scale else "up" if scale > test_scale else None
        passes.append(Augmentation(scale, aug_cfg.MAX_SIZE, size_tag=tag))
        if aug_cfg.SCALE_H_FLIP:
            passes.append(Augmentation(scale, aug_cfg.MAX_SIZE, hflip=True, size_tag=tag))
    for ratio in aug_cfg.ASPECT_RATIOS:
        passes.append(Augmentation(test_scale, test_max_size, aspect_ratio=float(ratio)))
        if aug_cfg.ASPECT_RATIO_H_FLIP:
            passes.append(Augmentation(test_scale, test_max_size, hflip=True,
                                       aspect_ratio=float(ratio)))
    return passes


# ---- geometry ----------------------------------------------------------------------------


def transformed_width(width, aspect_ratio):
    """Width of the image after the aspect-ratio change (Detectron's aspect_ratio_rel)."""
    return max(int(aspect_ratio * width), 1)


def transform_image(image_bgr, aug):
    """(H, W, 3) uint8 -> the image of pass ``aug`` before resizing: (H, W', 3) uint8."""
    height, width = image_bgr.shape[:2]
    if aug.aspect_ratio != 1.0:
        size = (transformed_width(width, aug.aspect_ratio), height)
        image = Image.fromarray(np.ascontiguousarray(image_bgr))
        image_bgr = np.asarray(image.resize(size, Image.BILINEAR))
    if aug.hflip:
        image_bgr = image_bgr[:, ::-1]
    return np.ascontiguousarray(image_bgr)


def map_boxes(boxes, aug, width, legacy_plus_one=False, inverse=False):
    """Boxes (N, 4k) of the original image (``width`` pixels wide) in the image of pass ``aug``
    before resizing, or, with ``inverse``, from that image back to the original."""
    new_width = transformed_width(width, aug.aspect_ratio) if aug.aspect_ratio != 1.0 else width
    stretch = new_width / width
    if inverse:
        if aug.hflip:
            boxes = flip_boxes(boxes, new_width, legacy_plus_one)
        stretch = 1.0 / stretch
    if stretch != 1.0:
        boxes = boxes.clone()
        boxes[:, 0::2] *= stretch
    if aug.hflip and not inverse:
        boxes = flip_boxes(boxes, new_width, legacy_plus_one)
    return boxes


# ---- combining passes --------------------------------------------------------------------


def combine_box_predictions(predictions, score_heur, coord_heur):
    """predictions: [(scores (R_t, K+1), boxes (R_t, 4C))] per pass, the identity first.
    Returns combined (scores, boxes) by the ID / AVG / UNION heuristics."""
    scores_ts = [p[0] for p in predictions]
    boxes_ts = [p[1] for p in predictions]
    return (_combine(scores_ts, score_heur, "SCORE_HEUR"),
            _combine(boxes_ts, coord_heur, "COORD_HEUR"))


def _combine(values, heuristic, key):
    if heuristic == "ID":
        return values[0]
    if heuristic == "UNION":
        return torch.cat(values)
    if heuristic == "AVG":
        if len({v.shape for v in values}) > 1:
            raise ConfigError(f"TEST.BBOX_AUG.{key} AVG needs the same RoIs in every pass "
                              "(precomputed proposals); use UNION with an RPN")
        return torch.stack(values).mean(dim=0)
    raise ConfigError(f"TEST.BBOX_AUG.{key}: unknown value '{heuristic}'; use ID, AVG or UNION")


def drop_by_size(scores, boxes, size_tag, area_lo, area_hi, legacy_plus_one=False):
    """Zero the scores of class boxes a size-tagged pass should not contribute: areas below
    ``area_lo`` in a "down" pass, above ``area_hi`` in an "up" pass. scores: (R, K+1),
    boxes: (R, 4(K+1)) or (R, 8) class-agnostic. Returns new scores."""
    if size_tag is None:
        return scores
    areas = box_area(boxes.reshape(-1, 4), legacy_plus_one).view(len(boxes), -1)
    if areas.shape[1] != scores.shape[1]:  # class-agnostic: the fg box serves every class
        areas = areas[:, 1:2].expand_as(scores)
    drop = areas < area_lo if size_tag == "down" else areas > area_hi
    return scores.masked_fill(drop, 0.0)


def _pass_mask(use, values):
    """use: (T, N) bool or None -> (T, N, 1, ...) broadcastable against values (T, N, ...)."""
    if use is None:
        use = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
    return use.view(*use.shape, *([1] * (values.dim() - 2)))


def _masked_mean(values, use):
    use = _pass_mask(use, values)
    return torch.where(use, values, 0.0).sum(dim=0) / use.sum(dim=0).clamp(min=1)


def _masked_max(values, use):
    return torch.where(_pass_mask(use, values), values, -torch.inf).amax(dim=0)


def combine_soft_masks(masks, heuristic, use=None):
    """masks: (T, N, M, M) soft masks of N detections in T passes; use: (T, N) bool, the passes
    each detection combines (None: all). Returns (N, M, M) by SOFT_AVG / SOFT_MAX / LOGIT_AVG."""
    if heuristic == "SOFT_AVG":
        return _masked_mean(masks, use)
    if heuristic == "SOFT_MAX":
        return _masked_max(masks, use)
    if heuristic == "LOGIT_AVG":
        logits = torch.log(masks.clamp(min=_MIN_PROB)) - torch.log1p(-masks)
        return torch.sigmoid(_masked_mean(logits, use))
    raise ConfigError(f"TEST.MASK_AUG.HEUR: unknown value '{heuristic}'; use SOFT_AVG, SOFT_MAX "
                      "or LOGIT_AVG")


def combine_heatmaps(heatmaps, heuristic, use=None):
    """heatmaps: (T, N, K, M, M) keypoint logits of N detections in T passes; use as for
    combine_soft_masks. Returns (N, K, M, M) by HM_AVG (mean) or HM_MAX (max)."""
    if heuristic == "HM_AVG":
        return _masked_mean(heatmaps, use)
    if heuristic == "HM_MAX":
        return _masked_max(heatmaps, use)
    raise ConfigError(f"TEST.KPS_AUG.HEUR: unknown value '{heuristic}'; use HM_AVG or HM_MAX")


def flip_heatmaps(heatmaps, flip_perm):
    """Heatmaps (N, K, M, M) predicted on a mirrored image, back in the original's frame: each
    map mirrored left-right and left/right keypoints swapped (flip_perm from
    structures.keypoints.flip_permutation)."""
    return heatmaps[:, torch.as_tensor(flip_perm, device=heatmaps.device)].flip(-1)


def size_dependent_use(size_tags, areas, area_thresh):
    """(T, N) bool: pass t counts for detection n unless it is downscaled and the object small
    (area < area_thresh) or upscaled and the object large (Detectron's
    combine_heatmaps_size_dep)."""
    small = areas < area_thresh
    rows = []
    for tag in size_tags:
        if tag == "down":
            rows.append(~small)
        elif tag == "up":
            rows.append(small)
        else:
            rows.append(torch.ones_like(small))
    return torch.stack(rows)


# ---- running the model -------------------------------------------------------------------


class _Pass:
    """The model's backbone features of one augmented image, and how that image was made."""

    def __init__(self, model, image_bgr, aug, cfg, device):
        image = transform_image(image_bgr, aug)
        self.scale = compute_resize_scale(image.shape[0], image.shape[1], aug.scale, aug.max_size)
        resized = resize_image(image, self.scale)
        self.image_size = tuple(resized.shape[:2])
        image = normalize_image(resized, cfg.PIXEL_MEANS, cfg.PIXEL_STDS, cfg.PIXEL_ORDER)
        batch = pad_to_batch([image], size_divisibility_from_cfg(cfg))
        self.features = model.extract_features(batch.to(device))


def _check_model(model):
    for method in ("extract_features", "predict_boxes", "predict_instance_heads"):
        if not hasattr(model, method):
            raise ConfigError(f"TEST.BBOX_AUG / MASK_AUG / KPS_AUG: {type(model).__name__} models "
                              "have no test-time augmentation (R-CNN models only); disable them")


def augmentation_enabled(cfg):
    """Whether ``detectron test`` / infer should run detect_with_augmentation."""
    return bool(cfg.TEST.BBOX_AUG.ENABLED or (cfg.TEST.MASK_AUG.ENABLED and cfg.MODEL.MASK_ON)
                or (cfg.TEST.KPS_AUG.ENABLED and cfg.MODEL.KEYPOINTS_ON))


def keypoint_flip_perm_from_config(cfg):
    """(K,) left/right keypoint permutation of the first TEST / TRAIN dataset whose catalog
    entry names keypoints and a flip map (needed to mirror heatmaps of flipped passes)."""
    for name in tuple(cfg.TEST.DATASETS) + tuple(cfg.TRAIN.DATASETS):
        entry = get_dataset(name)
        if entry.keypoint_names and entry.keypoint_flip_map:
            return flip_permutation(entry.keypoint_names, entry.keypoint_flip_map)
    raise ConfigError("TEST.KPS_AUG with flipped passes needs the keypoint flip map of a dataset "
                      "in TEST.DATASETS or TRAIN.DATASETS (none has one); turn off H_FLIP, "
                      "SCALE_H_FLIP and ASPECT_RATIO_H_FLIP of TEST.KPS_AUG")


@torch.no_grad()
def detect_with_augmentation(model, cfg, image_bgr, device, proposals=None):
    """Detections of one (H, W, 3) uint8 BGR image with TEST.BBOX_AUG / MASK_AUG / KPS_AUG.

    proposals: (P, 4) precomputed proposals in the image's pixels, for models without RPN.
    Returns Instances(boxes, scores, classes[, mask_probs (N, M, M), keypoints ...]) on the CPU,
    boxes in the image's pixels, like the model's own inference.
    """
    _check_model(model)
    height, width = image_bgr.shape[:2]
    legacy = cfg.MODEL.BBOX_LEGACY_PLUS_ONE
    box_aug = cfg.TEST.BBOX_AUG
    passes = augmentations(box_aug, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    if not box_aug.ENABLED:
        passes = passes[:1]
    predictions = []
    identity = None  # the first pass; its features serve the mask and keypoint heads
    for aug in passes:
        p = _Pass(model, image_bgr, aug, cfg, device)
        if identity is None:
            identity = p
        rois = None
        if proposals is not None:
            boxes = map_boxes(torch.as_tensor(proposals, dtype=torch.float32), aug, width, legacy)
            rois = [Instances(p.image_size, boxes=(boxes * p.scale).to(device))]
        ((scores, boxes),) = model.predict_boxes(p.features, [p.image_size], [p.scale], rois)
        boxes = map_boxes(boxes, aug, width, legacy, inverse=True)
        if box_aug.SCALE_SIZE_DEP:
            scores = drop_by_size(scores, boxes, aug.size_tag, box_aug.AREA_TH_LO,
                                  box_aug.AREA_TH_HI, legacy)
        predictions.append((scores, boxes))
    scores, boxes = combine_box_predictions(predictions, box_aug.SCORE_HEUR, box_aug.COORD_HEUR)
    detections = model.roi_heads.postprocess(scores, boxes, (height, width))
    (detections,) = model.predict_instance_heads(identity.features, [detections], [identity.scale])
    if cfg.TEST.MASK_AUG.ENABLED and detections.has("mask_probs") and len(detections):
        detections.mask_probs = _augmented_masks(model, cfg, image_bgr, detections, identity,
                                                 device)
    if cfg.TEST.KPS_AUG.ENABLED and detections.has("keypoints") and len(detections):
        keypoints, probs = _augmented_keypoints(model, cfg, image_bgr, detections, identity, device)
        detections.keypoints = keypoints
        detections.keypoint_probs = probs
    return detections.to("cpu")


def _augmented_masks(model, cfg, image_bgr, detections, identity, device):
    """Soft masks (N, M, M) of ``detections`` combined over the TEST.MASK_AUG passes."""
    mask_aug = cfg.TEST.MASK_AUG
    legacy = cfg.MODEL.BBOX_LEGACY_PLUS_ONE
    width = image_bgr.shape[1]
    passes = augmentations(mask_aug, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    masks = [detections.mask_probs]  # the identity pass, already computed
    for aug in passes[1:]:
        p = _Pass(model, image_bgr, aug, cfg, device)
        boxes = map_boxes(detections.boxes, aug, width, legacy)
        moved = Instances(p.image_size, boxes=boxes, classes=detections.classes)
        (probs,) = model.predict_masks(p.features, [moved], [p.scale])
        masks.append(probs.flip(-1) if aug.hflip else probs)
    use = None
    if mask_aug.SCALE_SIZE_DEP:
        use = size_dependent_use([a.size_tag for a in passes], box_area(detections.boxes, legacy),
                                 mask_aug.AREA_TH)
    return combine_soft_masks(torch.stack(masks), mask_aug.HEUR, use)


def _augmented_keypoints(model, cfg, image_bgr, detections, identity, device):
    """(keypoints (N, K, 3), probs (N, K)) of ``detections`` decoded from their heatmap logits
    combined over the TEST.KPS_AUG passes (Detectron's im_detect_keypoints_aug)."""
    kps_aug = cfg.TEST.KPS_AUG
    legacy = cfg.MODEL.BBOX_LEGACY_PLUS_ONE
    width = image_bgr.shape[1]
    passes = augmentations(kps_aug, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    flip_perm = keypoint_flip_perm_from_config(cfg) if any(a.hflip for a in passes) else None
    (heatmaps,) = model.predict_keypoint_heatmaps(identity.features, [detections], [identity.scale])
    all_heatmaps = [heatmaps]
    for aug in passes[1:]:
        p = _Pass(model, image_bgr, aug, cfg, device)
        boxes = map_boxes(detections.boxes, aug, width, legacy)
        moved = Instances(p.image_size, boxes=boxes)
        (heatmaps,) = model.predict_keypoint_heatmaps(p.features, [moved], [p.scale])
        all_heatmaps.append(flip_heatmaps(heatmaps, flip_perm) if aug.hflip else heatmaps)
    use = None
    if kps_aug.SCALE_SIZE_DEP:
        use = size_dependent_use([a.size_tag for a in passes], box_area(detections.boxes, legacy),
                                 kps_aug.AREA_TH)
    combined = combine_heatmaps(torch.stack(all_heatmaps), kps_aug.HEUR, use)
    return heatmaps_to_keypoints(combined, detections.boxes,
                                 model.keypoint_heads.inference_min_size)


@torch.no_grad()
def run_inference_with_augmentation(model, cfg, loader, device):
    """inference.engine.run_inference with test-time augmentation: the loader's images are read
    again at full resolution (its resized batches are not used). Returns (results, seconds per
    image) as run_inference does."""
    results = []
    seconds = 0.0
    dataset = loader.dataset
    with reuse_weight_casts(device.type):
        for index in loader.sampler:
            record = dataset.records[index]
            start = time.perf_counter()
            image = read_image_bgr(record["file_name"])
            output = detect_with_augmentation(model, cfg, image, device, record.get("proposals"))
            if output.has("mask_probs"):
                output.masks = paste_mask_probs(output, image.shape[0], image.shape[1],
                                                cfg.MRCNN.THRESH_BINARIZE, cfg.MRCNN.LEGACY_PASTE)
            results.append((record["image_id"], output))
            seconds += time.perf_counter() - start
    return results, seconds / max(len(results), 1)
