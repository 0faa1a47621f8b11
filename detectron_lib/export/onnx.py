"""Export of a detector to ONNX: one uint8 BGR image in, detections in its pixels out.

The graph holds the model's whole image contract (modeling.image_io): the resize to
TEST.SCALE / TEST.MAX_SIZE (PIL's 8-bit bilinear resize, bit for bit), normalization,
padding to FPN.COARSEST_STRIDE, then the body, the heads and the post-processing (decoding,
NMS, box voting, the per-image limit) and the rescaling to the input image. Inputs and
outputs:

  image   (3, H, W) uint8 BGR, H and W dynamic
  boxes   (N, 4) float32 x1y1x2y2 in input-image pixels, in the model's box convention
  scores  (N,) float32
  classes (N,) int64, 1..K (RPN-only models have none: their scores are the proposals'
          objectness probabilities, as the PyTorch model gives them)
  mask_probs (N, M, M) float32, with mask heads: each detection's soft mask in its box; the
          runtime (inference.onnx_runtime) pastes it into the image as the model's io does
  keypoint_heatmaps (N, K, M, M) float32, with keypoint heads: each detection's heatmap
          logits; the runtime decodes them in the detection's box with the model's own
          heatmaps_to_keypoints (a bicubic resize to each box's size: one size per detection)

The TorchScript exporter traces ``OnnxDetector`` with the detectron:: ops translated to
standard ONNX operators (export.onnx_ops). The graph runs in float32.
"""
from io import BytesIO
import warnings
from pathlib import Path

import torch
from torch import nn

from detectron_lib.errors import ConfigError
from detectron_lib.export import onnx_ops
from detectron_lib.modeling.backbone.build import body_features
from detectron_lib.modeling.image_io import normalize_image
from detectron_lib.modeling.meta_arch import GeneralizedRCNN
from detectron_lib.modeling.retinanet import RetinaNet
from detectron_lib.utils.io import atomic_write

INPUT = "image"
# What the runtime needs beyond the graph, in the model file's metadata_props
METADATA_KEYS = ("box_plus_one", "mask_thresh", "legacy_paste", "keypoint_min_size",
                 "keypoint_normalized_scores")


# PIL's 8-bit resampling: coefficients in fixed point with this many fractional bits
_PRECISION_BITS = 22


def _pil_bilinear_taps(in_size, out_size):
    """PIL's bilinear coefficients (Resample.c precompute_coeffs, normalize_coeffs_8bpc) of a
    resize from ``in_size`` to ``out_size`` pixels (0-d int64 tensors): (first input pixel of
    each tap (out, K) int64, fixed-point weights (out, K) float64, zero past the filter).
    Sizes enter the arithmetic as (1,) tensors: the exporter computes 0-d ones in float32."""
    in_pixels = in_size.reshape(1).to(torch.float64)
    scale = in_pixels / out_size.reshape(1).to(torch.float64)
    filterscale = scale.clamp(min=1.0)  # the bilinear support (1) widened when shrinking
    num_taps = (torch.ceil(filterscale) * 2 + 1).to(torch.int64).reshape(())
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = torch.floor(center - filterscale + 0.5).clamp(min=0)
    count = torch.minimum(torch.floor(center + filterscale + 0.5), in_pixels) - first
    taps = torch.arange(num_taps, dtype=torch.float64)
    weights = (1.0 - ((taps[None] + first[:, None] - center[:, None] + 0.5)
                      * (1.0 / filterscale)).abs()).clamp(min=0.0)
    weights = torch.where(taps[None] < count[:, None], weights, torch.zeros_like(weights))
    weights = weights / weights.sum(dim=1, keepdim=True)
    fixed = torch.floor(0.5 + weights * float(1 << _PRECISION_BITS))
    index = torch.minimum(first[:, None] + taps[None], in_pixels - 1)
    return index.to(torch.int64), fixed


def _pil_resample(image, axis, out_size):
    """One pass of PIL's 8-bit bilinear resample of ``image`` (C, H, W) float64 of integers
    along ``axis`` (1 or 2): integer sums with rounding, clipped to 0..255."""
    index, fixed = _pil_bilinear_taps(torch._shape_as_tensor(image)[axis], out_size)
    if axis == 1:
        gathered = image[:, index] * fixed[None, :, :, None]  # (C, out, K, W)
        sums = gathered.sum(dim=2)
    else:
        gathered = image[:, :, index] * fixed  # (C, H, out, K)
        sums = gathered.sum(dim=3)
    return torch.floor((sums + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS)).clamp(0, 255)


def pil_bilinear_resize(image, size):
    """(3, H, W) uint8 -> (3, h, w) uint8 at ``size`` (2,) int64, bit for bit PIL's
    Image.resize(BILINEAR) that the io's resize runs (horizontal pass, then vertical), in
    tensor ops that trace into the graph (ONNX Resize's antialias differs from PIL by up to
    13 levels when shrinking)."""
    out = _pil_resample(image.to(torch.float64), 2, size[1])
    return _pil_resample(out, 1, size[0]).to(torch.uint8)


class _PadToMultiple(torch.autograd.Function):
    """(3, H, W) -> (1, 3, H', W') zero-padded at the bottom and right to multiples of
    ``divisor`` (the io's pad_to_batch of one image)."""

    @staticmethod
    def forward(ctx, image, divisor):
        height, width = image.shape[1:]
        if divisor > 1:
            height, width = -(-height // divisor) * divisor, -(-width // divisor) * divisor
        batch = image.new_zeros((1, 3, height, width))
        batch[0, :, :image.shape[1], :image.shape[2]] = image
        return batch

    @staticmethod
    def symbolic(g, image, divisor):
        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        size = g.op("Slice", g.op("Shape", image), const([1]), const([3]))
        step = const([max(divisor, 1)])
        padded = g.op("Mul", g.op("Div", g.op("Add", size, g.op("Sub", step, const([1]))), step),
                      step)
        pads = g.op("Concat", const([0, 0, 0, 0]), g.op("Sub", padded, size), axis_i=0)
        return g.op("Unsqueeze", g.op("Pad", image, pads), const([0]))


def resize_geometry(image, target_size, max_size):
    """(scale (1,) float64, size (2,) int64) of the io's resize of a (3, H, W) image, in
    tensor ops so that the graph computes them from the input's shape (data.transforms'
    compute_resize_scale and resized_size), in float64 as they are."""
    hw = torch._shape_as_tensor(image)[1:].to(torch.float64)
    short, long = hw.amin(0, keepdim=True), hw.amax(0, keepdim=True)
    scale = float(target_size) / short
    scale = torch.where(torch.round(scale * long) > max_size, float(max_size) / long, scale)
    return scale, torch.round(hw * scale).clamp(min=1).to(torch.int64)


class OnnxDetector(nn.Module):
    """The exported graph: ``model`` (GeneralizedRCNN or RetinaNet, eval, float32) on one
    (3, H, W) uint8 image -> (boxes, scores, classes[, mask_probs]) as the module docstring
    says. Only the code below is the export's own: the layers, anchors, decoding and
    post-processing are the model's."""

    def __init__(self, model):
        super().__init__()
        check_exportable(model)
        self.model = model

    def forward(self, image):
        io = self.model.io
        scale, size = resize_geometry(image, io.test_scale, io.test_max_size)
        scale = scale.to(torch.float32)[0]  # as a float32 tensor meets a Python float
        resized = pil_bilinear_resize(image, size)
        normalized = normalize_image(resized, io.pixel_means, io.pixel_stds, io.channel_order)
        batch = _PadToMultiple.apply(normalized, io.size_divisibility)
        image_size = (size[0], size[1])
        features = body_features(self.model.backbone, batch, "float32")
        if isinstance(self.model, RetinaNet):
            detections = self._retinanet(features, image_size)
        else:
            detections = self._rcnn(features, image_size, scale)
        detections = io.postprocess([detections], [scale])[0]
        return tuple(detections.boxes.tensor if name == "boxes" else getattr(detections, name)
                     for name in output_names(self.model))

    def _retinanet(self, features, image_size):
        return self.model.detect(*self.model.predict(features), [image_size])[0]

    def _rcnn(self, features, image_size, scale):
        """The model's own R-CNN inference, but keypoints stay heatmaps (module docstring)."""
        model = self.model
        (proposals,), _ = model.rpn([image_size], features, [scale])
        if model.roi_heads is None:
            proposals.scores = torch.sigmoid(proposals.objectness_logits)
            return proposals
        (detections,) = model.roi_heads.inference(features, [proposals])
        if model.mask_heads is not None:
            (detections,) = model.mask_heads.inference(features, [detections])
        if model.keypoint_heads is not None:
            detections.keypoint_heatmaps = model.keypoint_heads.heatmap_logits(
                features, [detections.boxes]).float()
        return detections


def output_names(model):
    """The graph's outputs for ``model`` (see the module docstring)."""
    if isinstance(model, GeneralizedRCNN) and model.roi_heads is None:
        return ["boxes", "scores"]
    names = ["boxes", "scores", "classes"]
    if getattr(model, "mask_heads", None) is not None:
        names.append("mask_probs")
    if getattr(model, "keypoint_heads", None) is not None:
        names.append("keypoint_heatmaps")
    return names


def check_exportable(model):
    """A ConfigError naming the switch when ``model`` has what the export does not cover."""
    if not isinstance(model, (GeneralizedRCNN, RetinaNet)):
        raise ConfigError(f"ONNX export covers generalized_rcnn and retinanet models, not "
                          f"{type(model).__name__}")
    unsupported = []
    if model.io.rescale_per_axis:
        unsupported.append("MODEL.RESCALE_PER_AXIS")
    if getattr(model, "soft_nms", None) is not None or getattr(
            getattr(model, "roi_heads", None), "soft_nms", None) is not None:
        unsupported.append("TEST.SOFT_NMS.ENABLED")
    if isinstance(model, GeneralizedRCNN):
        if model.rpn is None:
            unsupported.append("RPN.RPN_ON False (precomputed proposals)")
        heads = model.roi_heads
        # R-FCN's heads pool position-sensitively in their predictor, others in a pooler
        pooling = getattr(heads, "pooler", None) or getattr(heads, "predictor", None)
        if heads is not None and (pooling.method != "RoIAlign" or not heads.bbox_reg
                                  or heads.dedup_boxes > 0):
            unsupported.append("FAST_RCNN.ROI_XFORM_METHOD other than RoIAlign / TEST.BBOX_REG "
                               "False")
        unsupported += [f"{name} (the {name} head)" for name in model.instance_head_names
                        if name not in ("mask_heads", "keypoint_heads")]
    if unsupported:
        raise ConfigError(f"ONNX export does not cover {', '.join(unsupported)}; turn it off "
                          "in the config to export")


def export_onnx(model, output, sample_image):
    """Write ``model`` (eval mode, float32) as an ONNX graph to ``output`` (atomically),
    traced on ``sample_image`` (3, H, W) uint8, with the box convention and mask
    binarization in its metadata; returns the output path."""
    import onnx

    onnx_ops.register()
    exportable = OnnxDetector(model).eval()
    names = output_names(model)
    dynamic_axes = {INPUT: {1: "height", 2: "width"}}
    dynamic_axes.update({name: {0: "detections"} for name in names})
    buffer = BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's warnings name the Python values it freezes (the field lengths that
        # Instances checks, tests for empty tensors); none of them reaches an output.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Deprecated since torch 2.9 but still shipped; the dynamo exporter cannot yet take
        # the data-dependent counts (NMS, thresholds) of the post-processing.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        torch.onnx.export(exportable, (sample_image,), buffer, dynamo=False,
                          opset_version=onnx_ops.OPSET, input_names=[INPUT], output_names=names,
                          dynamic_axes=dynamic_axes)
    graph = onnx.load_from_string(buffer.getvalue())
    keypoints = getattr(model, "keypoint_heads", None)
    anchor_generator = model.anchor_generator if isinstance(model, RetinaNet) \
        else model.rpn.anchor_generator
    values = (int(anchor_generator.convention.plus_one),
              model.io.mask_thresh, int(model.io.legacy_paste),
              keypoints.inference_min_size if keypoints is not None else 0,
              int(keypoints is not None and keypoints.normalized_scores))
    onnx.helper.set_model_props(graph, {f"detectron.{key}": str(value)
                                        for key, value in zip(METADATA_KEYS, values)})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output, "wb") as f:
        f.write(graph.SerializeToString())
    return output


def export_model(cfg, weights, output):
    """`detectron export`: the config's model with ``weights`` (as `detectron infer` loads
    them), traced on a mid-grey image of TEST.SCALE, written to ``output``."""
    from detectron_lib.inference.engine import load_model_for_inference

    model = load_model_for_inference(cfg, weights, torch.device("cpu"))
    check_exportable(model)
    scale = cfg.TEST.SCALE
    sample = torch.full((3, scale, scale * 4 // 3), 128, dtype=torch.uint8)
    return export_onnx(model, output, sample)
