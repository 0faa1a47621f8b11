"""Pasting box-relative instance masks into full images."""
import torch

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
