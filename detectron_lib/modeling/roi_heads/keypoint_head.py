"""Keypoint R-CNN: keypoint head, heatmap targets, loss and keypoint decoding (Detectron's
keypoint_rcnn_heads.py, roi_data/keypoint_rcnn.py, utils/keypoints.py and the keypoint path of
core/test.py).

    fg RoIs with a visible keypoint inside (training) or detections (inference)
      -> RoIPooler (KRCNN.ROI_XFORM_*) -> head (KRCNN.NUM_STACKED_CONVS convs)
      -> predictor: [kps_deconv x2] -> kps_score (transposed conv x2 or 1x1 conv)
                    [-> fixed bilinear upsampling x KRCNN.UP_SCALE]
      = one HEATMAP_SIZE x HEATMAP_SIZE logit map per keypoint
      training:  softmax cross-entropy over the M*M positions of each map, the label being the
                 cell of the ground-truth keypoint in the RoI ("loss_kps")
      inference: each map resized (bicubic) to its box, argmax, cell centre -> (x, y) in
                 original-image pixels, with the logit and the spatial-softmax probability

Coordinates follow Detectron (Heckbert's convention): a continuous coordinate c falls in
discrete cell d = floor(c), and cell d has its centre at c = d + 0.5.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron_lib.config.names import ROI_KEYPOINTS_HEAD
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.modeling.backbone.precision import run_in_precision
from detectron_lib.modeling.init import constant_fill_, fill_
from detectron_lib.modeling.poolers import roi_feature_names, roi_pooler_from_config
from detectron_lib.modeling.roi_heads.instance_heads import register_instance_head
from detectron_lib.modeling.roi_heads.mask_head import BilinearUpsample
from detectron_lib.structures.boxes import Boxes

# Detectron's stds under GaussianFill: head convs and kps_deconv 0.01, heatmap logits 0.001
KEYPOINT_CONV_STD = 0.01
KEYPOINT_OUTPUT_STD = 0.001


def _init_(layer, weight_fill, std):
    fill_(layer.weight, weight_fill, std=std)
    constant_fill_(layer.bias, 0.0)


# ---- head and predictor ---------------------------------------------------------------------
class KeypointConvHead(nn.Module):
    """v1convX: ``num_convs`` x (``kernel_size`` conv to ``conv_dim``, stride 1, same padding, ReLU).

    weight_fill: KRCNN.CONV_INIT (std 0.01 under GaussianFill), zero bias.
    x: (R, in_channels, S, S) -> (R, conv_dim, S, S), run in MODEL.HEAD_PRECISION ``precision``
    and returned in float32.
    """

    def __init__(self, in_channels, num_convs, conv_dim, kernel_size=3,
                 weight_fill="GaussianFill", precision="float32"):
        super().__init__()
        self.precision = precision
        if num_convs < 1:
            raise ConfigError(f"KRCNN.NUM_STACKED_CONVS is {num_convs}; the v1convX keypoint head "
                              "needs at least one conv")
        layers = []
        for i in range(num_convs):
            conv = nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, kernel_size,
                             padding=kernel_size // 2)
            _init_(conv, weight_fill, KEYPOINT_CONV_STD)
            layers += [conv, nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.out_channels = conv_dim

    def forward(self, x):
        return run_in_precision(self.precision, self.convs, x)


def _deconv_x2(in_channels, out_channels, kernel_size):
    """Detectron's stride-2 ConvTranspose with pad int(kernel / 2 - 1): 2S out for even kernels."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=2,
                              padding=int(kernel_size / 2 - 1))


class KeypointPredictor(nn.Module):
    """Detectron's add_keypoint_outputs: heatmap logits, one map per keypoint.

    use_deconv (KRCNN.USE_DECONV): first a stride-2 transposed conv to ``deconv_dim``
    (KRCNN.DECONV_DIM, GaussianFill 0.01) and ReLU. Then kps_score: a stride-2 transposed conv
    (KRCNN.USE_DECONV_OUTPUT) or a 1x1 conv, filled with ``weight_fill`` (std 0.001). Both
    transposed convs have kernel ``deconv_kernel`` (KRCNN.DECONV_KERNEL). up_scale
    (KRCNN.UP_SCALE) > 1 appends fixed bilinear upsampling, Detectron's or, with
    ``up_scale_interpolate`` (KRCNN.UP_SCALE_INTERPOLATE), torchvision's (BilinearUpsample).
    x: (R, in_channels, S, S) -> (R, num_keypoints, M, M), M = ``output_size(S)``.
    """

    def __init__(self, in_channels, num_keypoints, weight_fill="GaussianFill", *, use_deconv=False,
                 deconv_dim=256, deconv_kernel=4, use_deconv_output=False, up_scale=1,
                 up_scale_interpolate=False):
        super().__init__()
        self.deconv = None
        if use_deconv:
            self.deconv = _deconv_x2(in_channels, deconv_dim, deconv_kernel)
            _init_(self.deconv, "GaussianFill", KEYPOINT_CONV_STD)
            in_channels = deconv_dim
        if use_deconv_output:
            self.score = _deconv_x2(in_channels, num_keypoints, deconv_kernel)
        else:
            self.score = nn.Conv2d(in_channels, num_keypoints, 1)
        _init_(self.score, weight_fill, KEYPOINT_OUTPUT_STD)
        self.upsample = (BilinearUpsample(up_scale, clamp_edges=up_scale_interpolate)
                         if up_scale > 1 else None)

    def output_size(self, input_size):
        """Side of the heatmaps predicted from an input map of side ``input_size``."""
        size = input_size
        for layer in (self.deconv, self.score):
            if isinstance(layer, nn.ConvTranspose2d):
                size = (size - 1) * 2 - 2 * layer.padding[0] + layer.kernel_size[0]
        return size * (self.upsample.factor if self.upsample is not None else 1)

    def forward(self, x):
        if self.deconv is not None:
            x = F.relu(self.deconv(x))
        x = self.score(x)
        return x if self.upsample is None else self.upsample(x)


# ---- targets, loss, decoding ----------------------------------------------------------------
def visible_keypoint_in_box(keypoints, boxes):
    """(R,) bool: whether row r has a keypoint with v > 0 inside boxes[r] (edges included).

    keypoints: (R, K, 3) (x, y, v); boxes: (R, 4) x1y1x2y2, same frame.
    """
    x, y, v = keypoints.unbind(-1)
    x1, y1, x2, y2 = (c[:, None] for c in boxes.unbind(-1))
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    return ((v > 0) & inside).any(dim=1)


def keypoints_to_heatmap_labels(keypoints, rois, heatmap_size):
    """Detectron's keypoints_to_heatmap_labels: the heatmap cell of each keypoint in its RoI.

    keypoints: (R, K, 3) (x, y, v) in the rois' frame; rois: (R, 4) x1y1x2y2.
    A keypoint maps from [x1, x2) to cell floor((x - x1) * M / (x2 - x1)) (one exactly on the
    right / bottom edge goes to cell M - 1). Returns (labels (R, K) int64 = y_cell * M +
    x_cell, 0 where invalid; valid (R, K) bool: v > 0 and the cell inside the M x M map).
    """
    m = heatmap_size
    x1, y1, x2, y2 = (c[:, None] for c in rois.unbind(-1))
    x, y, v = keypoints.to(rois.dtype).unbind(-1)
    on_right, on_bottom = x == x2, y == y2
    x = ((x - x1) * (m / (x2 - x1))).floor()
    y = ((y - y1) * (m / (y2 - y1))).floor()
    x = torch.where(on_right, torch.full_like(x, m - 1), x)
    y = torch.where(on_bottom, torch.full_like(y, m - 1), y)
    valid = (v > 0) & (x >= 0) & (y >= 0) & (x < m) & (y < m)
    labels = torch.where(valid, y * m + x, torch.zeros_like(x)).to(torch.int64)
    return labels, valid


def keypoint_rcnn_loss(heatmap_logits, labels, valid, normalizer=None, weight=1.0):
    """Softmax cross-entropy over the M*M positions of each (RoI, keypoint) map.

    heatmap_logits: (R, K, M, M). labels: (R, K) int64 cells; valid: (R, K) bool.
    normalizer: None divides the summed loss by the valid keypoints
    (KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS); a number divides it by that instead (Detectron:
    images x BATCH_SIZE_PER_IM x FG_FRACTION x NUM_KEYPOINTS). Returns ``weight`` x the
    normalized sum (0, still connected to the logits, when nothing is valid).
    """
    flat = heatmap_logits.flatten(2).flatten(0, 1)
    losses = F.cross_entropy(flat, labels.flatten(), reduction="none")
    total = (losses * valid.flatten()).sum()
    if normalizer is None:
        normalizer = valid.sum().clamp(min=1)
    return weight * total / normalizer


def heatmaps_to_keypoints(heatmaps, boxes, min_size=0, normalized_scores=False):
    """Detectron's heatmaps_to_keypoints: keypoint locations from heatmap logits.

    heatmaps: (N, K, M, M) logits. boxes: (N, 4) x1y1x2y2 in the pixels to predict in.
    Each map is resized (bicubic) to ceil(box width) x ceil(box height) cells (at least
    ``min_size``, KRCNN.INFERENCE_MIN_SIZE), its argmax cell taken, and the cell centre (+0.5)
    mapped back into the box. Returns (keypoints (N, K, 3) float32 (x, y, logit at the
    argmax), probs (N, K) float32: the spatial softmax of the resized map at the argmax).
    With ``normalized_scores`` (KRCNN.NORMALIZED_KEYPOINT_SCORES) the third value is
    detectron2's score instead: exp(0) / sum of exp(heatmap - the resized map's maximum) over
    the M x M heatmap, comparable between objects of different sizes.
    """
    n, k = heatmaps.shape[:2]
    keypoints = heatmaps.new_zeros((n, k, 3), dtype=torch.float32)
    probs = heatmaps.new_zeros((n, k), dtype=torch.float32)
    if n == 0:
        return keypoints, probs
    boxes = boxes.to(torch.float32)
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    map_widths = widths.ceil().clamp(min=min_size).to(torch.int64).tolist()
    map_heights = heights.ceil().clamp(min=min_size).to(torch.int64).tolist()
    for i in range(n):
        roi_map = F.interpolate(heatmaps[i:i + 1].float(), size=(map_heights[i], map_widths[i]),
                                mode="bicubic", align_corners=False)[0].flatten(1)
        best, pos = roi_map.max(dim=1)
        x_int, y_int = pos % map_widths[i], pos // map_widths[i]
        keypoints[i, :, 0] = (x_int + 0.5) * (widths[i] / map_widths[i]) + boxes[i, 0]
        keypoints[i, :, 1] = (y_int + 0.5) * (heights[i] / map_heights[i]) + boxes[i, 1]
        keypoints[i, :, 2] = best
        # softmax at the maximum: exp(0) / sum(exp(map - max))
        probs[i] = 1.0 / torch.exp(roi_map - best[:, None]).sum(dim=1)
        if normalized_scores:
            keypoints[i, :, 2] = 1.0 / torch.exp(heatmaps[i].float().flatten(1)
                                                 - best[:, None]).sum(dim=1)
    return keypoints, probs


class KeypointROIHeads(nn.Module):
    """Pooler -> keypoint head -> predictor, on fg RoIs (training) or on detections (inference).

    pooler: RoIPooler at KRCNN.ROI_XFORM_RESOLUTION. head: module with ``out_channels``.
    predictor: KeypointPredictor. in_features: feature names to pool from. num_keypoints:
    KRCNN.NUM_KEYPOINTS. loss_weight: KRCNN.LOSS_WEIGHT. fg_rois_per_image: None to normalize
    the loss by the visible keypoints (KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS), else
    TRAIN.BATCH_SIZE_PER_IM x TRAIN.FG_FRACTION, so that the loss is divided by images x
    fg_rois_per_image x num_keypoints. inference_min_size: KRCNN.INFERENCE_MIN_SIZE.
    min_keypoint_count: KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH, or None for no check
    (see ``loss``). normalized_scores: KRCNN.NORMALIZED_KEYPOINT_SCORES (heatmaps_to_keypoints).
    decode_in_input_pixels: decode keypoints in the pixels of the image the model saw, which
    the model's io maps back (MODEL.RESCALE_PER_AXIS, detectron2); False: in the original
    image's (Detectron).
    """

    def __init__(self, pooler, head, predictor, in_features, num_keypoints, *, loss_weight=1.0,
                 fg_rois_per_image=None, inference_min_size=0, min_keypoint_count=None,
                 normalized_scores=False, decode_in_input_pixels=False):
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.in_features = list(in_features)
        self.num_keypoints = num_keypoints
        self.loss_weight = loss_weight
        self.fg_rois_per_image = fg_rois_per_image
        self.inference_min_size = inference_min_size
        self.normalized_scores = normalized_scores
        self.decode_in_input_pixels = decode_in_input_pixels
        self.min_keypoint_count = min_keypoint_count

    def heatmap_logits(self, features, boxes_per_image):
        """features: {name: (N, C, H, W)}; boxes_per_image: [(Ni, 4)] -> (sum Ni, K, M, M)."""
        x = self.pooler([features[f] for f in self.in_features], boxes_per_image)
        return self.predictor(self.head(x))

    def forward(self, features, instances, gt_instances=None, scales=None):
        """Training (``gt_instances`` given): ``instances`` are BoxROIHeads' sampled RoIs
        [Instances(boxes, classes, matched_gt)], ``gt_instances`` [Instances(keypoints (G, K, 3),
        ...)], all in resized-image pixels; returns (instances, {"loss_kps": scalar}).

        Inference: ``instances`` are detections [Instances(boxes, scores, classes)] in
        resized-image pixels, ``scales`` the images' resize factors; returns (copies with
        ``keypoints`` (N, K, 3) (x, y, logit) in original-image pixels and ``keypoint_probs``
        (N, K), {}).
        """
        if gt_instances is not None:
            return instances, {"loss_kps": self.loss(features, instances, gt_instances)}
        return self.inference(features, instances, scales), {}

    def _gt_keypoints(self, gt):
        if not gt.has("keypoints"):
            raise DatasetError(
                "Keypoint R-CNN training needs keypoints, but the ground truth of an image has "
                "none (its dataset has no keypoint annotations); use a keypoint dataset or set "
                "MODEL.KEYPOINTS_ON False")
        if gt.keypoints.shape[1] != self.num_keypoints:
            raise DatasetError(
                f"the dataset has {gt.keypoints.shape[1]} keypoints per instance but "
                f"KRCNN.NUM_KEYPOINTS is {self.num_keypoints}; set KRCNN.NUM_KEYPOINTS to "
                f"{gt.keypoints.shape[1]}")
        return gt.keypoints

    def select_rois(self, rois, gt_instances):
        """Detectron's keypoint RoIs: fg RoIs whose matched ground truth has a keypoint with
        v > 0 inside the RoI. Returns per image (Boxes (R, 4), their gt keypoints (R, K, 3))."""
        selected = []
        for image_rois, gt in zip(rois, gt_instances):
            fg = image_rois[image_rois.classes > 0]
            if len(fg) == 0:
                selected.append((fg.boxes, fg.boxes.tensor.new_zeros((0, self.num_keypoints, 3))))
                continue
            keypoints = self._gt_keypoints(gt)[fg.matched_gt].to(fg.boxes.dtype)
            keep = visible_keypoint_in_box(keypoints, fg.boxes.tensor)
            selected.append((fg.boxes[keep], keypoints[keep]))
        return selected

    def loss(self, features, rois, gt_instances):
        """Keypoint loss over the keypoint RoIs of every image; a batch without any scores one
        RoI with nothing valid, so the loss (0) stays connected to every weight.

        With ``min_keypoint_count``, a minibatch whose keypoint RoIs hold that many visible
        keypoints (in their heatmaps) or fewer is invalid (Detectron's
        finalize_keypoint_minibatch) and its keypoint loss is 0, still connected to the
        weights. Detectron's data loader dropped such a minibatch and drew the next one;
        here RoIs are sampled inside the model, so the other losses of those images still
        train, and each data-parallel process decides for its own minibatch with the
        gradient reduction unchanged.
        """
        selected = self.select_rois(rois, gt_instances)
        if sum(len(boxes) for boxes, _ in selected) == 0:
            first = rois[0].boxes[:1]
            selected = [(first, first.tensor.new_zeros((len(first), self.num_keypoints, 3)))]
        logits = self.heatmap_logits(features, [boxes for boxes, _ in selected])
        boxes = Boxes.cat([b for b, _ in selected]).tensor
        labels, valid = keypoints_to_heatmap_labels(torch.cat([k for _, k in selected]), boxes,
                                                    logits.shape[-1])
        normalizer = None
        if self.fg_rois_per_image is not None:
            normalizer = len(rois) * self.fg_rois_per_image * self.num_keypoints
        loss = keypoint_rcnn_loss(logits.float(), labels, valid, normalizer, self.loss_weight)
        if self.min_keypoint_count is not None:
            loss = torch.where(valid.sum() > self.min_keypoint_count, loss, loss * 0.0)
        return loss

    @torch.no_grad()
    def inference(self, features, detections, scales):
        logits = self.heatmap_logits(features, [d.boxes for d in detections])
        results = []
        per_image = logits.split([len(d) for d in detections])
        for image_detections, image_logits, scale in zip(detections, per_image, scales):
            boxes = image_detections.boxes
            if not self.decode_in_input_pixels:
                boxes = boxes / scale
            keypoints, probs = heatmaps_to_keypoints(image_logits, boxes.tensor,
                                                     self.inference_min_size,
                                                     self.normalized_scores)
            out = image_detections[:]
            out.keypoints = keypoints
            out.keypoint_probs = probs
            results.append(out)
        return results


# ---- config ---------------------------------------------------------------------------------
def v1convx_head_from_config(cfg, in_channels):
    k = cfg.KRCNN
    return KeypointConvHead(in_channels, k.NUM_STACKED_CONVS, k.CONV_HEAD_DIM,
                            k.CONV_HEAD_KERNEL, k.CONV_INIT, precision=cfg.MODEL.HEAD_PRECISION)


@register_instance_head("keypoint_heads", "MODEL.KEYPOINTS_ON")
def build_keypoint_roi_heads(cfg, backbone_out_channels, backbone_strides, box_head=None):
    """KeypointROIHeads from KRCNN.* on the FPN levels ROI_MIN_LEVEL..ROI_MAX_LEVEL (FPN.FPN_ON
    and FPN.MULTILEVEL_ROIS) or on the backbone's last map.

    backbone_out_channels / backbone_strides: {feature name: channels / stride}; the box
    head is not used.
    Raises ConfigError when KRCNN.NUM_KEYPOINTS is unset, KRCNN.UP_SCALE is odd, KRCNN.NMS_OKS
    is on, or KRCNN.HEATMAP_SIZE differs from what the head predicts.
    """
    k = cfg.KRCNN
    if k.NUM_KEYPOINTS < 1:
        raise ConfigError(f"KRCNN.NUM_KEYPOINTS is {k.NUM_KEYPOINTS}; set it to the keypoints "
                          "per instance of the dataset (17 for COCO persons)")
    if k.UP_SCALE > 1 and k.UP_SCALE % 2:
        raise ConfigError(f"KRCNN.UP_SCALE must be <= 1 (no upsampling) or even, got {k.UP_SCALE}")
    if k.NMS_OKS:
        raise ConfigError("KRCNN.NMS_OKS (keypoint OKS-NMS at test time) is not implemented; "
                          "set it to False (as every Detectron keypoint baseline does)")
    in_features = roi_feature_names(cfg, backbone_out_channels)
    head = ROI_KEYPOINTS_HEAD.get(k.ROI_KEYPOINTS_HEAD)(cfg, backbone_out_channels[in_features[0]])
    predictor = KeypointPredictor(
        head.out_channels, k.NUM_KEYPOINTS, k.CONV_INIT, use_deconv=k.USE_DECONV,
        deconv_dim=k.DECONV_DIM, deconv_kernel=k.DECONV_KERNEL,
        use_deconv_output=k.USE_DECONV_OUTPUT, up_scale=max(k.UP_SCALE, 1),
        up_scale_interpolate=k.UP_SCALE_INTERPOLATE)
    predicted = predictor.output_size(k.ROI_XFORM_RESOLUTION)
    if predicted != k.HEATMAP_SIZE:
        raise ConfigError(
            f"KRCNN.HEATMAP_SIZE is {k.HEATMAP_SIZE}, but the keypoint head on "
            f"{k.ROI_XFORM_RESOLUTION}x{k.ROI_XFORM_RESOLUTION} RoI features "
            f"(KRCNN.ROI_XFORM_RESOLUTION, USE_DECONV={k.USE_DECONV}, "
            f"USE_DECONV_OUTPUT={k.USE_DECONV_OUTPUT}, DECONV_KERNEL={k.DECONV_KERNEL}, "
            f"UP_SCALE={k.UP_SCALE}) predicts {predicted}x{predicted} heatmaps; set "
            f"KRCNN.HEATMAP_SIZE to {predicted}")
    pooler = roi_pooler_from_config(cfg, k, [backbone_strides[name] for name in in_features])
    fg_rois_per_image = None
    if not k.NORMALIZE_BY_VISIBLE_KEYPOINTS:
        fg_rois_per_image = cfg.TRAIN.BATCH_SIZE_PER_IM * cfg.TRAIN.FG_FRACTION
    # Detectron checked minibatches only where its data loader sampled the RoIs: training on
    # precomputed proposals (its end-to-end RPN training computed the check and ignored it).
    min_keypoint_count = None if cfg.RPN.RPN_ON else k.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH
    return KeypointROIHeads(pooler, head, predictor, in_features, k.NUM_KEYPOINTS,
                            loss_weight=k.LOSS_WEIGHT, fg_rois_per_image=fg_rois_per_image,
                            inference_min_size=k.INFERENCE_MIN_SIZE,
                            min_keypoint_count=min_keypoint_count,
                            normalized_scores=k.NORMALIZED_KEYPOINT_SCORES,
                            decode_in_input_pixels=cfg.MODEL.RESCALE_PER_AXIS)
