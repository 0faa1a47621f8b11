"""Fast R-CNN: RoI minibatch sampling, class scores and class-specific box deltas, losses and
test-time post-processing (Detectron's fast_rcnn_heads outputs/losses, roi_data/fast_rcnn.py
and test.py box_results_with_nms_and_limit).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron_lib.modeling.backbone.build import build_roi_box_head
from detectron_lib.modeling.poolers import roi_feature_names, roi_pooler_from_config
from detectron_lib.modeling.postprocess import box_voting_from_config, class_wise_nms, soft_nms_from_config
from detectron_lib.modeling.sampling import Matcher, sample_labels
from detectron_lib.structures.boxes import BoxCoder, Boxes
from detectron_lib.structures.instances import Instances


class FastRCNNPredictor(nn.Module):
    """cls_score (num_classes incl. background) and bbox_pred (4 per class, or 4 x 2 when
    class-agnostic, as Detectron's CLS_AGNOSTIC_BBOX_REG)."""

    def __init__(self, in_dim, num_classes, cls_agnostic_bbox_reg=False):
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes)
        self.bbox_pred = nn.Linear(in_dim, 4 * (2 if cls_agnostic_bbox_reg else num_classes))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)


def sample_rois(proposals, gt_instances, matcher, batch_size_per_image, fg_fraction, box_coder,
                generators=None, bbox_thresh=None):
    """Detectron's RoI minibatch: proposals plus the ground-truth boxes, labeled and sampled.

    proposals: [Instances(boxes)], gt_instances: [Instances(boxes, classes)] (Boxes of one
    convention, whose IoU labels the RoIs), generators:
    [torch.Generator] per image (or None). bbox_thresh: TRAIN.BBOX_THRESH, Detectron's
    compute_bbox_regression_targets: every sampled RoI whose best IoU is >= it, fg or bg,
    regresses onto its matched box, on that box's class (None: the fg RoIs do).
    Returns [Instances(boxes, classes (0 = background), regression_targets (R, 4),
    regression_classes (R,) (the class whose deltas are trained, 0 = none), matched_gt (R,))],
    fg first.
    """
    sampled = []
    generators = generators or [None] * len(proposals)
    for props, gt, generator in zip(proposals, gt_instances, generators):
        boxes = Boxes.cat([props.boxes, gt.boxes.to(props.boxes.dtype)])
        iou = gt.boxes.iou(boxes)
        matched, labels = matcher(iou)
        fg, bg = sample_labels(labels, batch_size_per_image, fg_fraction, generator)
        keep = torch.cat([fg, bg])
        classes = torch.zeros(len(keep), dtype=torch.int64, device=boxes.device)
        regression_classes = torch.zeros_like(classes)
        targets = torch.zeros((len(keep), 4), dtype=boxes.dtype, device=boxes.device)
        if len(gt) and keep.numel():
            matched_classes = gt.classes[matched[keep]].to(classes.dtype)
            classes[: len(fg)] = matched_classes[: len(fg)]
            if bbox_thresh is None:
                regress = torch.arange(len(keep), device=boxes.device) < len(fg)
            else:
                regress = iou.max(dim=0).values[keep] >= bbox_thresh
            regression_classes = torch.where(regress, matched_classes, regression_classes)
            rows = keep[regress]
            if rows.numel():
                targets[regress] = box_coder.encode(boxes[rows],
                                                    gt.boxes[matched[rows]].to(boxes.dtype))
        sampled.append(Instances(props.image_size, boxes=boxes[keep], classes=classes,
                                 regression_targets=targets, regression_classes=regression_classes,
                                 matched_gt=matched[keep]))
    return sampled


def unique_boxes(boxes, scale):
    """Detectron's DEDUP_BOXES: which of ``boxes`` ((N, 4) tensor) coincide once multiplied by ``scale``
    (1/16: the cells of a stride-16 feature map) and rounded (half to even, as numpy).

    Returns (first (U,) int64: the first box of each distinct group, inverse (N,) int64: the
    group of each box), so that ``boxes[first][inverse]`` gives every box its group's first.
    """
    if len(boxes) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty
    _, inverse = torch.unique(torch.round(boxes * scale), dim=0, return_inverse=True)
    order = torch.arange(len(boxes), device=boxes.device)
    first = order.new_full((int(inverse.max()) + 1,), len(boxes))
    return first.scatter_reduce_(0, inverse, order, "amin"), inverse


def fast_rcnn_losses(cls_logits, box_deltas, classes, regression_targets, smooth_l1_beta=1.0,
                     regression_classes=None):
    """Softmax cross-entropy over sampled RoIs, and smooth L1 on the deltas of each RoI's
    regression class summed and divided by the number of RoIs (Caffe2's SmoothL1Loss
    normalization).

    cls_logits: (R, K+1). box_deltas: (R, 4(K+1)) or (R, 8) class-agnostic. classes: (R,).
    regression_classes: (R,), 0 where no deltas are trained (sample_rois; None: ``classes``,
    i.e. the fg RoIs on their own class).
    """
    loss_cls = F.cross_entropy(cls_logits, classes)
    if regression_classes is None:
        regression_classes = classes
    rows = torch.nonzero(regression_classes > 0).flatten()
    num_cols = box_deltas.shape[1] // 4
    cols = regression_classes[rows] if num_cols > 2 else torch.ones_like(regression_classes[rows])
    deltas = box_deltas.view(len(box_deltas), num_cols, 4)[rows, cols]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[rows], beta=smooth_l1_beta,
                                reduction="sum") / max(len(classes), 1)
    return {"loss_cls": loss_cls, "loss_bbox": loss_box}


def box_results_with_nms_and_limit(scores, boxes, image_size, score_thresh, nms_thresh,
                                   detections_per_image, soft_nms=None, box_voting=None):
    """Per-class thresholding and NMS (or soft-NMS, then box voting when given: see
    modeling.postprocess), then the top ``detections_per_image`` over classes; IoUs and empty
    boxes in the boxes' convention.

    scores: (R, K+1) softmax probabilities. boxes: Boxes (R, 4(K+1)) decoded and clipped.
    soft_nms: postprocess.SoftNMS or None; box_voting: postprocess.BoxVoting or None.
    Returns Instances(boxes, scores, classes) with classes in 1..K.
    """
    num_classes = scores.shape[1]
    per_class = boxes.tensor.unflatten(1, (-1, 4))
    if per_class.shape[1] == 2:  # class-agnostic regression: one box for every foreground class
        per_class = per_class[:, 1:2].expand(-1, num_classes - 1, 4)
    else:
        per_class = per_class[:, 1:]
    scores = scores[:, 1:]
    candidates = torch.nonzero(scores > score_thresh)
    roi_idx, cls_idx = candidates[:, 0], candidates[:, 1]
    det_boxes = boxes.like(per_class[roi_idx, cls_idx])
    det_scores = scores[roi_idx, cls_idx]
    keep = det_boxes.nonempty()
    det_boxes, det_scores, cls_idx = det_boxes[keep], det_scores[keep], cls_idx[keep]
    det_boxes, det_scores, cls_idx = class_wise_nms(
        det_boxes, det_scores, cls_idx, nms_thresh, soft_nms, box_voting, detections_per_image)
    return Instances(image_size, boxes=det_boxes, scores=det_scores, classes=cls_idx + 1)


class BoxROIHeads(nn.Module):
    """Pooler -> box head -> predictor; samples RoIs and returns losses when given targets.

    pooler: RoIPooler. box_head: a module with ``out_dim`` (MLPHead, ConvFCHead, or the
    res5 / VGG fc heads of the backbone). in_features: feature names to pool from.
    soft_nms / box_voting: the test-time options of modeling.postprocess (None: off).
    bbox_thresh: TRAIN.BBOX_THRESH (see sample_rois; None: the fg RoIs regress). bbox_reg:
    TEST.BBOX_REG (False: the proposals are every class's boxes). dedup_boxes: DEDUP_BOXES
    for precomputed proposals, 0 otherwise (see predict_boxes).
    """

    def __init__(self, pooler, box_head, predictor, in_features, *, matcher, batch_size_per_image,
                 fg_fraction, box_coder, score_thresh, nms_thresh, detections_per_image,
                 soft_nms=None, box_voting=None, bbox_thresh=None, bbox_reg=True,
                 dedup_boxes=0.0):
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.in_features = list(in_features)
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.fg_fraction = fg_fraction
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.soft_nms = soft_nms
        self.box_voting = box_voting
        self.bbox_thresh = bbox_thresh
        self.bbox_reg = bbox_reg
        self.dedup_boxes = dedup_boxes

    def box_features(self, features, boxes_per_image):
        pooled = self.pooler([features[f] for f in self.in_features], boxes_per_image)
        return self.box_head(pooled)

    def predict(self, features, boxes_per_image):
        """(cls_logits (R, K+1), box_deltas (R, 4(K+1)) or (R, 8)) for the concatenated boxes."""
        return self.predictor(self.box_features(features, boxes_per_image))

    def forward(self, features, proposals, gt_instances=None, generators=None):
        """Training: (sampled RoIs, losses). Inference: ([Instances(boxes, scores, classes)], {})."""
        if gt_instances is not None:
            rois = sample_rois(proposals, gt_instances, self.matcher, self.batch_size_per_image,
                               self.fg_fraction, self.box_coder, generators, self.bbox_thresh)
            cls_logits, deltas = self.predict(features, [r.boxes for r in rois])
            losses = fast_rcnn_losses(
                cls_logits, deltas, torch.cat([r.classes for r in rois]),
                torch.cat([r.regression_targets for r in rois]),
                regression_classes=torch.cat([r.regression_classes for r in rois]))
            return rois, losses
        return self.inference(features, proposals), {}

    @torch.no_grad()
    def inference(self, features, proposals):
        return [self.postprocess(scores, boxes, props.image_size)
                for (scores, boxes), props in zip(self.predict_boxes(features, proposals), proposals)]

    @torch.no_grad()
    def predict_boxes(self, features, proposals):
        """Per image, before NMS: (scores (R, K+1) softmax probabilities, Boxes (R, 4(K+1)) or
        (R, 8) class-agnostic, decoded and clipped, in the pixels of the proposals' image).

        Detectron's im_detect_bbox: with ``dedup_boxes`` > 0, proposals that coincide after
        scaling by it and rounding (unique_boxes) are run once, and each takes the scores and
        decoded boxes of its group's first; with ``bbox_reg`` False the proposals themselves
        are every class's boxes.
        """
        boxes_per_image = [p.boxes for p in proposals]
        groups = [None] * len(proposals)
        if self.dedup_boxes > 0:
            groups = [unique_boxes(boxes.tensor, self.dedup_boxes) for boxes in boxes_per_image]
            boxes_per_image = [boxes[first] for boxes, (first, _) in zip(boxes_per_image, groups)]
        cls_logits, deltas = self.predict(features, boxes_per_image)
        scores = F.softmax(cls_logits, dim=1)
        results = []
        start = 0
        for rois, props, group in zip(boxes_per_image, proposals, groups):
            n = rois.tensor.shape[0]  # not len(): the ONNX export traces this count
            h, w = props.image_size
            image_scores, image_deltas = scores[start:start + n], deltas[start:start + n]
            if self.bbox_reg:
                boxes = self.box_coder.decode(image_deltas, rois).clip(h, w)
            else:
                boxes = rois.like(rois.tensor.repeat(1, image_deltas.shape[1] // 4))
            if group is not None:
                image_scores, boxes = image_scores[group[1]], boxes[group[1]]
            results.append((image_scores, boxes))
            start += n
        return results

    def postprocess(self, scores, boxes, image_size):
        """Detections of one image from predict_boxes' (scores, boxes): thresholding, NMS or
        soft-NMS, box voting and the limit. Returns Instances(boxes, scores, classes)."""
        return box_results_with_nms_and_limit(
            scores, boxes, image_size, self.score_thresh, self.nms_thresh,
            self.detections_per_image, self.soft_nms, self.box_voting)


def build_fast_rcnn_matcher(fg_thresh, bg_thresh_hi, bg_thresh_lo):
    """Detectron's RoI labels: fg IoU >= FG_THRESH, bg in [BG_THRESH_LO, BG_THRESH_HI)."""
    return Matcher(fg_thresh, bg_thresh_hi, bg_thresh_lo)


def build_box_roi_heads(cfg, backbone):
    """Fast R-CNN heads pooling from FPN levels ROI_MIN_LEVEL..ROI_MAX_LEVEL or the single map."""
    in_features = roi_feature_names(cfg, backbone.out_channels)
    in_channels = backbone.out_channels[in_features[0]]
    box_head = build_roi_box_head(cfg, in_channels)
    # The VGG16 fc head fixes its own input resolution (Detectron pooled it at 7x7).
    pooler = roi_pooler_from_config(cfg, cfg.FAST_RCNN, [backbone.strides[name] for name in in_features],
                                    resolution=getattr(box_head, "resolution", None))
    options = box_roi_head_options(cfg)
    return BoxROIHeads(
        pooler, box_head,
        FastRCNNPredictor(box_head.out_dim, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG),
        in_features, **options)


def box_roi_head_options(cfg):
    """BoxROIHeads' keyword arguments: RoI sampling (TRAIN.*), box coding, post-processing."""
    t, s = cfg.TRAIN, cfg.TEST
    return dict(
        matcher=build_fast_rcnn_matcher(t.FG_THRESH, t.BG_THRESH_HI, t.BG_THRESH_LO),
        batch_size_per_image=t.BATCH_SIZE_PER_IM,
        fg_fraction=t.FG_FRACTION,
        box_coder=BoxCoder(cfg.MODEL.BBOX_REG_WEIGHTS, cfg.BBOX_XFORM_CLIP),
        score_thresh=s.SCORE_THRESH,
        nms_thresh=s.NMS,
        detections_per_image=s.DETECTIONS_PER_IM,
        soft_nms=soft_nms_from_config(cfg),
        box_voting=box_voting_from_config(cfg),
        bbox_thresh=t.BBOX_THRESH,
        bbox_reg=s.BBOX_REG,
        dedup_boxes=0.0 if cfg.RPN.RPN_ON else cfg.DEDUP_BOXES,  # precomputed proposals only
    )
