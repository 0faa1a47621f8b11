"""Mask R-CNN: mask heads, training targets, loss and inference (Detectron's
mask_rcnn_heads.py, roi_data/mask_rcnn.py and the segm path of core/test.py).

    fg RoIs (training) or detections (inference)
      -> RoIPooler (MRCNN.ROI_XFORM_*) [-> box head's res5, v0upshare] -> mask head -> predictor
      training:  per-pixel sigmoid cross-entropy on each RoI's own class channel ("loss_mask")
      inference: sigmoid of the detected class's channel, stored as ``mask_probs`` (N, M, M)

Heads, registered in ROI_MASK_HEAD under Detectron's names, builders ``(cfg, in_channels)``:

- mask_rcnn_fcn_head_v1up4convs / _v1up: 4 / 2 x (3x3 conv of MRCNN.DIM_REDUCED with
  MRCNN.DILATION, ReLU), then a 2x2 stride-2 transposed conv and ReLU (the FPN baselines).
- mask_rcnn_fcn_head_v1up4convs_gn: the same with GroupNorm after each conv.
- mask_rcnn_fcn_head_v0up: a res5 stage of its own on the pooled res4 RoIs, then the
  transposed conv (C4 without sharing).
- mask_rcnn_fcn_head_v0upshare: the transposed conv on the res5 map of the box head, whose
  res5 weights it shares (the C4 baselines); ``in_channels`` is that map's channel count.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectron_lib import ops
from detectron_lib.config.names import ROI_MASK_HEAD
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.modeling.backbone.build import (
    group_norm_spec,
    resnet_block_options,
    roi_res5_blocks,
)
from detectron_lib.modeling.backbone.precision import run_in_precision
from detectron_lib.modeling.backbone.resnet import make_stage
from detectron_lib.modeling.init import constant_fill_, fill_, gaussian_fill_
from detectron_lib.modeling.poolers import roi_feature_names, roi_pooler_from_config
from detectron_lib.modeling.roi_heads.instance_heads import register_instance_head
from detectron_lib.ops.masks import paste_masks_legacy
from detectron_lib.structures.masks import (
    bitmap_to_mask_in_box,
    is_rle,
    polygons_to_mask_in_box,
    rle_to_bitmap,
)

# Detectron's std whenever a mask-head layer uses GaussianFill
MASK_GAUSSIAN_STD = 0.001
# The head that reuses the res5 box head (its builder needs that head's res5 map)
SHARED_RES5_HEAD = "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare"
# Target value of pixels the loss ignores (Detectron's -1 in masks_int32)
IGNORE_TARGET = -1.0


def _init_conv_(layer, weight_fill):
    """Weight fill named by MRCNN.CONV_INIT (GaussianFill with std 0.001), zero bias."""
    fill_(layer.weight, weight_fill, std=MASK_GAUSSIAN_STD)
    if layer.bias is not None:
        constant_fill_(layer.bias, 0.0)


# ---- heads ----------------------------------------------------------------------------------
class MaskConvUpsampleHead(nn.Module):
    """v1upXconvs: ``num_convs`` x (3x3 conv [-> norm] -> ReLU), 2x2 stride-2 transposed conv, ReLU.

    x: (R, in_channels, S, S) -> (R, conv_dim, 2S, 2S).
    weight_fill: MRCNN.CONV_INIT, for the convs and the transposed conv.
    norm_factory: None, or ``channels -> nn.Module`` (GroupNorm for the _gn head); convs
    followed by a norm carry no bias, as in Detectron's ConvGN. Runs in MODEL.HEAD_PRECISION
    ``precision``, returns float32.
    """

    def __init__(self, in_channels, num_convs, conv_dim, dilation=1, weight_fill="GaussianFill",
                 norm_factory=None, precision="float32"):
        super().__init__()
        self.precision = precision
        layers = []
        for i in range(num_convs):
            conv = nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=dilation,
                             dilation=dilation, bias=norm_factory is None)
            _init_conv_(conv, weight_fill)
            layers.append(conv)
            if norm_factory is not None:
                layers.append(norm_factory(conv_dim))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        _init_conv_(self.upsample, weight_fill)
        self.out_channels = conv_dim

    def output_size(self, input_size):
        """Side of the output map for an input map of side ``input_size``."""
        return 2 * input_size

    def forward(self, x):
        return run_in_precision(self.precision, self._layers, x)

    def _layers(self, x):
        return F.relu(self.upsample(self.convs(x)))


class MaskRes5UpsampleHead(nn.Module):
    """v0up / v0upshare: [res5 stage ->] 2x2 stride-2 transposed conv to ``dim_reduced`` -> ReLU.

    in_channels: channels entering the transposed conv (the res5 output, 2048 for ResNet-50).
    res5: the head's own res5 stage (v0up) with first stride ``res5_stride``, or None when the
    input already is the box head's res5 map (v0upshare).
    x: (R, C, S, S) -> (R, dim_reduced, 2S', 2S'), S' = S for v0upshare, ceil(S / res5_stride)
    for v0up (C the res5 input channels there).
    """

    def __init__(self, in_channels, dim_reduced, weight_fill="GaussianFill", res5=None,
                 res5_stride=1):
        super().__init__()
        self.res5 = res5
        self.res5_stride = res5_stride if res5 is not None else 1
        self.upsample = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        _init_conv_(self.upsample, weight_fill)
        self.out_channels = dim_reduced

    def output_size(self, input_size):
        return 2 * ((input_size - 1) // self.res5_stride + 1)

    def forward(self, x):
        if self.res5 is not None:
            x = self.res5(x)
        return F.relu(self.upsample(x))


# ---- predictors -----------------------------------------------------------------------------
def bilinear_upsample_kernel(factor):
    """(2f, 2f) float32 bilinear kernel of a stride-f transposed conv (the FCN kernel Detectron's
    BilinearInterpolation uses): w[i, j] = (1 - |i - c| / f) (1 - |j - c| / f), c = f - 1/2."""
    size = 2 * factor
    center = factor - 0.5
    taps = 1.0 - torch.abs(torch.arange(size, dtype=torch.float32) - center) / factor
    return taps[:, None] * taps[None, :]


class BilinearUpsample(nn.Module):
    """Per-channel x``factor`` bilinear upsampling: a stride-f transposed conv with the fixed
    kernel of ``bilinear_upsample_kernel`` (kernel 2f, padding f/2; not trained, as in Detectron).

    x: (R, C, S, S) -> (R, C, fS, fS). factor must be even (Detectron's assertion).
    clamp_edges: F.interpolate's bilinear upsampling (align_corners=False) instead, as in
    torchvision's and detectron2's keypoint heads: the same interior, but the border cells
    repeat the edge rather than blend it with the zeros beyond it.
    """

    def __init__(self, factor, clamp_edges=False):
        super().__init__()
        if factor < 2 or factor % 2:
            raise ConfigError(f"MRCNN.UPSAMPLE_RATIO must be 1 or an even number, got {factor}")
        self.factor = factor
        self.clamp_edges = clamp_edges
        self.register_buffer("kernel", bilinear_upsample_kernel(factor), persistent=False)

    def forward(self, x):
        if self.clamp_edges:
            return F.interpolate(x, scale_factor=float(self.factor), mode="bilinear",
                                 align_corners=False)
        channels = int(x.shape[1])  # a constant of a traced graph too, as its kernel needs
        weight = self.kernel.to(x.dtype).expand(channels, 1, *self.kernel.shape)
        return F.conv_transpose2d(x, weight, stride=self.factor, padding=self.factor // 2,
                                  groups=channels)


class MaskPredictor(nn.Module):
    """mask_fcn_logits: a 1x1 conv to one logit map per mask class, then optional fixed bilinear
    upsampling by ``upsample_ratio`` (MRCNN.UPSAMPLE_RATIO).

    num_masks: MODEL.NUM_CLASSES (class-specific, background channel included) or 1.
    weight_fill: MRCNN.CONV_INIT for class-specific masks, GaussianFill (std 0.001) otherwise:
    Detectron found fan-based fills too large for a single class-agnostic mask.
    x: (R, in_channels, S, S) -> (R, num_masks, S * upsample_ratio, S * upsample_ratio) logits.
    """

    def __init__(self, in_channels, num_masks, weight_fill="GaussianFill", upsample_ratio=1):
        super().__init__()
        self.logits = nn.Conv2d(in_channels, num_masks, 1)
        _init_conv_(self.logits, weight_fill)
        self.upsample = BilinearUpsample(upsample_ratio) if upsample_ratio > 1 else None

    def forward(self, x):
        x = self.logits(x)
        return x if self.upsample is None else self.upsample(x)


class MaskFCPredictor(nn.Module):
    """MRCNN.USE_FC_OUTPUT: one fully connected layer from the flattened head output to
    ``num_masks`` x M x M logits (GaussianFill std 0.001, zero bias).

    x: (R, C, S, S) with C * S * S = in_features -> (R, num_masks, M, M).
    """

    def __init__(self, in_features, num_masks, resolution):
        super().__init__()
        self.num_masks = num_masks
        self.resolution = resolution
        self.logits = nn.Linear(in_features, num_masks * resolution * resolution)
        gaussian_fill_(self.logits.weight, MASK_GAUSSIAN_STD)
        constant_fill_(self.logits.bias, 0.0)

    def forward(self, x):
        x = self.logits(x.flatten(1))
        return x.view(-1, self.num_masks, self.resolution, self.resolution)


# ---- targets, loss, inference ---------------------------------------------------------------
def mask_targets(rois_boxes, segms, resolution):
    """Mask-head training targets, one per foreground RoI.

    rois_boxes: (R, 4) x1y1x2y2 in resized-image pixels. segms: R segmentations (the matched
    ground truth's COCO polygons or RLE dict) in the same frame. resolution: M.
    Returns (R, M, M) float32 in {0, 1} on rois_boxes' device.

    Polygons are rasterized directly in the RoI's M x M grid (Detectron's
    polys_to_mask_wrt_box, sharp even for small RoIs); an RLE is decoded once per object,
    cropped to the RoI and resampled at the grid's cell centres, then binarized at 0.5.
    """
    boxes = rois_boxes.detach().to("cpu", torch.float64).numpy()
    targets = np.zeros((len(boxes), resolution, resolution), dtype=np.float32)
    decoded = {}  # id(RLE dict) -> full bitmap; several RoIs often share one object
    for i, (box, segm) in enumerate(zip(boxes, segms)):
        if is_rle(segm):
            if id(segm) not in decoded:
                decoded[id(segm)] = rle_to_bitmap(segm)
            targets[i] = bitmap_to_mask_in_box(decoded[id(segm)], box, resolution)
        else:
            targets[i] = polygons_to_mask_in_box(segm, box, resolution)
    return torch.from_numpy(targets).to(rois_boxes.device)


def _channel_of_each_roi(mask_logits, channels):
    """(R, C, M, M), (R,) -> (R, M, M): row r's map of channel channels[r]."""
    return mask_logits[torch.arange(channels.shape[0], device=channels.device), channels]


def mask_rcnn_loss(mask_logits, channels, targets, weight=1.0):
    """Detectron's SigmoidCrossEntropyLoss on each RoI's own mask channel.

    mask_logits: (R, C, M, M). channels: (R,) int64, the channel each RoI is scored on (its
    class for class-specific masks, 0 for a class-agnostic mask). targets: (R, M, M) in
    {0, 1}, or IGNORE_TARGET (-1) for pixels left out. Returns the binary cross-entropy
    averaged over the pixels that are not ignored (0 if there are none), times ``weight``.
    """
    logits = _channel_of_each_roi(mask_logits, channels)
    valid = targets != IGNORE_TARGET
    losses = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
    return weight * (losses * valid).sum() / valid.sum().clamp(min=1)


def mask_probs_of_channels(mask_logits, channels):
    """Sigmoid of each detection's own mask channel: (N, C, M, M), (N,) -> (N, M, M).

    channels: the detected class (1..K) for class-specific masks, 0 for class-agnostic.
    """
    return _channel_of_each_roi(mask_logits, channels).sigmoid()


def paste_mask_probs(detections, image_height, image_width, thresh=0.5, legacy=False):
    """Binary full-image instance masks of ``detections``.

    detections: Instances(boxes: Boxes (N, 4) in the pixels of the image, mask_probs
    (N, M, M)), i.e. after boxes were scaled back to the original image. Each soft mask is
    resampled into its box and binarized at > ``thresh`` (MRCNN.THRESH_BINARIZE): by
    detectron2's bilinear sampling (ops.paste_masks), or with ``legacy`` (MRCNN.LEGACY_PASTE)
    by Detectron's and torchvision's resize into the box rounded to whole pixels
    (ops.masks.paste_masks_legacy). Returns (N, image_height, image_width) bool.
    """
    if len(detections) == 0:
        return torch.zeros((0, image_height, image_width), dtype=torch.bool,
                           device=detections.boxes.device)
    if legacy:
        return paste_masks_legacy(detections.mask_probs, detections.boxes.tensor, image_height,
                                  image_width, thresh)
    probs = ops.paste_masks(detections.mask_probs, detections.boxes.tensor, image_height,
                            image_width)
    return probs > thresh


class MaskROIHeads(nn.Module):
    """Pooler -> [shared res5 ->] mask head -> predictor, on fg RoIs or on detections.

    pooler: RoIPooler at MRCNN.ROI_XFORM_RESOLUTION. head: a mask head (module with
    ``out_channels``). predictor: MaskPredictor or MaskFCPredictor. in_features: feature
    names to pool from. cls_specific: one mask per class (predictor channels = classes) rather
    than one class-agnostic mask. shared_res5: the res5 stage of the box head (v0upshare),
    applied to the pooled features before ``head``; its weights are the box head's.
    loss_weight: MRCNN.WEIGHT_LOSS_MASK. max_fg_rois_per_image: MRCNN.MAX_FG_ROIS_PER_IM, the
    number of fg RoIs per image the loss uses (0: all).
    """

    def __init__(self, pooler, head, predictor, in_features, cls_specific=True, *,
                 shared_res5=None, loss_weight=1.0, max_fg_rois_per_image=0):
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.in_features = list(in_features)
        self.cls_specific = cls_specific
        self.shared_res5 = shared_res5
        self.loss_weight = loss_weight
        self.max_fg_rois_per_image = max_fg_rois_per_image

    def mask_logits(self, features, boxes_per_image):
        """features: {name: (N, C, H, W)}; boxes_per_image: [(Ni, 4)] -> (sum Ni, C', M, M)."""
        x = self.pooler([features[f] for f in self.in_features], boxes_per_image)
        if self.shared_res5 is not None:
            x = self.shared_res5(x)
        return self.predictor(self.head(x))

    def forward(self, features, instances, gt_instances=None, scales=None):
        """Training (``gt_instances`` given): ``instances`` are BoxROIHeads' sampled RoIs
        [Instances(boxes, classes, matched_gt)], ``gt_instances`` [Instances(segms, ...)];
        returns (instances, {"loss_mask": scalar}).

        Inference: ``instances`` are detections [Instances(boxes, scores, classes)] in
        resized-image pixels; returns (copies with ``mask_probs`` (N, M, M) added, {}).
        ``scales`` is not needed (the instance-head interface, roi_heads.instance_heads).
        """
        if gt_instances is not None:
            return instances, {"loss_mask": self.loss(features, instances, gt_instances)}
        return self.inference(features, instances), {}

    def _channels(self, classes):
        """Predictor channel of each RoI: its class, or 0 for a class-agnostic mask."""
        return classes if self.cls_specific else torch.zeros_like(classes)

    def _fg_rois(self, rois):
        """An image's fg RoIs, the first ``max_fg_rois_per_image`` of them if capped."""
        fg_rois = rois[rois.classes > 0]
        return fg_rois[:self.max_fg_rois_per_image] if self.max_fg_rois_per_image else fg_rois

    def loss(self, features, rois, gt_instances):
        """Mask loss over the fg RoIs of every image (at most ``max_fg_rois_per_image``).

        An image without fg RoIs contributes one RoI whose targets are all ignored (as
        Detectron's roi_data does), so the loss stays connected to every mask weight.
        """
        has_fg = [bool((r.classes > 0).any()) for r in rois]
        mask_rois = [self._fg_rois(r) if fg else r[:1] for r, fg in zip(rois, has_fg)]
        logits = self.mask_logits(features, [r.boxes for r in mask_rois])
        resolution = logits.shape[-1]
        targets = []
        for image_rois, gt, fg in zip(mask_rois, gt_instances, has_fg):
            if fg:
                if not gt.has("segms"):
                    raise DatasetError(
                        "Mask R-CNN training needs instance masks, but the ground truth of an "
                        "image has no 'segms' (its annotations carry no 'segmentation'); use a "
                        "dataset with masks or set MODEL.MASK_ON False")
                segms = [gt.segms[i] for i in image_rois.matched_gt.tolist()]
                targets.append(mask_targets(image_rois.boxes.tensor, segms, resolution))
            else:
                targets.append(logits.new_full((len(image_rois), resolution, resolution),
                                               IGNORE_TARGET))
        channels = self._channels(torch.cat([r.classes for r in mask_rois]))
        return mask_rcnn_loss(logits, channels, torch.cat(targets).to(logits.dtype),
                              self.loss_weight)

    @torch.no_grad()
    def inference(self, features, detections):
        """Adds ``mask_probs`` (N, M, M): sigmoid of each detection's class channel."""
        logits = self.mask_logits(features, [d.boxes for d in detections])
        channels = self._channels(torch.cat([d.classes for d in detections]))
        probs = mask_probs_of_channels(logits, channels)
        results = []
        # counts as shapes, not len(): the ONNX export traces them
        per_image = probs.split([d.boxes.tensor.shape[0] for d in detections])
        for image_detections, image_probs in zip(detections, per_image):
            out = image_detections[:]
            out.mask_probs = image_probs
            results.append(out)
        return results


# ---- config ---------------------------------------------------------------------------------
def v1up4convs_head_from_config(cfg, in_channels):
    m = cfg.MRCNN
    return MaskConvUpsampleHead(in_channels, 4, m.DIM_REDUCED, m.DILATION, m.CONV_INIT,
                                precision=cfg.MODEL.HEAD_PRECISION)


def v1up4convs_gn_head_from_config(cfg, in_channels):
    m = cfg.MRCNN
    return MaskConvUpsampleHead(in_channels, 4, m.DIM_REDUCED, m.DILATION, m.CONV_INIT,
                                norm_factory=group_norm_spec(cfg),
                                precision=cfg.MODEL.HEAD_PRECISION)


def v1up_head_from_config(cfg, in_channels):
    m = cfg.MRCNN
    return MaskConvUpsampleHead(in_channels, 2, m.DIM_REDUCED, m.DILATION, m.CONV_INIT,
                                precision=cfg.MODEL.HEAD_PRECISION)


def v0up_head_from_config(cfg, in_channels):
    """Own res5 (Detectron's add_ResNet_roi_conv5_head_for_masks) + transposed conv, whose
    weights Detectron always fills with GaussianFill whatever MRCNN.CONV_INIT says."""
    res5, res5_channels, res5_stride = mask_res5_from_config(cfg, in_channels)
    return MaskRes5UpsampleHead(res5_channels, cfg.MRCNN.DIM_REDUCED, "GaussianFill",
                                res5=res5, res5_stride=res5_stride)


def v0upshare_head_from_config(cfg, in_channels):
    """Transposed conv on the box head's res5 map; ``in_channels``: that map's channels."""
    return MaskRes5UpsampleHead(in_channels, cfg.MRCNN.DIM_REDUCED, cfg.MRCNN.CONV_INIT)


def mask_res5_from_config(cfg, in_channels):
    """The v0up head's res5 stage on RoIs pooled at MRCNN.ROI_XFORM_RESOLUTION.

    As Detectron's ResNet.add_stage: the first block strides by ROI_XFORM_RESOLUTION // 7
    unless MRCNN.DILATION > 1 (then no stride, dilated 3x3 convs); block type and norms follow
    RESNETS.*, the block count the conv4 body of MODEL.CONV_BODY (3 for R-50 / R-101).
    Returns (nn.Sequential, output channels, first stride).
    """
    resolution, dilation = cfg.MRCNN.ROI_XFORM_RESOLUTION, cfg.MRCNN.DILATION
    if resolution < 7:
        raise ConfigError(f"MRCNN.ROI_XFORM_RESOLUTION={resolution}: the v0up mask head's res5 "
                          "needs >= 7 (its first block strides by resolution // 7)")
    depth, num_blocks = roi_res5_blocks(cfg)
    stride = resolution // 7 if dilation == 1 else 1
    res5, channels = make_stage(num_blocks=num_blocks, stage=5, in_channels=in_channels,
                                first_stride=stride, dilation=dilation,
                                **resnet_block_options(cfg, depth))
    return res5, channels, stride


@register_instance_head("mask_heads", "MODEL.MASK_ON")
def build_mask_roi_heads(cfg, backbone_out_channels, backbone_strides, box_head=None):
    """MaskROIHeads from MRCNN.* on the FPN levels ROI_MIN_LEVEL..ROI_MAX_LEVEL (FPN.FPN_ON and
    FPN.MULTILEVEL_ROIS) or on the backbone's last map.

    backbone_out_channels / backbone_strides: {feature name: channels / stride}.
    box_head: the built box head; needed by v0upshare, which shares its ``res5``.
    Raises ConfigError when MRCNN.RESOLUTION does not match what the head predicts.
    """
    m = cfg.MRCNN
    in_features = roi_feature_names(cfg, backbone_out_channels)
    head_in_channels = backbone_out_channels[in_features[0]]
    feature_size = m.ROI_XFORM_RESOLUTION
    shared_res5 = None
    if ROI_MASK_HEAD.canonical_name(m.ROI_MASK_HEAD) == SHARED_RES5_HEAD:
        if box_head is None or not hasattr(box_head, "res5"):
            raise ConfigError(f"MRCNN.ROI_MASK_HEAD {m.ROI_MASK_HEAD} shares the res5 box head; "
                              "set FAST_RCNN.ROI_BOX_HEAD to ResNet.add_ResNet_roi_conv5_head")
        if m.ROI_XFORM_RESOLUTION != cfg.FAST_RCNN.ROI_XFORM_RESOLUTION:
            raise ConfigError(
                f"MRCNN.ROI_XFORM_RESOLUTION ({m.ROI_XFORM_RESOLUTION}) must equal "
                f"FAST_RCNN.ROI_XFORM_RESOLUTION ({cfg.FAST_RCNN.ROI_XFORM_RESOLUTION}) when the "
                "mask head shares the res5 box head (v0upshare)")
        shared_res5 = box_head.res5
        head_in_channels = box_head.out_dim
        box_res5_stride = cfg.FAST_RCNN.ROI_XFORM_RESOLUTION // 7
        feature_size = (feature_size - 1) // box_res5_stride + 1
    head = ROI_MASK_HEAD.get(m.ROI_MASK_HEAD)(cfg, head_in_channels)
    feature_size = head.output_size(feature_size)
    num_masks = cfg.MODEL.NUM_CLASSES if m.CLS_SPECIFIC_MASK else 1
    if m.USE_FC_OUTPUT:
        predictor = MaskFCPredictor(head.out_channels * feature_size ** 2, num_masks, m.RESOLUTION)
    else:
        predicted = feature_size * max(m.UPSAMPLE_RATIO, 1)
        if predicted != m.RESOLUTION:
            raise ConfigError(
                f"MRCNN.RESOLUTION is {m.RESOLUTION}, but {m.ROI_MASK_HEAD} on "
                f"{m.ROI_XFORM_RESOLUTION}x{m.ROI_XFORM_RESOLUTION} RoI features "
                f"(MRCNN.ROI_XFORM_RESOLUTION, MRCNN.UPSAMPLE_RATIO={m.UPSAMPLE_RATIO}) predicts "
                f"{predicted}x{predicted} masks; set MRCNN.RESOLUTION to {predicted}")
        weight_fill = m.CONV_INIT if m.CLS_SPECIFIC_MASK else "GaussianFill"
        predictor = MaskPredictor(head.out_channels, num_masks, weight_fill, m.UPSAMPLE_RATIO)
    pooler = roi_pooler_from_config(cfg, m, [backbone_strides[name] for name in in_features])
    return MaskROIHeads(pooler, head, predictor, in_features, m.CLS_SPECIFIC_MASK,
                        shared_res5=shared_res5, loss_weight=m.WEIGHT_LOSS_MASK,
                        max_fg_rois_per_image=m.MAX_FG_ROIS_PER_IM)
