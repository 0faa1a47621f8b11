"""Pasting box-relative instance masks into full images."""
import torch
import torch.nn.functional as F

from detectron_lib.ops import _backend, reference


def paste_masks(masks, boxes, image_height, image_width):
    """Pastes N mask probabilities into N image planes.

    masks: (N, M, M) (or (N, 1, M, M)) float probabilities over their boxes;
    boxes: (N, 4) x1y1x2y2 in image pixels. Returns (N, image_height, image_width).
    Each image pixel centre samples its mask bilinearly (torch grid_sample semantics,
    align_corners=False, zero outside the mask), i.e. detectron2's paste_masks_in_image
    before thresholding; threshold the result (e.g. >= 0.5) for binary masks.
    Boxes with non-positive width or height paste nothing. Inference only (no gradient).
    """
    if masks.dim() == 4 and masks.size(1) == 1:
        masks = masks[:, 0]
    boxes = boxes.to(masks.dtype)
    if masks.device.type != "cpu" or not _backend.use_kernels():
        return reference.paste_masks(masks, boxes, int(image_height), int(image_width))
    return torch.ops.detectron.paste_masks(masks, boxes, int(image_height), int(image_width))


def paste_masks_legacy(masks, boxes, image_height, image_width, thresh=None):
    """Detectron's paste (segm_results), which torchvision's paste_masks_in_image follows.

    masks: (N, M, M) (or (N, 1, M, M)) float probabilities over their boxes; boxes: (N, 4)
    x1y1x2y2 in image pixels. Each mask is padded by one zero cell, its box expanded by
    (M + 2) / M about its centre and truncated to whole pixels [x0, x1] (inclusive), the padded
    mask resized bilinearly (align_corners=False) to x1 - x0 + 1 by y1 - y0 + 1 pixels and
    copied into the image. Returns (N, image_height, image_width) probabilities, or with
    ``thresh`` the bool masks ``probabilities > thresh`` (binarized box by box: no float
    image planes are made).
    """
    if masks.dim() == 4 and masks.size(1) == 1:
        masks = masks[:, 0]
    out = masks.new_zeros((masks.size(0), image_height, image_width),
                          dtype=masks.dtype if thresh is None else torch.bool)
    if masks.size(0) == 0:
        return out
    size = masks.shape[-1]
    padded = F.pad(masks, (1, 1, 1, 1))
    boxes = boxes.to(masks.dtype)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * ((size + 2.0) / size)
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * ((size + 2.0) / size)
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((center_x - half_w, center_y - half_h, center_x + half_w,
                            center_y + half_h), dim=1).to(torch.int64)
    for k, (x0, y0, x1, y1) in enumerate(expanded.tolist()):
        width, height = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(padded[k][None, None], size=(height, width), mode="bilinear",
                                align_corners=False)[0, 0]
        left, right = max(x0, 0), min(x1 + 1, image_width)
        top, bottom = max(y0, 0), min(y1 + 1, image_height)
        if left < right and top < bottom:
            crop = resized[top - y0:bottom - y0, left - x0:right - x0]
            out[k, top:bottom, left:right] = crop if thresh is None else crop > thresh
    return out
