"""Detectron's generalized R-CNN (MODEL.TYPE generalized_rcnn and rfcn): backbone -> RPN -> RoI
heads -> instance heads (masks, keypoints).

``build_model(cfg)`` assembles the model MODEL.TYPE names. Every detector takes images and
returns detections in their pixels through its ``io`` (modeling.image_io.DetectorIO); in
training it returns a dict of named scalar losses.
"""
import torch
from torch import nn

import detectron_lib.modeling.roi_heads  # noqa: F401  (registers the instance-head kinds)
from detectron_lib.config.names import MODEL_TYPE
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.build import body_features, build_backbone
from detectron_lib.modeling.backbone.precision import prefers_channels_last
from detectron_lib.modeling.image_io import detector_io_from_config
from detectron_lib.modeling.roi_heads.fast_rcnn import build_box_roi_heads
from detectron_lib.modeling.roi_heads.instance_heads import INSTANCE_HEADS
from detectron_lib.modeling.roi_heads.rfcn import build_rfcn_roi_heads
from detectron_lib.modeling.rpn import build_rpn


class GeneralizedRCNN(nn.Module):
    """io -> backbone -> (RPN) -> (box RoI heads) -> (instance heads: masks, keypoints, ...).

    io: the DetectorIO owning the image contract. instance_heads: {attribute: module} of the
    registered instance-head kinds that are on (roi_heads.instance_heads), run in
    registration order; each is also the model attribute of that name (None when off).
    ``body_precision`` is MODEL.BODY_PRECISION, the precision the backbone runs in.
    """

    def __init__(self, io, backbone, rpn=None, roi_heads=None, instance_heads=None,
                 body_precision="float32"):
        super().__init__()
        if rpn is None and roi_heads is None:
            raise ValueError("a generalized R-CNN needs an RPN, RoI heads, or both")
        instance_heads = dict(instance_heads or {})
        if instance_heads and roi_heads is None:
            raise ValueError("instance heads run on the boxes of box RoI heads")
        self.io = io
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.instance_head_names = [k.attribute for k in INSTANCE_HEADS if k.attribute in instance_heads]
        for kind in INSTANCE_HEADS:
            setattr(self, kind.attribute, instance_heads.pop(kind.attribute, None))
        if instance_heads:
            raise ValueError(f"unregistered instance heads {sorted(instance_heads)}")
        self.body_precision = body_precision

    def forward(self, images, scales=None, targets=None, seeds=None, proposals=None,
                original_sizes=None):
        """Run the model on a list of images.

        images: [(3, H_i, W_i)] BGR pixel values (uint8 or float). scales: the factor each was
        resized by from its original (the data loader's); without them the images are
        originals, resized here to TEST.SCALE (inference only). targets: [Instances(boxes,
        classes, ...)] in the given images' pixels, when training. seeds: [int] per image,
        seeding the sampling of anchors and RoIs. proposals: [Instances(boxes)] precomputed
        proposals in the given images' pixels, for a model without RPN. original_sizes:
        [(h, w)] of the originals, where masks are pasted (known here when the model resized).

        Training: dict of losses. Inference: [Instances(boxes, scores, classes)] in
        original-image pixels (RPN only: proposals with their scores); with mask heads also
        ``mask_probs`` (N, M, M) in box coordinates and, where the original size is known,
        ``masks`` (N, H, W) bool; with keypoint heads ``keypoints`` (N, K, 3) (x, y, logit) and
        ``keypoint_probs`` (N, K).
        """
        resized_here = scales is None
        batch, image_sizes, scales, original_sizes = self.io.prepare(
            images, scales, original_sizes, training=targets is not None)
        if resized_here and proposals is not None:
            proposals = [_scaled_boxes(p, s) for p, s in zip(proposals, scales)]
        features = body_features(self.backbone, batch, self.body_precision)
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
            return self.io.postprocess(proposals, scales, original_sizes)
        detections, roi_losses = self.roi_heads(features, proposals, targets, generators)
        for name in self.instance_head_names:
            detections, head_losses = getattr(self, name)(features, detections, targets, scales)
            roi_losses.update(head_losses)
        if targets is not None:
            losses.update(roi_losses)
            return losses
        return self.io.postprocess(detections, scales, original_sizes)


def _scaled_boxes(instances, scale):
    out = instances[:]
    out.boxes = instances.boxes * scale
    return out


def build_generalized_rcnn(cfg):
    backbone = build_backbone(cfg)
    rpn = build_rpn(cfg, backbone) if cfg.RPN.RPN_ON else None
    roi_heads = None if cfg.MODEL.RPN_ONLY else build_box_roi_heads(cfg, backbone)
    instance_heads = {}
    for kind in INSTANCE_HEADS:
        if not kind.enabled(cfg):
            continue
        if roi_heads is None:
            raise ConfigError(f"{kind.switch} needs box RoI heads; set MODEL.RPN_ONLY to False")
        instance_heads[kind.attribute] = kind.build(cfg, backbone.out_channels, backbone.strides,
                                                    roi_heads.box_head)
    return GeneralizedRCNN(detector_io_from_config(cfg), backbone, rpn, roi_heads, instance_heads,
                           cfg.MODEL.BODY_PRECISION)


def build_rfcn(cfg):
    """R-FCN: backbone -> (RPN, when RPN.RPN_ON) -> R-FCN heads; without an RPN it runs on
    precomputed proposals. Detectron's R-FCN body is a ResNet conv5 body with
    RESNETS.RES5_DILATION 2 (stride 16)."""
    switches = {"MODEL.RPN_ONLY": cfg.MODEL.RPN_ONLY, "FPN.FPN_ON": cfg.FPN.FPN_ON}
    unsupported = [key for key, on in switches.items() if on]
    unsupported += [kind.switch for kind in INSTANCE_HEADS if kind.enabled(cfg)]
    if unsupported:
        raise ConfigError(f"MODEL.TYPE rfcn does not support {', '.join(unsupported)}; turn it "
                          "off, or use MODEL.TYPE generalized_rcnn")
    backbone = build_backbone(cfg)
    rpn = build_rpn(cfg, backbone) if cfg.RPN.RPN_ON else None
    return GeneralizedRCNN(detector_io_from_config(cfg), backbone, rpn,
                           build_rfcn_roi_heads(cfg, backbone), body_precision=cfg.MODEL.BODY_PRECISION)


def build_model(cfg):
    """The model MODEL.TYPE names, built from a finalized config, its convolution weights in
    channels-last layout unless it has GroupNorm (see backbone.precision.body_layout)."""
    model = MODEL_TYPE.get(cfg.MODEL.TYPE)(cfg)
    if prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    return model
