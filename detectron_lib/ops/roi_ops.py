"""RoI feature extractors: RoIAlign, multi-level (FPN) RoIAlign, RoIPool, PS-RoIAlign/Pool.

Drop-ins for torchvision.ops.roi_align / roi_pool / ps_roi_align / ps_roi_pool (same
arguments, same results). CPU tensors run the compiled kernels (or the pure-PyTorch
references when that backend is selected); CUDA tensors run torchvision's CUDA kernels.
"""
import torch
import torchvision

from detectron_lib.ops import _backend, reference


def _pair(output_size):
    if isinstance(output_size, int):
        return output_size, output_size
    pooled_h, pooled_w = output_size
    return int(pooled_h), int(pooled_w)


def boxes_to_rois(boxes, dtype=None):
    """(K, 5) [batch_index, x1, y1, x2, y2] from a (K, 5) tensor or a list of (L_i, 4) tensors.

    A list holds one tensor of x1y1x2y2 boxes per image, like torchvision's roi ops accept.
    """
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(f"boxes must be a (K, 5) tensor or a list of (L, 4) tensors, got {tuple(boxes.shape)}")
        rois = boxes
    else:
        for per_image in boxes:
            if per_image.dim() != 2 or per_image.size(1) != 4:
                raise ValueError(f"each per-image box tensor must be (L, 4), got {tuple(per_image.shape)}")
        batch_index = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
        rois = torch.cat([torch.cat([i, b], dim=1) for i, b in zip(batch_index, boxes)], dim=0)
    return rois if dtype is None else rois.to(dtype)


def _on_cpu_kernels(input):
    return input.device.type == "cpu" and _backend.use_kernels()


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign, as torchvision.ops.roi_align.

    input: (N, C, H, W) float features; boxes: (K, 5) [batch_index, x1, y1, x2, y2] or a
    list of (L_i, 4) per image, in image pixels; spatial_scale: feature / image size;
    sampling_ratio: samples per bin side (<= 0: adaptive, ceil(RoI size / output size));
    aligned=False is Detectron's RoIAlign, True shifts by half a pixel (detectron2 default).
    Returns (K, C, PH, PW).
    """
    rois = boxes_to_rois(boxes, input.dtype)
    pooled_h, pooled_w = _pair(output_size)
    if input.device.type != "cpu":
        return torchvision.ops.roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned)
    if not _backend.use_kernels():
        return reference.roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned)
    return torch.ops.detectron.roi_align(input, rois, float(spatial_scale), pooled_h, pooled_w,
                                         int(sampling_ratio), bool(aligned))


def multilevel_roi_align(features, boxes, levels, output_size, spatial_scales, sampling_ratio=-1,
                         aligned=False):
    """RoIAlign over FPN levels in one call: RoI k is pooled from features[levels[k]].

    features: list of (N, C, H_l, W_l), same N and C; boxes as in roi_align (K RoIs);
    levels: (K,) int64 index into features; spatial_scales: one per level (e.g. 1/4 for
    P2). Returns (K, C, PH, PW), the rows in the order of boxes.
    """
    features = list(features)
    rois = boxes_to_rois(boxes, features[0].dtype)
    pooled_h, pooled_w = _pair(output_size)
    scales = [float(s) for s in spatial_scales]
    levels = levels.to(device=rois.device, dtype=torch.int64)
    if len(features) != len(scales):
        raise ValueError(f"{len(features)} feature levels but {len(scales)} spatial scales")
    if features[0].device.type != "cpu":
        return _per_level_roi_align(features, rois, levels, (pooled_h, pooled_w), scales, sampling_ratio, aligned)
    if not _backend.use_kernels():
        return reference.multilevel_roi_align(features, rois, levels, (pooled_h, pooled_w), scales,
                                              sampling_ratio, aligned)
    return torch.ops.detectron.multilevel_roi_align(features, rois, levels, scales, pooled_h, pooled_w,
                                                    int(sampling_ratio), bool(aligned))


def _per_level_roi_align(features, rois, levels, output_size, scales, sampling_ratio, aligned):
    """One torchvision roi_align per level, scattered into one output (the CUDA path)."""
    output = features[0].new_zeros((rois.size(0), features[0].size(1), *output_size))
    for level, (feature, scale) in enumerate(zip(features, scales)):
        members = torch.nonzero(levels == level).flatten()
        pooled = torchvision.ops.roi_align(feature, rois[members], output_size, scale, sampling_ratio, aligned)
        output = output.index_copy(0, members, pooled)
    return output


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """RoIPool (Detectron's RoIPoolF), as torchvision.ops.roi_pool: (K, C, PH, PW) bin maxima.

    RoI corners are rounded to feature pixels; an empty bin gives 0.
    """
    rois = boxes_to_rois(boxes, input.dtype)
    pooled_h, pooled_w = _pair(output_size)
    if input.device.type != "cpu":
        return torchvision.ops.roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)
    if not _backend.use_kernels():
        return reference.roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)
    output, _ = torch.ops.detectron.roi_pool(input, rois, float(spatial_scale), pooled_h, pooled_w)
    return output


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Position-sensitive RoIAlign (R-FCN), as torchvision.ops.ps_roi_align.

    input: (N, C_out * PH * PW, H, W). Returns (K, C_out, PH, PW); bin (i, j) of output
    channel c averages input channel (c * PH + i) * PW + j. Degenerate (zero-size) RoIs
    with adaptive sampling give 0 (torchvision gives NaN there).
    """
    rois = boxes_to_rois(boxes, input.dtype)
    pooled_h, pooled_w = _pair(output_size)
    if input.device.type != "cpu":
        return torchvision.ops.ps_roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio)
    if not _backend.use_kernels():
        return reference.ps_roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio)
    return torch.ops.detectron.ps_roi_align(input, rois, float(spatial_scale), pooled_h, pooled_w,
                                            int(sampling_ratio))


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Position-sensitive RoIPool (R-FCN), as torchvision.ops.ps_roi_pool: bin means.

    Bins are clipped to the whole feature map, like R-FCN's PSROIPool and torchvision's
    CUDA kernel (torchvision's CPU forward clips them one row and column short).
    """
    rois = boxes_to_rois(boxes, input.dtype)
    pooled_h, pooled_w = _pair(output_size)
    if input.device.type != "cpu":
        return torchvision.ops.ps_roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)
    if not _backend.use_kernels():
        return reference.ps_roi_pool(input, rois, (pooled_h, pooled_w), spatial_scale)
    return torch.ops.detectron.ps_roi_pool(input, rois, float(spatial_scale), pooled_h, pooled_w)
