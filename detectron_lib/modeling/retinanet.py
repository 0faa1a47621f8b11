"""RetinaNet (MODEL.TYPE retinanet): one-stage dense detection on FPN levels (Lin et al. 2017;
Detectron's retinanet_heads.py, roi_data/retinanet.py and core/test_retinanet.py).

backbone (FPN, FPN.EXTRA_CONV_LEVELS for P6/P7) -> RetinaNetHead on each level
FPN.RPN_MIN_LEVEL..RPN_MAX_LEVEL -> per anchor, K class logits and box deltas.

Training targets, per image, over the anchors of every level (none is dropped for crossing
the image border, as in Detectron):
  - foreground: IoU >= RETINANET.POSITIVE_OVERLAP with its best ground-truth box, or the anchor
    (ties included) of highest IoU with some ground-truth box;
  - background: IoU < NEGATIVE_OVERLAP, which wins over the rule above as in Detectron (a box
    whose best anchor overlaps it less than NEGATIVE_OVERLAP gets no foreground anchor);
  - ignored otherwise.
Losses: sigmoid focal loss (LOSS_GAMMA, LOSS_ALPHA) over the K classes of every non-ignored
anchor (softmax focal loss over K + 1 with RETINANET.SOFTMAX), and smooth L1 (BBOX_REG_BETA,
times BBOX_REG_WEIGHT) on the foreground anchors' deltas (box-coder weights 1, 1, 1, 1). Both
are summed and divided by the number of foreground anchors plus one per image (Detectron's
retnet_fg_num).

Inference per image: on each level the PRE_NMS_TOP_N best (anchor, class) scores above
INFERENCE_TH (0 on the coarsest level, as Detectron, so that some candidates always exist;
every level with RETINANET.THRESH_ALL_LEVELS, as detectron2), decoded (TEST.BBOX_REG) and
clipped; over all levels, class-wise NMS (TEST.NMS) or soft-NMS (TEST.SOFT_NMS), box voting
when TEST.BBOX_VOTE is on, and the best TEST.DETECTIONS_PER_IM. With
RETINANET.CLIP_AFTER_NMS the boxes are clipped after NMS instead and the empty ones dropped,
as detectron2 does.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.anchors import AnchorGenerator, feature_map_sizes, retinanet_anchor_specs
from detectron_lib.modeling.backbone.build import body_features, build_backbone, group_norm_spec
from detectron_lib.modeling.backbone.layers import Conv2dNorm
from detectron_lib.modeling.backbone.precision import run_in_precision
from detectron_lib.modeling.image_io import detector_io_from_config
from detectron_lib.modeling.postprocess import (
    box_voting_from_config,
    class_wise_nms,
    soft_nms_from_config,
    topk_size,
)
from detectron_lib.structures.boxes import BoxCoder, BoxConvention, Boxes
from detectron_lib.structures.instances import Instances


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Element-wise sigmoid focal loss, as Caffe2's SigmoidFocalLoss before normalization.

    logits, targets: same shape; targets 1 (positive) or 0 (negative). With p = sigmoid(logit):
    positives cost -alpha (1 - p)^gamma log p, negatives -(1 - alpha) p^gamma log(1 - p).
    Returns a tensor of the logits' shape.
    """
    p = torch.sigmoid(logits)
    positive = -alpha * (1 - p).pow(gamma) * F.logsigmoid(logits)
    negative = -(1 - alpha) * p.pow(gamma) * F.logsigmoid(-logits)
    return targets * positive + (1 - targets) * negative


def softmax_focal_loss(logits, labels, alpha=0.25, gamma=2.0):
    """Per-row softmax focal loss, as Caffe2's SoftmaxFocalLoss before normalization.

    logits: (M, K + 1), column 0 background. labels: (M,) int in 0..K. With p the softmax
    probability of the row's label: -a (1 - p)^gamma log p, a = alpha for foreground rows and
    1 - alpha for background rows. Returns (M,).
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    weight = torch.where(labels > 0, alpha, 1.0 - alpha)
    return -weight * (1 - log_p.exp()).pow(gamma) * log_p


class RetinaNetHead(nn.Module):
    """Class and box towers whose weights every level shares (Detectron's ConvShared).

    Per level: ``num_convs`` 3x3 convs with ReLU, then a 3x3 predictor conv. Weights are
    GaussianFill(0.01), biases 0 except the class predictor's, set so that every anchor starts
    with foreground probability ``prior_prob`` (RETINANET.PRIOR_PROB). ``tower_norm`` (a NormSpec;
    RETINANET.USE_GN) puts a norm after every tower conv, one set of norm weights shared by the
    levels like the convs: with narrow towers (FPN.DIM 64) the 0.01-std convs otherwise shrink
    the signal ~6x per layer and a short schedule never trains them. Layers carry Detectron's
    blob names (retnet_cls_conv_n0_fpn3, ..., named after the finest level ``min_level``).

    Args: in_channels (FPN.DIM); num_anchors A per location; num_classes K, foreground classes;
    class_specific_bbox: 4K deltas per anchor instead of 4 (RETINANET.CLASS_SPECIFIC_BBOX);
    share_tower: the box predictor reads the class tower (SHARE_CLS_BBOX_TOWER); softmax: K + 1
    logits per anchor, index 0 background (RETINANET.SOFTMAX); tower_conv_bias: the tower convs
    keep a bias before their norm (RETINANET.TOWER_CONV_BIAS, detectron2's GN head);
    precision: MODEL.HEAD_PRECISION of the towers (the predictors run in float32).

    forward([(N, in_channels, H, W)] per level) -> (class logits [(N, A * C, H, W)], deltas
    [(N, A * B, H, W)]), C = K (K + 1 with softmax), B = 4 (4K class-specific), channels
    grouped by anchor: (A, C) and (A, B) as Detectron laid them out.
    """

    def __init__(self, in_channels, num_anchors, num_classes, num_convs=4, prior_prob=0.01,
                 class_specific_bbox=False, share_tower=False, softmax=False, min_level=3,
                 tower_norm=None, tower_conv_bias=False, precision="float32"):
        super().__init__()
        self.precision = precision
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.softmax = softmax
        self.cls_dim = num_classes + 1 if softmax else num_classes
        self.box_dim = 4 * num_classes if class_specific_bbox else 4

        def conv(out_channels, name, norm=None):
            return Conv2dNorm(in_channels, out_channels, 3, padding=1, weight_fill="GaussianFill",
                              norm=norm, bias=True if tower_conv_bias else None,
                              detectron_name=f"retnet_{name}_fpn{min_level}")

        self.cls_tower = nn.ModuleList(
            conv(in_channels, f"cls_conv_n{i}", tower_norm) for i in range(num_convs))
        self.box_tower = None if share_tower else nn.ModuleList(
            conv(in_channels, f"bbox_conv_n{i}", tower_norm) for i in range(num_convs))
        self.cls_pred = conv(num_anchors * self.cls_dim, "cls_pred")
        self.box_pred = conv(num_anchors * self.box_dim, "bbox_pred")
        with torch.no_grad():
            bias = self.cls_pred.bias.view(num_anchors, self.cls_dim)
            if softmax:  # background starts at 1 - prior, each class at prior / K
                bias.zero_()
                bias[:, 0] = math.log(num_classes * (1 - prior_prob) / prior_prob)
            else:
                bias.fill_(-math.log((1 - prior_prob) / prior_prob))

    def forward(self, features):
        cls_logits, box_deltas = [], []
        for x in features:
            cls_x = run_in_precision(self.precision, partial(_relu_tower, self.cls_tower), x)
            box_x = cls_x if self.box_tower is None else run_in_precision(
                self.precision, partial(_relu_tower, self.box_tower), x)
            cls_logits.append(self.cls_pred(cls_x))
            box_deltas.append(self.box_pred(box_x))
        return cls_logits, box_deltas


def _relu_tower(layers, x):
    """A RetinaNet tower: every layer followed by ReLU."""
    for layer in layers:
        x = F.relu(layer(x))
    return x


def flatten_anchor_maps(maps, dim):
    """[(N, A * dim, H, W)] per level -> [(N, H * W * A, dim)], ordered (y, x, anchor) like
    ``grid_anchors``."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.view(n, -1, dim, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, dim))
    return out


@torch.no_grad()
def retinanet_anchor_labels(anchors, gt_boxes, gt_classes, positive_overlap, negative_overlap):
    """Detectron's RetinaNet assignment of one image's anchors (see the module docstring).

    anchors: Boxes (R, 4); gt_boxes: Boxes (G, 4), IoUs in their convention; gt_classes: (G,)
    in 1..K. Returns labels (R,) int64 (class of the matched box, 0 background, -1 ignored)
    and the matched box of each anchor, an (R, 4) tensor (meaningful where labels > 0).
    """
    if len(gt_boxes) == 0:
        return (torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device),
                torch.zeros_like(anchors.tensor))
    iou = gt_boxes.iou(anchors)
    max_iou, matched = iou.max(dim=0)
    best_for_gt = iou.max(dim=1, keepdim=True).values
    # A box no anchor touches (best IoU 0) has no best anchor.
    is_best = ((iou == best_for_gt) & (best_for_gt > 0)).any(dim=0)
    fg = (max_iou >= positive_overlap) | is_best
    labels = torch.where(fg, gt_classes[matched].to(torch.int64), -1)
    labels[max_iou < negative_overlap] = 0
    return labels, gt_boxes.tensor[matched]


def retinanet_losses(cls_logits, box_deltas, labels, box_targets, *, alpha, gamma, softmax,
                     bbox_reg_beta, bbox_reg_weight):
    """Focal loss and smooth-L1 box loss of a batch, divided by Detectron's retnet_fg_num.

    cls_logits: (N, R, C); box_deltas: (N, R, 4) or (N, R, 4K) class-specific; labels: (N, R)
    in -1..K; box_targets: (M, 4), the deltas of the M foreground anchors (labels > 0) in
    (image, anchor) order.
    """
    fg = labels > 0
    valid = labels >= 0
    normalizer = fg.sum() + len(labels)  # foreground anchors + 1 per image
    if softmax:
        loss_cls = softmax_focal_loss(cls_logits[valid], labels[valid], alpha, gamma).sum()
    else:
        one_hot = F.one_hot(labels[valid], cls_logits.shape[-1] + 1)[:, 1:]
        loss_cls = sigmoid_focal_loss(cls_logits[valid], one_hot.to(cls_logits.dtype),
                                      alpha, gamma).sum()
    deltas = box_deltas[fg]
    if deltas.shape[1] > 4:  # class-specific: the deltas of the anchor's own class
        deltas = deltas.view(len(deltas), deltas.shape[1] // 4, 4)[
            torch.arange(len(deltas)), labels[fg] - 1]
    loss_box = F.smooth_l1_loss(deltas, box_targets, beta=bbox_reg_beta, reduction="sum")
    return {"loss_retnet_cls": loss_cls / normalizer,
            "loss_retnet_bbox": bbox_reg_weight * loss_box / normalizer}


class RetinaNet(nn.Module):
    """backbone -> RetinaNetHead on ``in_features`` -> losses, or detections per image.

    Args: anchor_generator: AnchorGenerator over the ``in_features`` levels, cell anchors in
    the head's channel order. box_coder: BoxCoder with weights (1, 1, 1, 1). Training:
    positive_overlap / negative_overlap, focal_alpha / focal_gamma, bbox_reg_beta /
    bbox_reg_weight (RETINANET.*). Inference: score_thresh (INFERENCE_TH), pre_nms_topk
    (PRE_NMS_TOP_N, per level), nms_thresh (TEST.NMS), soft_nms / box_voting
    (modeling.postprocess options, None: off), detections_per_image (TEST.DETECTIONS_PER_IM),
    bbox_reg (TEST.BBOX_REG: False keeps the anchors as boxes), thresh_all_levels,
    clip_after_nms (RETINANET.THRESH_ALL_LEVELS, CLIP_AFTER_NMS: detectron2's order, see the
    module docstring). body_precision: MODEL.BODY_PRECISION.
    """

    def __init__(self, io, backbone, head, anchor_generator, in_features, *, box_coder,
                 positive_overlap=0.5, negative_overlap=0.4, focal_alpha=0.25, focal_gamma=2.0,
                 bbox_reg_beta=0.11, bbox_reg_weight=1.0, score_thresh=0.05, pre_nms_topk=1000,
                 nms_thresh=0.5, soft_nms=None, box_voting=None, detections_per_image=100,
                 bbox_reg=True, thresh_all_levels=False, clip_after_nms=False,
                 body_precision="float32"):
        super().__init__()
        self.io = io
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = list(in_features)
        self.box_coder = box_coder
        self.positive_overlap = positive_overlap
        self.negative_overlap = negative_overlap
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.bbox_reg_beta = bbox_reg_beta
        self.bbox_reg_weight = bbox_reg_weight
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.soft_nms = soft_nms
        self.box_voting = box_voting
        self.detections_per_image = detections_per_image
        self.bbox_reg = bbox_reg
        self.thresh_all_levels = thresh_all_levels
        self.clip_after_nms = clip_after_nms
        self.body_precision = body_precision

    def forward(self, images, scales=None, targets=None, seeds=None, original_sizes=None):
        """Run the model on a list of images.

        images, scales, targets, original_sizes: as GeneralizedRCNN.forward takes them (the
        image contract is the io's, modeling.image_io). seeds: accepted for the trainer's
        sake; RetinaNet samples nothing.

        Training: {"loss_retnet_cls", "loss_retnet_bbox"}. Inference: [Instances(boxes,
        scores, classes)] per image, boxes in original-image pixels, classes in 1..K.
        """
        batch, image_sizes, scales, original_sizes = self.io.prepare(
            images, scales, original_sizes, training=targets is not None)
        features = body_features(self.backbone, batch, self.body_precision)
        anchors, cls_logits, box_deltas = self.predict(features)
        if targets is not None:
            return self.losses(Boxes.cat(anchors), torch.cat(cls_logits, dim=1),
                               torch.cat(box_deltas, dim=1), targets)
        detections = self.detect(anchors, cls_logits, box_deltas, image_sizes)
        return self.io.postprocess(detections, scales, original_sizes)

    def predict(self, features):
        """The head on the body's features: per level, anchors [Boxes (R_l, 4)], logits
        [(N, R_l, C)] and deltas [(N, R_l, B)]."""
        maps = [features[name] for name in self.in_features]
        cls_maps, box_maps = self.head(maps)
        anchors = self.anchor_generator(feature_map_sizes(maps), maps[0].device)
        return (anchors, flatten_anchor_maps(cls_maps, self.head.cls_dim),
                flatten_anchor_maps(box_maps, self.head.box_dim))

    def losses(self, anchors, cls_logits, box_deltas, targets):
        """anchors: Boxes (R, 4); cls_logits: (N, R, C); box_deltas: (N, R, B); targets per
        image."""
        labels, matched = [], []
        for gt in targets:
            image_labels, image_matched = retinanet_anchor_labels(
                anchors, gt.boxes, gt.classes, self.positive_overlap, self.negative_overlap)
            labels.append(image_labels)
            matched.append(image_matched)
        labels = torch.stack(labels)
        fg_image, fg_anchor = torch.nonzero(labels > 0, as_tuple=True)
        box_targets = self.box_coder.encode(
            anchors[fg_anchor], anchors.like(torch.stack(matched)[fg_image, fg_anchor]))
        return retinanet_losses(
            cls_logits, box_deltas, labels, box_targets, alpha=self.focal_alpha,
            gamma=self.focal_gamma, softmax=self.head.softmax, bbox_reg_beta=self.bbox_reg_beta,
            bbox_reg_weight=self.bbox_reg_weight)

    @torch.no_grad()
    def detect(self, anchors, cls_logits, box_deltas, image_sizes):
        """Per-level anchors [Boxes (R_l, 4)], logits [(N, R_l, C)], deltas [(N, R_l, B)] ->
        [Instances] per image in resized-image pixels (see the module docstring)."""
        results = []
        for i, (h, w) in enumerate(image_sizes):
            candidates = [
                self._level_candidates(level_anchors, logits[i], deltas[i],
                                       self.score_thresh
                                       if self.thresh_all_levels or level + 1 < len(anchors) else 0.0)
                for level, (level_anchors, logits, deltas)
                in enumerate(zip(anchors, cls_logits, box_deltas))
            ]
            level_boxes, level_scores, level_classes = zip(*candidates)
            boxes = Boxes.cat(level_boxes)
            scores, classes = torch.cat(level_scores), torch.cat(level_classes)
            if not self.clip_after_nms:
                boxes = boxes.clip(h, w)
            boxes, scores, classes = class_wise_nms(
                boxes, scores, classes, self.nms_thresh, self.soft_nms, self.box_voting,
                self.detections_per_image)
            detections = Instances((h, w), boxes=boxes, scores=scores, classes=classes + 1)
            if self.clip_after_nms:
                detections.boxes = boxes.clip(h, w)
                detections = detections[detections.boxes.nonempty()]
            results.append(detections)
        return results

    def _level_candidates(self, anchors, logits, deltas, score_thresh):
        """One image, one level: anchors (Boxes), logits (R, C), deltas (R, B) -> the best
        pre_nms_topk (Boxes (k, 4), scores (k,), classes (k,) in 0..K-1) scoring above score_thresh."""
        if self.head.softmax:
            probs = F.softmax(logits, dim=1)[:, 1:]
        else:
            probs = torch.sigmoid(logits)
        num_classes = probs.shape[1]
        flat = probs.flatten()
        candidates = torch.nonzero(flat > score_thresh).flatten()
        scores, order = flat[candidates].topk(topk_size(candidates, self.pre_nms_topk))
        chosen = candidates[order]
        anchor_idx = chosen // num_classes
        classes = chosen % num_classes
        boxes = anchors[anchor_idx]
        if self.bbox_reg:
            chosen_deltas = deltas[anchor_idx]
            if chosen_deltas.shape[1] > 4:
                chosen_deltas = chosen_deltas.view(len(chosen), num_classes, 4)[
                    torch.arange(chosen.shape[0]), classes]
            boxes = self.box_coder.decode(chosen_deltas, boxes)
        return boxes, scores, classes


def build_retinanet(cfg):
    """RetinaNet from RETINANET.*, its levels FPN.RPN_MIN_LEVEL..RPN_MAX_LEVEL."""
    r = cfg.RETINANET
    if not r.RETINANET_ON:
        raise ConfigError("MODEL.TYPE retinanet needs RETINANET.RETINANET_ON: True (as in "
                          "Detectron's RetinaNet configs)")
    if not cfg.FPN.FPN_ON:
        raise ConfigError("MODEL.TYPE retinanet needs an FPN body: set FPN.FPN_ON: True and an "
                          "FPN MODEL.CONV_BODY")
    backbone = build_backbone(cfg)
    min_level, max_level = cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL
    in_features = [f"p{level}" for level in range(min_level, max_level + 1)]
    missing = [name for name in in_features if name not in backbone.out_channels]
    if missing:
        raise ConfigError(
            f"RetinaNet predicts on P{min_level}-P{max_level} (FPN.RPN_MIN_LEVEL, RPN_MAX_LEVEL) "
            f"but the body gives {list(backbone.out_channels)}; set FPN.MULTILEVEL_RPN: True, "
            "and FPN.EXTRA_CONV_LEVELS: True for levels above P6")
    specs = retinanet_anchor_specs(min_level, max_level, r.SCALES_PER_OCTAVE, r.ANCHOR_SCALE,
                                   r.ASPECT_RATIOS, r.INTEGER_ANCHOR_SIZES)
    anchor_generator = AnchorGenerator(specs, BoxConvention.of(cfg),
                                       sizes_first=not r.RATIO_MAJOR_ANCHORS,
                                       round_to_pixels=cfg.MODEL.ROUND_ANCHORS)
    head = RetinaNetHead(
        backbone.out_channels[in_features[0]], anchor_generator.num_anchors[0],
        cfg.MODEL.NUM_CLASSES - 1, num_convs=r.NUM_CONVS, prior_prob=r.PRIOR_PROB,
        class_specific_bbox=r.CLASS_SPECIFIC_BBOX, share_tower=r.SHARE_CLS_BBOX_TOWER,
        softmax=r.SOFTMAX, min_level=min_level,
        tower_norm=group_norm_spec(cfg) if r.USE_GN else None, tower_conv_bias=r.TOWER_CONV_BIAS,
        precision=cfg.MODEL.HEAD_PRECISION)
    return RetinaNet(
        detector_io_from_config(cfg), backbone, head, anchor_generator, in_features,
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0), cfg.BBOX_XFORM_CLIP),
        positive_overlap=r.POSITIVE_OVERLAP, negative_overlap=r.NEGATIVE_OVERLAP,
        focal_alpha=r.LOSS_ALPHA, focal_gamma=r.LOSS_GAMMA,
        bbox_reg_beta=r.BBOX_REG_BETA, bbox_reg_weight=r.BBOX_REG_WEIGHT,
        score_thresh=r.INFERENCE_TH, pre_nms_topk=r.PRE_NMS_TOP_N, nms_thresh=cfg.TEST.NMS,
        soft_nms=soft_nms_from_config(cfg), box_voting=box_voting_from_config(cfg),
        detections_per_image=cfg.TEST.DETECTIONS_PER_IM, bbox_reg=cfg.TEST.BBOX_REG,
        thresh_all_levels=r.THRESH_ALL_LEVELS, clip_after_nms=r.CLIP_AFTER_NMS,
        body_precision=cfg.MODEL.BODY_PRECISION)
