"""Autograd formulas and fake (meta) implementations of the torch.ops.detectron ops.

Fake implementations give output shapes without computing, so the ops trace under
torch.compile and torch.export; data-dependent sizes (NMS keeps) are unbacked symbols.
Backward ops are ops of their own, registered with fake implementations too.
"""
import torch


def _fake(name):
    return torch.library.register_fake(f"detectron::{name}")


# ---- RoIAlign ---------------------------------------------------------------------------


@_fake("roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: "rois must be (K, 5)")
    return input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))


@_fake("_roi_align_backward")
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width,
                             batch_size, channels, height, width, sampling_ratio, aligned):
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_setup(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.detectron._roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width,
        batch_size, channels, height, width, sampling_ratio, aligned,
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("detectron::roi_align", _roi_align_grad, setup_context=_roi_align_setup)


@_fake("multilevel_roi_align")
def _multilevel_fake(features, rois, levels, spatial_scales, pooled_height, pooled_width,
                     sampling_ratio, aligned):
    return features[0].new_empty((rois.size(0), features[0].size(1), pooled_height, pooled_width))


@_fake("_multilevel_roi_align_backward")
def _multilevel_backward_fake(grad, rois, levels, spatial_scales, pooled_height, pooled_width,
                              sampling_ratio, aligned, batch_size, channels, heights, widths):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


def _multilevel_setup(ctx, inputs, output):
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.batch_channels = (features[0].size(0), features[0].size(1))
    ctx.heights = [f.size(2) for f in features]
    ctx.widths = [f.size(3) for f in features]
    ctx.params = (spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned)


def _multilevel_grad(ctx, grad):
    rois, levels = ctx.saved_tensors
    spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grads = torch.ops.detectron._multilevel_roi_align_backward(
        grad, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned,
        *ctx.batch_channels, ctx.heights, ctx.widths,
    )
    return list(grads), None, None, None, None, None, None, None


torch.library.register_autograd(
    "detectron::multilevel_roi_align", _multilevel_grad, setup_context=_multilevel_setup
)

# ---- RoIPool ----------------------------------------------------------------------------


@_fake("roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@_fake("_roi_pool_backward")
def _roi_pool_backward_fake(grad, rois, argmax, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _roi_pool_setup(ctx, inputs, output):
    input, rois = inputs[0], inputs[1]
    ctx.save_for_backward(rois, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.input_shape = input.shape


def _roi_pool_grad(ctx, grad, grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = torch.ops.detectron._roi_pool_backward(grad, rois, argmax, *ctx.input_shape)
    return grad_input, None, None, None, None


torch.library.register_autograd("detectron::roi_pool", _roi_pool_grad, setup_context=_roi_pool_setup)

# ---- Max-pool -----------------------------------------------------------------------------


def _pooled_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


@_fake("max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding):
    shape = (input.size(0), input.size(1),
             *(_pooled_size(input.size(d + 2), kernel_size[d], stride[d], padding[d]) for d in range(2)))
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@_fake("_max_pool2d_backward")
def _max_pool2d_backward_fake(grad, argmax, height, width):
    return grad.new_empty((grad.size(0), grad.size(1), height, width))


def _max_pool2d_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.input_size = inputs[0].shape[2:]


def _max_pool2d_grad(ctx, grad, grad_argmax):
    (argmax,) = ctx.saved_tensors
    return torch.ops.detectron._max_pool2d_backward(grad, argmax, *ctx.input_size), None, None, None


torch.library.register_autograd(
    "detectron::max_pool2d", _max_pool2d_grad, setup_context=_max_pool2d_setup
)

# ---- Position-sensitive RoIAlign / RoIPool ------------------------------------------------


def _ps_output(input, rois, pooled_height, pooled_width):
    bins = pooled_height * pooled_width
    torch._check(input.size(1) % bins == 0, lambda: "input channels must be a multiple of PH * PW")
    return input.new_empty((rois.size(0), input.size(1) // bins, pooled_height, pooled_width))


@_fake("ps_roi_align")
def _ps_roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return _ps_output(input, rois, pooled_height, pooled_width)


@_fake("_ps_roi_align_backward")
def _ps_roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width,
                                sampling_ratio, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _ps_roi_align_setup(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _ps_roi_align_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detectron._ps_roi_align_backward(grad, rois, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None, None


torch.library.register_autograd(
    "detectron::ps_roi_align", _ps_roi_align_grad, setup_context=_ps_roi_align_setup
)


@_fake("ps_roi_pool")
def _ps_roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    return _ps_output(input, rois, pooled_height, pooled_width)


@_fake("_ps_roi_pool_backward")
def _ps_roi_pool_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width,
                               batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _ps_roi_pool_setup(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape
    ctx.params = (spatial_scale, pooled_height, pooled_width)


def _ps_roi_pool_grad(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detectron._ps_roi_pool_backward(grad, rois, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None


torch.library.register_autograd(
    "detectron::ps_roi_pool", _ps_roi_pool_grad, setup_context=_ps_roi_pool_setup
)

# ---- Boxes and masks (no gradients) ------------------------------------------------------


def _kept_indices(boxes):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


@_fake("nms")
def _nms_fake(boxes, scores, iou_threshold):
    return _kept_indices(boxes)


@_fake("batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    return _kept_indices(boxes)


@_fake("soft_nms")
def _soft_nms_fake(boxes, scores, method, sigma, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64), scores.new_empty((count,))


@_fake("box_iou")
def _box_iou_fake(boxes1, boxes2):
    return boxes1.new_empty((boxes1.size(0), boxes2.size(0)))


@_fake("paste_masks")
def _paste_masks_fake(masks, boxes, image_height, image_width):
    return masks.new_empty((masks.size(0), image_height, image_width))
