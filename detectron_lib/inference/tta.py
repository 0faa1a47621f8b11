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
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron_lib.data.catalog import get_dataset
from detectron_lib.data.transforms import image_array, image_tensor
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.build import body_features
from detectron_lib.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
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


def map_boxes(boxes, aug, width, inverse=False):
    """Boxes (N, 4k) of the original image (``width`` pixels wide) in the image of pass ``aug``
    before resizing, or, with ``inverse``, from that image back to the original."""
    new_width = transformed_width(width, aug.aspect_ratio) if aug.aspect_ratio != 1.0 else width
    stretch = new_width / width
    if inverse:
        if aug.hflip:
            boxes = boxes.flip(new_width)
        stretch = 1.0 / stretch
    if stretch != 1.0:
        stretched = boxes.tensor.clone()
        stretched[:, 0::2] *= stretch
        boxes = boxes.like(stretched)
    if aug.hflip and not inverse:
        boxes = boxes.flip(new_width)
    return boxes


# ---- combining passes --------------------------------------------------------------------


def combine_box_predictions(predictions, score_heur, coord_heur):
    """predictions: [(scores (R_t, K+1), Boxes (R_t, 4C))] per pass, the identity first.
    Returns combined (scores, Boxes) by the ID / AVG / UNION heuristics."""
    scores_ts = [p[0] for p in predictions]
    boxes_ts = [p[1].tensor for p in predictions]
    return (_combine(scores_ts, score_heur, "SCORE_HEUR"),
            predictions[0][1].like(_combine(boxes_ts, coord_heur, "COORD_HEUR")))


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


def drop_by_size(scores, boxes, size_tag, area_lo, area_hi):
    """Zero the scores of class boxes a size-tagged pass should not contribute: areas below
    ``area_lo`` in a "down" pass, above ``area_hi`` in an "up" pass. scores: (R, K+1),
    boxes: Boxes (R, 4(K+1)) or (R, 8) class-agnostic, areas in their convention. Returns
    new scores."""
    if size_tag is None:
        return scores
    areas = boxes.like(boxes.tensor.reshape(-1, 4)).area().view(len(boxes), -1)
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


def augmentation_enabled(cfg):
    """Whether inference runs through DetectorWithTTA."""
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


class _Pass:
    """The detector's backbone features of one augmented image, and how that image was made."""

    def __init__(self, model, image_bgr, aug, device):
        self.device = device
        resized, self.scale = model.io.resize(image_tensor(transform_image(image_bgr, aug)),
                                              aug.scale, aug.max_size)
        batch, (self.image_size,) = model.io.batch([resized.to(self.device)])
        self.features = body_features(model.backbone, batch, model.body_precision)


class DetectorWithTTA(nn.Module):
    """A generalized R-CNN run with TEST.BBOX_AUG / MASK_AUG / KPS_AUG (see the module
    docstring). It takes what the detector takes at inference, as original images (the test
    loader built with ``resize=False``, or ``Predictor``'s), and returns what it returns:
    detections in original-image pixels, masks pasted by the detector's io."""

    def __init__(self, model, cfg):
        super().__init__()
        if getattr(model, "roi_heads", None) is None or not hasattr(model.roi_heads, "predict_boxes"):
            raise ConfigError(f"TEST.BBOX_AUG / MASK_AUG / KPS_AUG: {type(model).__name__} models "
                              "have no test-time augmentation (R-CNN models with box heads "
                              "only); disable them")
        self.model = model
        self.box_aug, self.mask_aug, self.kps_aug = cfg.TEST.BBOX_AUG, cfg.TEST.MASK_AUG, cfg.TEST.KPS_AUG
        scale, max_size = cfg.TEST.SCALE, cfg.TEST.MAX_SIZE
        self.passes = {"box": augmentations(cfg.TEST.BBOX_AUG, scale, max_size),
                       "mask": augmentations(cfg.TEST.MASK_AUG, scale, max_size),
                       "keypoint": augmentations(cfg.TEST.KPS_AUG, scale, max_size)}
        if not self.box_aug.ENABLED:
            self.passes["box"] = self.passes["box"][:1]
        self.flip_perm = None
        if (self.kps_aug.ENABLED and model.keypoint_heads is not None
                and any(a.hflip for a in self.passes["keypoint"])):
            self.flip_perm = keypoint_flip_perm_from_config(cfg)

    @torch.no_grad()
    def forward(self, images, scales=None, proposals=None, original_sizes=None):
        """images: [(3, H, W)] original BGR images; proposals: [Instances(boxes)] in their
        pixels, for models without RPN. Returns [Instances] as the detector does."""
        if scales is not None:
            raise ValueError("test-time augmentation resizes the original images itself; "
                             "build the test loader with resize=False")
        proposals = proposals or [None] * len(images)
        return [self.detect(image_array(image), image.device,
                            None if p is None else p.boxes.cpu())
                for image, p in zip(images, proposals)]

    def detect(self, image_bgr, device, proposals=None):
        """Detections of one (H, W, 3) uint8 BGR image, the model run on ``device``;
        proposals: Boxes (P, 4) in the image's pixels."""
        model, box_aug = self.model, self.box_aug
        height, width = image_bgr.shape[:2]
        predictions = []
        identity = None  # the first pass; its features serve the instance heads
        for aug in self.passes["box"]:
            p = _Pass(model, image_bgr, aug, device)
            identity = identity or p
            scores, boxes = self._predict_boxes(p, aug, width, proposals)
            if box_aug.SCALE_SIZE_DEP:
                scores = drop_by_size(scores, boxes, aug.size_tag, box_aug.AREA_TH_LO,
                                      box_aug.AREA_TH_HI)
            predictions.append((scores, boxes))
        scores, boxes = combine_box_predictions(predictions, box_aug.SCORE_HEUR, box_aug.COORD_HEUR)
        detections = self._instance_heads(identity, model.roi_heads.postprocess(scores, boxes,
                                                                                (height, width)))
        if self.mask_aug.ENABLED and detections.has("mask_probs") and len(detections):
            detections.mask_probs = self._augmented_masks(image_bgr, detections, device)
        if self.kps_aug.ENABLED and detections.has("keypoints") and len(detections):
            detections.keypoints, detections.keypoint_probs = self._augmented_keypoints(
                image_bgr, detections, identity, device)
        if detections.has("mask_probs"):
            detections.masks = model.io.paste_masks(detections, (height, width))
        return detections

    def _predict_boxes(self, p, aug, width, proposals):
        """(scores (R, K+1), class Boxes (R, 4C)) of one pass, in the original image."""
        model = self.model
        if model.rpn is not None:
            rois, _ = model.rpn([p.image_size], p.features, [p.scale])
        elif proposals is None:
            raise ValueError("a model without RPN needs precomputed proposals")
        else:
            boxes = map_boxes(proposals.to(torch.float32), aug, width)
            rois = [Instances(p.image_size, boxes=(boxes * p.scale).to(p.device))]
        ((scores, boxes),) = model.roi_heads.predict_boxes(p.features, rois)
        return scores, map_boxes(boxes / p.scale, aug, width, inverse=True)

    def _instance_heads(self, p, detections):
        """The detections (original-image pixels) with the fields every instance head of the
        detector adds, run on the identity pass."""
        resized = detections[:]
        resized.boxes = detections.boxes * p.scale
        resized = [resized]
        for name in self.model.instance_head_names:
            resized, _ = getattr(self.model, name)(p.features, resized, None, [p.scale])
        out = resized[0][:]
        out.boxes = detections.boxes
        return out

    def _moved_pass(self, image_bgr, detections, aug, device):
        """(pass, the detections' boxes in that pass's resized image)."""
        p = _Pass(self.model, image_bgr, aug, device)
        boxes = map_boxes(detections.boxes, aug, image_bgr.shape[1])
        return p, boxes * p.scale

    def _augmented_masks(self, image_bgr, detections, device):
        """Soft masks (N, M, M) of ``detections`` combined over the TEST.MASK_AUG passes."""
        passes = self.passes["mask"]
        heads = self.model.mask_heads
        masks = [detections.mask_probs]  # the identity pass, already computed
        for aug in passes[1:]:
            p, boxes = self._moved_pass(image_bgr, detections, aug, device)
            moved = Instances(p.image_size, boxes=boxes, classes=detections.classes)
            (out,), _ = heads(p.features, [moved])
            masks.append(out.mask_probs.flip(-1) if aug.hflip else out.mask_probs)
        use = None
        if self.mask_aug.SCALE_SIZE_DEP:
            use = size_dependent_use([a.size_tag for a in passes],
                                     detections.boxes.area(), self.mask_aug.AREA_TH)
        return combine_soft_masks(torch.stack(masks), self.mask_aug.HEUR, use)

    def _augmented_keypoints(self, image_bgr, detections, identity, device):
        """(keypoints (N, K, 3), probs (N, K)) of ``detections`` decoded from their heatmap
        logits combined over the TEST.KPS_AUG passes (Detectron's im_detect_keypoints_aug)."""
        passes = self.passes["keypoint"]
        heads = self.model.keypoint_heads
        all_heatmaps = [heads.heatmap_logits(identity.features, [detections.boxes * identity.scale])]
        for aug in passes[1:]:
            p, boxes = self._moved_pass(image_bgr, detections, aug, device)
            heatmaps = heads.heatmap_logits(p.features, [boxes])
            all_heatmaps.append(flip_heatmaps(heatmaps, self.flip_perm) if aug.hflip else heatmaps)
        use = None
        if self.kps_aug.SCALE_SIZE_DEP:
            use = size_dependent_use([a.size_tag for a in passes],
                                     detections.boxes.area(), self.kps_aug.AREA_TH)
        combined = combine_heatmaps(torch.stack(all_heatmaps), self.kps_aug.HEUR, use)
        return heatmaps_to_keypoints(combined, detections.boxes.tensor, heads.inference_min_size,
                                     heads.normalized_scores)
