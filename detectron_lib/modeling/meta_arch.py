"""Detectron's generalized R-CNN (MODEL.TYPE generalized_rcnn): backbone -> RPN -> RoI heads.

``build_model(cfg)`` assembles it from the config: RPN when RPN.RPN_ON, Fast R-CNN box heads
unless MODEL.RPN_ONLY. In training the model returns a dict of named scalar losses; in
inference, one ``Instances`` per image with boxes in original-image pixels.
"""
import torch
from torch import nn

import detectron_lib.modeling.backbone  # noqa: F401  (registers the backbones)
import detectron_lib.modeling.retinanet  # noqa: F401  (registers MODEL.TYPE retinanet)
import detectron_lib.modeling.roi_heads.box_head  # noqa: F401  (registers the box heads)
from detectron_lib.config.names import MODEL_TYPE
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.anchors import AnchorGenerator, fpn_rpn_anchor_specs
from detectron_lib.modeling.backbone.build import body_features, build_backbone, build_roi_box_head
from detectron_lib.modeling.backbone.precision import prefers_channels_last
from detectron_lib.modeling.poolers import feature_level_names, roi_feature_names, roi_pooler_from_config
from detectron_lib.modeling.postprocess import box_voting_from_config, soft_nms_from_config
from detectron_lib.modeling.roi_heads.fast_rcnn import (
    BoxROIHeads,
    FastRCNNPredictor,
    build_fast_rcnn_matcher,
)
from detectron_lib.modeling.roi_heads.keypoint_head import build_keypoint_roi_heads
from detectron_lib.modeling.roi_heads.mask_head import build_mask_roi_heads
from detectron_lib.modeling.roi_heads.rfcn import RFCNPredictor, RFCNROIHeads
from detectron_lib.modeling.rpn import RPN, RPNHead, build_rpn_matcher
from detectron_lib.structures.boxes import BoxCoder


class GeneralizedRCNN(nn.Module):
    """backbone -> (RPN) -> (box RoI heads) -> (mask heads) (keypoint heads).

    Images enter normalized and padded, (N, 3, H, W). ``body_precision`` is
    MODEL.BODY_PRECISION, the precision the backbone runs in.
    """

    def __init__(self, backbone, rpn=None, roi_heads=None, mask_heads=None, body_precision="float32",
                 *, keypoint_heads=None):
        super().__init__()
        if rpn is None and roi_heads is None:
            raise ValueError("a generalized R-CNN needs an RPN, RoI heads, or both")
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mask_heads = mask_heads
        self.keypoint_heads = keypoint_heads
        self.body_precision = body_precision

    def forward(self, images, image_sizes, scales, targets=None, seeds=None, proposals=None):
        """Run the model on a batch.

        images: (N, 3, H, W) float. image_sizes: [(h, w)] of each resized, unpadded image.
        scales: [float] resize factor from the original image. targets: [Instances(boxes,
        classes)] in resized-image pixels, when training. seeds: [int] per image, seeding the
        sampling of anchors and RoIs. proposals: [Instances(boxes)] precomputed proposals
        (Fast R-CNN) in resized-image pixels, when there is no RPN.

        Training: dict of losses. Inference: [Instances(boxes, scores, classes)] with boxes
        scaled back to original-image pixels (RPN only: proposals with their scores); with
        mask heads the detections also carry ``mask_probs`` (N, M, M) in box coordinates; with
        keypoint heads ``keypoints`` (N, K, 3) (x, y, logit) in original-image pixels and
        ``keypoint_probs`` (N, K).
        """
        features = body_features(self.backbone, images, self.body_precision)
        generators = None
        if targets is not None and seeds is not None:
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        losses = {}
        if self.rpn is not None:
            proposals, rpn_losses = self.rpn(image_sizes, features, scales, targets, generators)
            losses.update(rpn_losses)
        elif proposals is None:
            raise ValueError("a model without RPN needs precomputed proposals")
        if self.roi_heads is None:
            if targets is not None:
                return losses
            for p in proposals:
                p.scores = torch.sigmoid(p.objectness_logits)
            return [_to_original_scale(p, s) for p, s in zip(proposals, scales)]
        detections, roi_losses = self.roi_heads(features, proposals, targets, generators)
        if self.mask_heads is not None:
            detections, mask_losses = self.mask_heads(features, detections, targets)
            roi_losses.update(mask_losses)
        if self.keypoint_heads is not None:
            detections, keypoint_losses = self.keypoint_heads(features, detections, targets, scales)
            roi_losses.update(keypoint_losses)
        if targets is not None:
            losses.update(roi_losses)
            return losses
        return [_to_original_scale(d, s) for d, s in zip(detections, scales)]

    # ---- inference in steps, for test-time augmentation (inference/tta.py) ----

    @torch.no_grad()
    def extract_features(self, images):
        """Backbone feature maps {name: (N, C, H, W)} of a normalized, padded batch."""
        return body_features(self.backbone, images, self.body_precision)

    @torch.no_grad()
    def predict_boxes(self, features, image_sizes, scales, proposals=None):
        """Class scores and boxes of every RoI before NMS: per image (scores (R, K+1), boxes
        (R, 4(K+1)) or (R, 8) class-agnostic) in original-image pixels (resized / scale).
        proposals: [Instances(boxes)] in resized-image pixels, for models without RPN."""
        if self.rpn is not None:
            proposals, _ = self.rpn(image_sizes, features, scales)
        elif proposals is None:
            raise ValueError("a model without RPN needs precomputed proposals")
        predictions = self.roi_heads.predict_boxes(features, proposals)
        return [(scores, boxes / scale) for (scores, boxes), scale in zip(predictions, scales)]

    @torch.no_grad()
    def predict_masks(self, features, detections, scales):
        """mask_probs (N_i, M, M) per image for detections [Instances(boxes, classes)] whose
        boxes are in original-image pixels (the images were resized by ``scales``)."""
        resized = [_scaled_boxes(d, s) for d, s in zip(detections, scales)]
        return [d.mask_probs for d in self.mask_heads(features, resized)[0]]

    @torch.no_grad()
    def predict_keypoint_heatmaps(self, features, detections, scales):
        """Keypoint heatmap logits (N_i, K, M, M) per image for detections [Instances(boxes)]
        whose boxes are in original-image pixels (the images were resized by ``scales``)."""
        boxes = [d.boxes * s for d, s in zip(detections, scales)]
        logits = self.keypoint_heads.heatmap_logits(features, boxes)
        return list(logits.split([len(d) for d in detections]))

    @torch.no_grad()
    def predict_instance_heads(self, features, detections, scales):
        """Detections [Instances(boxes, scores, classes)] in original-image pixels with the
        fields the mask and keypoint heads add, as forward() returns them."""
        resized = [_scaled_boxes(d, s) for d, s in zip(detections, scales)]
        if self.mask_heads is not None:
            resized, _ = self.mask_heads(features, resized)
        if self.keypoint_heads is not None:
            resized, _ = self.keypoint_heads(features, resized, None, scales)
        results = []
        for original, out in zip(detections, resized):
            out = out[:]
            out.boxes = original.boxes
            results.append(out)
        return results


def _scaled_boxes(instances, scale):
    out = instances[:]
    out.boxes = instances.boxes * scale
    return out


def _to_original_scale(instances, scale):
    out = instances[:]
    out.boxes = instances.boxes / scale
    return out


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
    legacy = cfg.MODEL.BBOX_LEGACY_PLUS_ONE
    anchor_generator = AnchorGenerator(specs, legacy_plus_one=legacy)
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
        legacy_plus_one=legacy,
    )


def build_box_roi_heads(cfg, backbone):
    """Fast R-CNN heads pooling from FPN levels ROI_MIN_LEVEL..ROI_MAX_LEVEL or the single map."""
    in_features = roi_feature_names(cfg, backbone.out_channels)
    in_channels = backbone.out_channels[in_features[0]]
    box_head = build_roi_box_head(cfg, in_channels)
    # The VGG16 fc head fixes its own input resolution (Detectron pooled it at 7x7).
    pooler = roi_pooler_from_config(cfg, cfg.FAST_RCNN, [backbone.strides[name] for name in in_features],
                                    resolution=getattr(box_head, "resolution", None))
    options = _box_roi_head_options(cfg)
    return BoxROIHeads(
        pooler, box_head,
        FastRCNNPredictor(box_head.out_dim, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CLS_AGNOSTIC_BBOX_REG),
        in_features, **options)


def _box_roi_head_options(cfg):
    """BoxROIHeads' keyword arguments: RoI sampling (TRAIN.*), box coding, post-processing."""
    t, s = cfg.TRAIN, cfg.TEST
    return dict(
        matcher=build_fast_rcnn_matcher(t.FG_THRESH, t.BG_THRESH_HI, t.BG_THRESH_LO),
        batch_size_per_image=t.BATCH_SIZE_PER_IM,
        fg_fraction=t.FG_FRACTION,
        box_coder=BoxCoder(cfg.MODEL.BBOX_REG_WEIGHTS, cfg.BBOX_XFORM_CLIP, cfg.MODEL.BBOX_LEGACY_PLUS_ONE),
        score_thresh=s.SCORE_THRESH,
        nms_thresh=s.NMS,
        detections_per_image=s.DETECTIONS_PER_IM,
        soft_nms=soft_nms_from_config(cfg),
        box_voting=box_voting_from_config(cfg),
        bbox_thresh=t.BBOX_THRESH,
        bbox_reg=s.BBOX_REG,
        dedup_boxes=0.0 if cfg.RPN.RPN_ON else cfg.DEDUP_BOXES,  # precomputed proposals only
    )


@MODEL_TYPE.register("generalized_rcnn")
def build_generalized_rcnn(cfg):
    backbone = build_backbone(cfg)
    rpn = build_rpn(cfg, backbone) if cfg.RPN.RPN_ON else None
    roi_heads = None if cfg.MODEL.RPN_ONLY else build_box_roi_heads(cfg, backbone)
    mask_heads = None
    if cfg.MODEL.MASK_ON:
        if roi_heads is None:
            raise ConfigError("MODEL.MASK_ON needs box RoI heads; set MODEL.RPN_ONLY to False")
        mask_heads = build_mask_roi_heads(cfg, backbone.out_channels, backbone.strides,
                                          box_head=roi_heads.box_head)
    keypoint_heads = None
    if cfg.MODEL.KEYPOINTS_ON:
        if roi_heads is None:
            raise ConfigError("MODEL.KEYPOINTS_ON needs box RoI heads; set MODEL.RPN_ONLY to False")
        keypoint_heads = build_keypoint_roi_heads(cfg, backbone.out_channels, backbone.strides)
    return GeneralizedRCNN(backbone, rpn, roi_heads, mask_heads, cfg.MODEL.BODY_PRECISION,
                           keypoint_heads=keypoint_heads)


def build_rfcn_roi_heads(cfg, backbone):
    """R-FCN heads on the backbone's last map: RFCN.PS_GRID_SIZE, MODEL.NUM_CLASSES and
    CLS_AGNOSTIC_BBOX_REG; FAST_RCNN.ROI_XFORM_METHOD picks PS-RoIPool (RoIPoolF, Detectron's)
    or PS-RoIAlign (RoIAlign, with ROI_XFORM_SAMPLING_RATIO)."""
    in_feature = list(backbone.out_channels)[-1]
    options = _box_roi_head_options(cfg)
    predictor = RFCNPredictor(
        backbone.out_channels[in_feature], cfg.MODEL.NUM_CLASSES, cfg.RFCN.PS_GRID_SIZE,
        1.0 / backbone.strides[in_feature], cfg.MODEL.CLS_AGNOSTIC_BBOX_REG,
        method=cfg.FAST_RCNN.ROI_XFORM_METHOD, sampling_ratio=cfg.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO)
    return RFCNROIHeads(predictor, in_feature, **options)


@MODEL_TYPE.register("rfcn")
def build_rfcn(cfg):
    """R-FCN: backbone -> (RPN, when RPN.RPN_ON) -> R-FCN heads; without an RPN it runs on
    precomputed proposals. Detectron's R-FCN body is a ResNet conv5 body with
    RESNETS.RES5_DILATION 2 (stride 16)."""
    switches = {"MODEL.RPN_ONLY": cfg.MODEL.RPN_ONLY, "MODEL.MASK_ON": cfg.MODEL.MASK_ON,
                "MODEL.KEYPOINTS_ON": cfg.MODEL.KEYPOINTS_ON, "FPN.FPN_ON": cfg.FPN.FPN_ON}
    unsupported = [key for key, on in switches.items() if on]
    if unsupported:
        raise ConfigError(f"MODEL.TYPE rfcn does not support {', '.join(unsupported)}; turn it "
                          "off, or use MODEL.TYPE generalized_rcnn")
    backbone = build_backbone(cfg)
    rpn = build_rpn(cfg, backbone) if cfg.RPN.RPN_ON else None
    return GeneralizedRCNN(backbone, rpn, build_rfcn_roi_heads(cfg, backbone), None,
                           cfg.MODEL.BODY_PRECISION)


def build_model(cfg):
    """The model MODEL.TYPE names, built from a finalized config, its convolution weights in
    channels-last layout unless it has GroupNorm (see backbone.precision.body_layout)."""
    model = MODEL_TYPE.get(cfg.MODEL.TYPE)(cfg)
    if prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    return model
