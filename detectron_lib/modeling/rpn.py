"""Region Proposal Network (Detectron's rpn_heads / FPN RPN, GenerateProposals, rpn targets).

One head (3x3 conv + ReLU, then 1x1 objectness logits and 1x1 box deltas) is shared by every
feature level. Objectness uses a sigmoid per anchor, as Detectron's RPN.CLS_ACTIVATION
'sigmoid'. Training assigns anchors to ground truth (Matcher with low-quality matches),
samples RPN.BATCH_SIZE_PER_IM of them per image, and returns Detectron's losses: sigmoid
cross-entropy and smooth L1 (beta 1/9), both summed and divided by the number of sampled
anchors the batch was meant to have (BATCH_SIZE_PER_IM x images), as its FPN RPN did.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.anchors import (
    AnchorGenerator,
    feature_map_sizes,
    fpn_rpn_anchor_specs,
    straddle_mask,
)
from detectron_lib.modeling.backbone.precision import run_in_precision
from detectron_lib.modeling.poolers import feature_level_names
from detectron_lib.modeling.postprocess import topk_size
from detectron_lib.modeling.sampling import Matcher, sample_labels
from detectron_lib.structures.boxes import BoxCoder, BoxConvention, Boxes
from detectron_lib.structures.instances import Instances


class RPNHead(nn.Module):
    """Shared conv + objectness and box-delta predictors. Input and output are per-level lists.
    The conv runs in MODEL.HEAD_PRECISION ``precision``, the predictors in float32."""

    def __init__(self, in_channels, num_anchors, conv_channels=None, precision="float32"):
        super().__init__()
        self.precision = precision
        conv_channels = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(conv_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(conv_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)  # Detectron's GaussianFill(0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features):
        """features: [(N, C, H, W)]. Returns logits [(N, A, H, W)], deltas [(N, 4A, H, W)]."""
        logits, deltas = [], []
        for x in features:
            t = run_in_precision(self.precision, self._hidden, x)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas

    def _hidden(self, x):
        return F.relu(self.conv(x))


def flatten_level_outputs(logits, deltas):
    """(N, A, H, W), (N, 4A, H, W) -> (N, H*W*A), (N, H*W*A, 4), ordered (y, x, anchor)."""
    n, a, h, w = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(n, -1)
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return logits, deltas


class RPN(nn.Module):
    """Proposals from feature maps; with targets, also the RPN losses.

    Args:
        head: an RPNHead. anchor_generator: AnchorGenerator over the same levels as
        ``in_features``. pre_nms_topk / post_nms_topk: (train, test) pairs, per level.
        collect_topk: (train, test) proposals kept per image over all levels (FPN's
        collect step; equals post_nms_topk for one level). nms_thresh: (train, test).
        min_size: (train, test); proposals smaller than this (in original-image pixels, before
        resizing) are dropped, as RPN_MIN_SIZE. box_coder: deltas relative to anchors (unit
        weights). The anchors' box convention serves the IoUs, clipping and NMS.
    """

    def __init__(self, head, anchor_generator, in_features, *, matcher, batch_size_per_image,
                 fg_fraction, pre_nms_topk, post_nms_topk, collect_topk, nms_thresh, min_size,
                 straddle_thresh, box_coder=BoxCoder(), smooth_l1_beta=1.0 / 9):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = list(in_features)
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.fg_fraction = fg_fraction
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.collect_topk = collect_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.straddle_thresh = straddle_thresh
        self.smooth_l1_beta = smooth_l1_beta
        self.box_coder = box_coder

    def forward(self, image_sizes, features, scales, gt_instances=None, generators=None):
        """Propose boxes for a batch.

        image_sizes: [(h, w)] of the resized, unpadded images. features: dict name -> map.
        scales: [float] resize factor of each image (for MIN_SIZE). gt_instances: [Instances
        with ``boxes``] when training; generators: [torch.Generator] per image for sampling.
        Returns ([Instances(boxes, objectness_logits)], losses).
        """
        maps = [features[name] for name in self.in_features]
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator(feature_map_sizes(maps), maps[0].device)
        flat = [flatten_level_outputs(lg, dl) for lg, dl in zip(logits, deltas)]
        level_logits = [f[0] for f in flat]
        level_deltas = [f[1] for f in flat]

        losses = {}
        if gt_instances is not None:
            generators = generators or [None] * len(image_sizes)
            losses = self.losses(anchors, level_logits, level_deltas, image_sizes, gt_instances,
                                 generators)
        with torch.no_grad():
            proposals = self.find_proposals(anchors, level_logits, level_deltas, image_sizes, scales)
        return proposals, losses

    def losses(self, anchors, level_logits, level_deltas, image_sizes, gt_instances, generators):
        all_anchors = Boxes.cat(anchors)
        logits = torch.cat(level_logits, dim=1)
        deltas = torch.cat(level_deltas, dim=1)
        labels, targets = [], []
        for (h, w), gt, generator in zip(image_sizes, gt_instances, generators):
            image_labels, image_targets = self.label_anchors(all_anchors, gt.boxes, h, w, generator)
            labels.append(image_labels)
            targets.append(image_targets)
        labels = torch.stack(labels)
        targets = torch.stack(targets)

        normalizer = float(self.batch_size_per_image * len(image_sizes))
        valid = labels >= 0
        fg = labels == 1
        loss_cls = F.binary_cross_entropy_with_logits(
            logits[valid], labels[valid].to(logits.dtype), reduction="sum") / normalizer
        loss_box = F.smooth_l1_loss(
            deltas[fg], targets[fg], beta=self.smooth_l1_beta, reduction="sum") / normalizer
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_box}

    @torch.no_grad()
    def label_anchors(self, anchors, gt_boxes, height, width, generator=None):
        """Sampled labels (A,) in {1, 0, -1} and regression targets (A, 4) for one image
        (anchors, gt_boxes: Boxes)."""
        inside = straddle_mask(anchors.tensor, height, width, self.straddle_thresh)
        labels = torch.full((len(anchors),), -1, dtype=torch.int8, device=anchors.device)
        targets = torch.zeros_like(anchors.tensor)
        inside_idx = inside.nonzero().flatten()
        iou = gt_boxes.iou(anchors[inside_idx])
        matched, inside_labels = self.matcher(iou)
        fg, bg = sample_labels(inside_labels, self.batch_size_per_image, self.fg_fraction, generator)
        labels[inside_idx[bg]] = 0
        labels[inside_idx[fg]] = 1
        if len(gt_boxes) and fg.numel():
            targets[inside_idx[fg]] = self.box_coder.encode(
                anchors[inside_idx[fg]], gt_boxes[matched[fg]])
        return labels, targets

    def find_proposals(self, anchors, level_logits, level_deltas, image_sizes, scales):
        """Top-scoring decoded boxes per level, NMS per level, then the best over all levels."""
        mode = 0 if self.training else 1
        proposals = []
        for i, ((h, w), scale) in enumerate(zip(image_sizes, scales)):
            boxes_per_level, scores_per_level = [], []
            for level_anchors, logits, deltas in zip(anchors, level_logits, level_deltas):
                scores = logits[i]
                scores, idx = scores.topk(topk_size(scores, self.pre_nms_topk[mode]))
                boxes = self.box_coder.decode(deltas[i, idx], level_anchors[idx]).clip(h, w)
                keep = self._keep_large_enough(boxes, h, w, self.min_size[mode] * scale)
                boxes, scores = boxes[keep], scores[keep]
                keep = boxes.nms(scores, self.nms_thresh[mode])[: self.post_nms_topk[mode]]
                boxes_per_level.append(boxes[keep])
                scores_per_level.append(scores[keep])
            boxes = Boxes.cat(boxes_per_level)
            scores = torch.cat(scores_per_level)
            scores, order = scores.topk(topk_size(scores, self.collect_topk[mode]))
            proposals.append(Instances((h, w), boxes=boxes[order], objectness_logits=scores))
        return proposals

    @staticmethod
    def _keep_large_enough(boxes, height, width, min_size):
        """Detectron's _filter_boxes: at least ``min_size`` wide and high, centre inside the image."""
        ws, hs = boxes.widths_heights()
        x_ctr = boxes.tensor[:, 0] + ws / 2.0
        y_ctr = boxes.tensor[:, 1] + hs / 2.0
        nonempty = (ws > 0) & (hs > 0)
        return nonempty & (ws >= min_size) & (hs >= min_size) & (x_ctr < width) & (y_ctr < height)


def build_rpn_matcher(positive_overlap, negative_overlap):
    """Detectron's RPN assignment: fg >= POSITIVE_OVERLAP or best for a box, bg < NEGATIVE_OVERLAP."""
    return Matcher(positive_overlap, negative_overlap, 0.0, allow_low_quality_matches=True)


def build_rpn(cfg, backbone):
    """RPN on the FPN levels RPN_MIN_LEVEL..RPN_MAX_LEVEL, or on the single backbone output."""
    if cfg.FPN.FPN_ON and cfg.FPN.MULTILEVEL_RPN:
        in_features = feature_level_names(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL,
                                          backbone.out_channels)
        specs = fpn_rpn_anchor_specs(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL,
                                     cfg.FPN.RPN_ANCHOR_START_SIZE, cfg.FPN.RPN_ASPECT_RATIOS)
    else:
        in_features = [list(backbone.out_channels)[-1]]
        specs = [(cfg.RPN.STRIDE, tuple(cfg.RPN.SIZES), tuple(cfg.RPN.ASPECT_RATIOS))]
    channels = {backbone.out_channels[f] for f in in_features}
    if len(channels) != 1:
        raise ConfigError(f"RPN levels {in_features} have different channel counts {channels}")
    anchor_generator = AnchorGenerator(specs, BoxConvention.of(cfg),
                                       sizes_first=cfg.RPN.SIZE_MAJOR_ANCHORS,
                                       round_to_pixels=cfg.MODEL.ROUND_ANCHORS)
    head = RPNHead(channels.pop(), anchor_generator.num_anchors[0],
                   precision=cfg.MODEL.HEAD_PRECISION)
    t, s = cfg.TRAIN, cfg.TEST
    return RPN(
        head, anchor_generator, in_features,
        matcher=build_rpn_matcher(t.RPN_POSITIVE_OVERLAP, t.RPN_NEGATIVE_OVERLAP),
        batch_size_per_image=t.RPN_BATCH_SIZE_PER_IM,
        fg_fraction=t.RPN_FG_FRACTION,
        pre_nms_topk=(t.RPN_PRE_NMS_TOP_N, s.RPN_PRE_NMS_TOP_N),
        post_nms_topk=(t.RPN_POST_NMS_TOP_N, s.RPN_POST_NMS_TOP_N),
        collect_topk=(t.RPN_POST_NMS_TOP_N, s.RPN_POST_NMS_TOP_N),
        nms_thresh=(t.RPN_NMS_THRESH, s.RPN_NMS_THRESH),
        min_size=(t.RPN_MIN_SIZE, s.RPN_MIN_SIZE),
        straddle_thresh=t.RPN_STRADDLE_THRESH,
        box_coder=BoxCoder(),
    )
