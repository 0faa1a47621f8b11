"""Pure-PyTorch reference implementations of every op in detectron_lib.ops.

Written for clarity: Python loops over RoIs and boxes, vectorized inside. They define the
semantics the C++ kernels are tested against, run when the "reference" backend is
selected, and get their gradients from autograd. Arguments are those of the kernels:
rois are (K, 5) [batch_index, x1, y1, x2, y2] in image pixels, output_size a (PH, PW) pair.
"""
import math

import torch
import torch.nn.functional as F

SOFT_NMS_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}


# ---- RoIAlign family ------------------------------------------------------------------------


def _axis_samples(start, bin_size, bins, grid, size):
    """Bilinear taps of the grid samples along one axis of a RoI.

    start, bin_size: 0-dim tensors in feature pixels; grid: samples per bin; size: H or W.
    Returns (low, high, w_low, w_high), each (bins * grid,): the two feature rows (or
    columns) each sample reads and their weights; samples outside [-1, size] weigh zero.
    """
    offsets = (torch.arange(grid, dtype=start.dtype) + 0.5) * bin_size / grid
    pos = (start + torch.arange(bins, dtype=start.dtype)[:, None] * bin_size + offsets[None, :]).reshape(-1)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    zero = torch.zeros_like(frac)
    return low, high, torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)


def _align_bins(feature, box, spatial_scale, output_size, sampling_ratio, aligned, min_size_one):
    """Average of the bilinear samples of every bin of one RoI, for all channels.

    feature: (C, H, W); box: (4,) x1y1x2y2 in image pixels. Returns (C, PH, PW).
    min_size_one: clamp the RoI to at least 1x1 feature pixel (Detectron's unaligned mode).
    """
    pooled_h, pooled_w = output_size
    _, height, width = feature.shape
    offset = 0.5 if aligned else 0.0
    start_w, start_h = box[0] * spatial_scale - offset, box[1] * spatial_scale - offset
    roi_w = box[2] * spatial_scale - offset - start_w
    roi_h = box[3] * spatial_scale - offset - start_h
    if min_size_one:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        grid_h = max(int(math.ceil(float(roi_h / pooled_h))), 0)
        grid_w = max(int(math.ceil(float(roi_w / pooled_w))), 0)
    if grid_h == 0 or grid_w == 0:
        return feature.new_zeros((feature.size(0), pooled_h, pooled_w))
    y_low, y_high, wy_low, wy_high = _axis_samples(start_h, bin_h, pooled_h, grid_h, height)
    x_low, x_high, wx_low, wx_high = _axis_samples(start_w, bin_w, pooled_w, grid_w, width)
    samples = 0
    for rows, wy in ((y_low, wy_low), (y_high, wy_high)):
        for cols, wx in ((x_low, wx_low), (x_high, wx_high)):
            samples = samples + feature[:, rows[:, None], cols[None, :]] * (wy[:, None] * wx[None, :])
    samples = samples.reshape(feature.size(0), pooled_h, grid_h, pooled_w, grid_w)
    return samples.sum(dim=(2, 4)) / (grid_h * grid_w)


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign of torchvision.ops.roi_align. input: (N, C, H, W) -> (K, C, PH, PW)."""
    outputs = [
        _align_bins(input[int(roi[0])], roi[1:], spatial_scale, output_size, sampling_ratio,
                    aligned, min_size_one=not aligned)
        for roi in rois
    ]
    return _stack(outputs, input, rois, input.size(1), output_size)


def multilevel_roi_align(features, rois, levels, output_size, spatial_scales, sampling_ratio=-1,
                         aligned=False):
    """RoIAlign of RoI k on features[levels[k]] with spatial_scales[levels[k]]."""
    outputs = [
        _align_bins(features[int(level)][int(roi[0])], roi[1:], spatial_scales[int(level)],
                    output_size, sampling_ratio, aligned, min_size_one=not aligned)
        for roi, level in zip(rois, levels)
    ]
    return _stack(outputs, features[0], rois, features[0].size(1), output_size)


def ps_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Position-sensitive RoIAlign of torchvision.ops.ps_roi_align (half-pixel aligned)."""
    pooled_h, pooled_w = output_size
    channels_out = input.size(1) // (pooled_h * pooled_w)
    outputs = [
        _position_sensitive(_align_bins(input[int(roi[0])], roi[1:], spatial_scale, output_size,
                                        sampling_ratio, aligned=True, min_size_one=False),
                            channels_out)
        for roi in rois
    ]
    return _stack(outputs, input, rois, channels_out, output_size)


def _position_sensitive(per_channel_bins, channels_out):
    """Picks, for output channel c and bin (i, j), input channel (c * PH + i) * PW + j.

    per_channel_bins: (C_out * PH * PW, PH, PW) -> (C_out, PH, PW).
    """
    _, pooled_h, pooled_w = per_channel_bins.shape
    grouped = per_channel_bins.reshape(channels_out, pooled_h * pooled_w, pooled_h * pooled_w)
    return grouped.diagonal(dim1=1, dim2=2).reshape(channels_out, pooled_h, pooled_w)


def _stack(outputs, like, rois, channels, output_size):
    if not outputs:
        return like.new_zeros((rois.size(0), channels, *output_size))
    return torch.stack(outputs)


# ---- RoIPool family -------------------------------------------------------------------------


def _round_half_away(value):
    """C's round(): halves go away from zero (torch.round rounds them to even)."""
    return int(torch.sign(value) * torch.floor(value.abs() + 0.5))


def _pool_ranges(roi_start, roi_extent, bins, size, dtype):
    """Integer [start, end) pixel range of each bin along one axis, clipped to [0, size]."""
    bin_size = torch.tensor(roi_extent, dtype=dtype) / bins
    ranges = []
    for p in range(bins):
        start = int(torch.floor(p * bin_size)) + roi_start
        end = int(torch.ceil((p + 1) * bin_size)) + roi_start
        ranges.append((min(max(start, 0), size), min(max(end, 0), size)))
    return ranges


def _pool_bins(feature, box, spatial_scale, output_size, plus_one, reduce):
    """Max- or mean-pools every integer bin of one RoI for all channels: (C, PH, PW).

    plus_one: RoIPool's inclusive width (x2 - x1 + 1); PS-RoIPool uses x2 - x1.
    """
    x1, y1, x2, y2 = (_round_half_away(c * spatial_scale) for c in box)
    extra = 1 if plus_one else 0
    roi_w, roi_h = max(x2 - x1 + extra, 1), max(y2 - y1 + extra, 1)
    rows = _pool_ranges(y1, roi_h, output_size[0], feature.size(1), feature.dtype)
    cols = _pool_ranges(x1, roi_w, output_size[1], feature.size(2), feature.dtype)
    out = feature.new_zeros((feature.size(0), *output_size))
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            if h1 > h0 and w1 > w0:
                region = feature[:, h0:h1, w0:w1]
                out[:, i, j] = region.amax(dim=(1, 2)) if reduce == "max" else region.mean(dim=(1, 2))
    return out


def roi_pool(input, rois, output_size, spatial_scale=1.0):
    """RoIPool (Detectron's RoIPoolF, torchvision.ops.roi_pool): bin maxima, 0 if empty."""
    outputs = [_pool_bins(input[int(roi[0])], roi[1:], spatial_scale, output_size, True, "max")
               for roi in rois]
    return _stack(outputs, input, rois, input.size(1), output_size)


def ps_roi_pool(input, rois, output_size, spatial_scale=1.0):
    """Position-sensitive RoIPool (R-FCN): bin means of the bin's own channel group."""
    channels_out = input.size(1) // (output_size[0] * output_size[1])
    outputs = [
        _position_sensitive(_pool_bins(input[int(roi[0])], roi[1:], spatial_scale, output_size,
                                       False, "mean"), channels_out)
        for roi in rois
    ]
    return _stack(outputs, input, rois, channels_out, output_size)


# ---- Boxes ----------------------------------------------------------------------------------


def box_iou(boxes1, boxes2):
    """IoU of every pair, no +1 in widths: (N, 4), (M, 4) -> (N, M)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: int64 indices of the kept boxes in decreasing score order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    sorted_boxes = boxes[order]
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        iou = box_iou(sorted_boxes[i : i + 1], sorted_boxes[i + 1 :])[0]
        suppressed[i + 1 :] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each class of idxs; kept indices in decreasing score order."""
    keep = [torch.empty(0, dtype=torch.int64)]
    for label in torch.unique(idxs):
        members = torch.nonzero(idxs == label).flatten()
        keep.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(keep)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def soft_nms(boxes, scores, method="linear", sigma=0.5, iou_threshold=0.3, score_threshold=0.001):
    """Soft-NMS of Detectron's cython_nms.soft_nms (without its +1 in areas).

    Selects the remaining box of highest score, decays the scores of the remaining boxes
    that overlap it (hard: 0 above iou_threshold; linear: 1 - IoU above iou_threshold;
    gaussian: exp(-IoU^2 / sigma)) and drops a decayed box whose score falls below
    score_threshold. Returns (kept indices in selection order, their scores at selection).
    """
    method_id = SOFT_NMS_METHODS[method]
    remaining = torch.arange(len(scores))
    current = scores.clone()
    keep, kept_scores = [], []
    while len(remaining) > 0:
        best = int(torch.argmax(current[remaining]))  # first maximum
        chosen = int(remaining[best])
        keep.append(chosen)
        kept_scores.append(current[chosen])
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
        if len(remaining) == 0:
            break
        iou = box_iou(boxes[chosen : chosen + 1], boxes[remaining])[0]
        overlaps = _intersects(boxes[chosen], boxes[remaining])
        if method_id == 2:
            weight = torch.exp(-(iou * iou) / sigma)
        elif method_id == 1:
            weight = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        else:
            weight = torch.where(iou > iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
        weight = torch.where(overlaps, weight, torch.ones_like(weight))
        current[remaining] = current[remaining] * weight
        dropped = overlaps & (current[remaining] < score_threshold)
        remaining = remaining[~dropped]
    return torch.tensor(keep, dtype=torch.int64), torch.stack(kept_scores) if kept_scores else scores[:0]


def _intersects(box, others):
    """True where others (M, 4) overlap box (4,) with positive width and height."""
    width = torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0])
    height = torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1])
    return (width > 0) & (height > 0)


# ---- Masks ----------------------------------------------------------------------------------


def paste_masks(masks, boxes, image_height, image_width):
    """Bilinear grid_sample of each (M, M) mask at every image pixel centre: (N, H, W).

    Pixel (x, y) samples normalized mask coordinate ((x + 0.5 - x1) / (x2 - x1)) * 2 - 1,
    with zero padding and align_corners=False (detectron2's paste_masks_in_image, GPU path).
    Boxes with non-positive width or height paste nothing.
    """
    out = masks.new_zeros((masks.size(0), image_height, image_width))
    xs = torch.arange(image_width, dtype=masks.dtype, device=masks.device) + 0.5
    ys = torch.arange(image_height, dtype=masks.dtype, device=masks.device) + 0.5
    for k, (mask, box) in enumerate(zip(masks, boxes)):
        x1, y1, x2, y2 = box
        if not (x2 > x1 and y2 > y1) or image_height == 0 or image_width == 0:
            continue
        grid_x = (xs - x1) / (x2 - x1) * 2 - 1
        grid_y = (ys - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=-1)
        out[k] = F.grid_sample(mask[None, None], grid[None], mode="bilinear",
                               padding_mode="zeros", align_corners=False)[0, 0]
    return out
