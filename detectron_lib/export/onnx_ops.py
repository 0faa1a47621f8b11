"""ONNX translations of the detectron:: custom ops, for torch.onnx.export (the TorchScript
exporter, opset >= 18), in standard ONNX operators ONNX Runtime runs:

  nms            NonMaxSuppression (suppress IoU > threshold, as the kernel)
  batched_nms    NonMaxSuppression over a (1, classes, N) score matrix, one class per box:
                 NMS within each class on the boxes themselves, as the kernel (no coordinate
                 offsets), then the kept boxes sorted by decreasing score
  box_iou        pairwise IoU by broadcasting
  roi_align      RoiAlign, coordinate_transformation_mode half_pixel (aligned=True) or
                 output_half_pixel (Detectron's RoIAlign: aligned=False)
  multilevel_roi_align
                 one RoiAlign per FPN level on that level's RoIs, scattered into place
  ps_roi_align   R-FCN's position-sensitive RoIAlign: RoiAlign (half_pixel) of every channel
                 into every bin, then each bin's own channel picked (C_out * B channels x B
                 bins, B = PH * PW: B times the work of the op itself, small for R-FCN's heads)
  max_pool2d     MaxPool (floor output sizes, as the kernel)

``register()`` installs them (once per process); export.onnx calls it.
"""
import torch
from torch.onnx import symbolic_helper

OPSET = 18  # Resize's antialias (the PIL bilinear resize of the model's io) needs 18
_NAMESPACE = "detectron"
_registered = False
# The score a box has in the NMS score matrix for classes other than its own.
_OTHER_CLASS = -3.0e38


def _const(g, value, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _nms_selected(g, boxes, scores_matrix, iou_threshold):
    """Indices (K,) of the boxes NonMaxSuppression keeps: boxes (N, 4), scores (C, N)."""
    selected = g.op("NonMaxSuppression", g.op("Unsqueeze", boxes, _const(g, [0])),
                    g.op("Unsqueeze", scores_matrix, _const(g, [0])),
                    _const(g, [2 ** 62]), _const(g, [iou_threshold], torch.float32))
    index = g.op("Gather", selected, _const(g, 2), axis_i=1)
    return index


def _by_decreasing_score(g, index, scores):
    """``index`` reordered by decreasing scores[index] (TopK over all of them)."""
    kept_scores = g.op("Gather", scores, index, axis_i=0)
    count = g.op("Shape", kept_scores)
    _, order = g.op("TopK", kept_scores, count, axis_i=0, largest_i=1, sorted_i=1, outputs=2)
    return g.op("Gather", index, order, axis_i=0)


@symbolic_helper.parse_args("v", "v", "f")
def _nms(g, boxes, scores, iou_threshold):
    return _nms_selected(g, boxes, g.op("Unsqueeze", scores, _const(g, [0])), iou_threshold)


@symbolic_helper.parse_args("v", "v", "v", "f")
def _batched_nms(g, boxes, scores, idxs, iou_threshold):
    idxs = g.op("Cast", idxs, to_i=7)  # int64
    # classes = max(idxs, 0) + 1 (an empty input has one class and no box)
    num_classes = g.op("Add", g.op("ReduceMax", g.op("Concat", idxs, _const(g, [0]), axis_i=0),
                                   keepdims_i=1), _const(g, [1]))
    count = g.op("Shape", scores)
    matrix = g.op("Expand", _const(g, [_OTHER_CLASS], torch.float32),
                  g.op("Concat", num_classes, count, axis_i=0))
    scores32 = g.op("Cast", scores, to_i=1)
    matrix = g.op("ScatterElements", matrix, g.op("Unsqueeze", idxs, _const(g, [0])),
                  g.op("Unsqueeze", scores32, _const(g, [0])), axis_i=0)
    # The other classes' entries stay below the score threshold and are never selected.
    selected = g.op("NonMaxSuppression", g.op("Unsqueeze", g.op("Cast", boxes, to_i=1), _const(g, [0])),
                    g.op("Unsqueeze", matrix, _const(g, [0])), _const(g, [2 ** 62]),
                    _const(g, [iou_threshold], torch.float32),
                    _const(g, [_OTHER_CLASS / 2], torch.float32))
    index = g.op("Gather", selected, _const(g, 2), axis_i=1)
    return _by_decreasing_score(g, index, scores)


def _box_iou(g, boxes1, boxes2):
    def corners(boxes, start, axis):
        part = g.op("Slice", boxes, _const(g, [start]), _const(g, [start + 2]), _const(g, [1]))
        return g.op("Unsqueeze", part, _const(g, [axis]))

    def area(boxes):
        size = g.op("Sub", g.op("Slice", boxes, _const(g, [2]), _const(g, [4]), _const(g, [1])),
                    g.op("Slice", boxes, _const(g, [0]), _const(g, [2]), _const(g, [1])))
        return g.op("ReduceProd", size, _const(g, [1]), keepdims_i=0)

    lt = g.op("Max", corners(boxes1, 0, 1), corners(boxes2, 0, 0))
    rb = g.op("Min", corners(boxes1, 2, 1), corners(boxes2, 2, 0))
    wh = g.op("Relu", g.op("Sub", rb, lt))
    inter = g.op("ReduceProd", wh, _const(g, [2]), keepdims_i=0)
    union = g.op("Sub", g.op("Add", g.op("Unsqueeze", area(boxes1), _const(g, [1])),
                             g.op("Unsqueeze", area(boxes2), _const(g, [0]))), inter)
    return g.op("Div", inter, union)


def _roi_align_onnx(g, features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """RoiAlign of ``rois`` (K, 5) [batch index, x1, y1, x2, y2] on ``features``."""
    batch_index = g.op("Cast", g.op("Squeeze", g.op(
        "Slice", rois, _const(g, [0]), _const(g, [1]), _const(g, [1])), _const(g, [1])), to_i=7)
    boxes = g.op("Slice", rois, _const(g, [1]), _const(g, [5]), _const(g, [1]))
    return g.op("RoiAlign", features, boxes, batch_index,
                coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
                mode_s="avg", output_height_i=pooled_h, output_width_i=pooled_w,
                sampling_ratio_i=max(sampling_ratio, 0), spatial_scale_f=spatial_scale)


@symbolic_helper.parse_args("v", "v", "f", "i", "i", "i", "b")
def _roi_align(g, features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    return _roi_align_onnx(g, features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                           aligned)


@symbolic_helper.parse_args("v", "v", "v", "fs", "i", "i", "i", "b")
def _multilevel_roi_align(g, features, rois, levels, scales, pooled_h, pooled_w, sampling_ratio,
                          aligned):
    features = symbolic_helper._unpack_list(features)
    channels = g.op("Slice", g.op("Shape", features[0]), _const(g, [1]), _const(g, [2]))
    shape = g.op("Concat", g.op("Shape", levels), channels, _const(g, [pooled_h, pooled_w]),
                 axis_i=0)
    out = g.op("ConstantOfShape", shape, value_t=torch.zeros(1, dtype=torch.float32))
    for level, (feature, scale) in enumerate(zip(features, scales)):
        members = g.op("NonZero", g.op("Equal", levels, _const(g, level)))  # (1, K_l)
        member_rois = g.op("Gather", rois, g.op("Squeeze", members, _const(g, [0])), axis_i=0)
        pooled = _roi_align_onnx(g, feature, member_rois, scale, pooled_h, pooled_w,
                                 sampling_ratio, aligned)
        out = g.op("ScatterND", out, g.op("Transpose", members, perm_i=[1, 0]), pooled)
    return out


@symbolic_helper.parse_args("v", "v", "f", "i", "i", "i")
def _ps_roi_align(g, features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    bins = pooled_h * pooled_w
    pooled = _roi_align_onnx(g, features, rois, spatial_scale, pooled_h, pooled_w,
                             sampling_ratio, True)                       # (K, C_out * B, PH, PW)
    # Channel c * B + b of bin b' is kept where b == b' (torchvision's layout).
    grouped = g.op("Reshape", pooled, _const(g, [0, -1, bins, bins]))  # (K, C_out, B, B)
    own_bin = g.op("ReduceSum", g.op("Mul", grouped, _const(g, torch.eye(bins), torch.float32)),
                   _const(g, [3]), keepdims_i=0)                        # (K, C_out, B)
    return g.op("Reshape", own_bin, _const(g, [0, -1, pooled_h, pooled_w]))


@symbolic_helper.parse_args("v", "is", "is", "is")
def _max_pool2d(g, x, kernel_size, stride, padding):
    """(MaxPool's output, its argmax indices: unused at inference, ONNX's layout)."""
    return g.op("MaxPool", x, kernel_shape_i=kernel_size, strides_i=stride,
                pads_i=padding + padding, outputs=2)


def register():
    """Install the translations of the detectron:: ops (idempotent)."""
    global _registered
    if _registered:
        return
    for name, function in (("nms", _nms), ("batched_nms", _batched_nms), ("box_iou", _box_iou),
                           ("roi_align", _roi_align),
                           ("multilevel_roi_align", _multilevel_roi_align),
                           ("ps_roi_align", _ps_roi_align),
                           ("max_pool2d", _max_pool2d)):
        torch.onnx.register_custom_op_symbolic(f"{_NAMESPACE}::{name}", function, OPSET)
    _registered = True
