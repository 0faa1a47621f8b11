"""Axis-aligned boxes: conversions, clipping, areas and the R-CNN box coder.

Boxes are ``(N, 4)`` float tensors ``x1, y1, x2, y2`` in absolute pixels. Detectron measured
a box's width as ``x2 - x1 + 1`` (pixel indices, inclusive); torchvision and detectron2 use
``x2 - x1``. Every function that depends on it takes ``legacy_plus_one`` (the config switch
MODEL.BBOX_LEGACY_PLUS_ONE maps onto it), never a hidden constant.
"""
import math

import torch

# Detectron's BBOX_XFORM_CLIP default: log(1000 / 16), the largest allowed dw/dh.
DEFAULT_XFORM_CLIP = math.log(1000.0 / 16.0)


def _offset(legacy_plus_one):
    return 1.0 if legacy_plus_one else 0.0


def box_widths_heights(boxes, legacy_plus_one=False):
    """widths, heights: (N,) each, for boxes (N, 4)."""
    off = _offset(legacy_plus_one)
    return boxes[:, 2] - boxes[:, 0] + off, boxes[:, 3] - boxes[:, 1] + off


def box_area(boxes, legacy_plus_one=False):
    """(N,) areas of boxes (N, 4)."""
    w, h = box_widths_heights(boxes, legacy_plus_one)
    return w * h


def xywh_to_xyxy(boxes, legacy_plus_one=False):
    """COCO's [x, y, w, h] -> [x1, y1, x2, y2]; works on tensors and numpy arrays (N, 4)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    off = _offset(legacy_plus_one)
    out[:, 2] = boxes[:, 0] + boxes[:, 2] - off
    out[:, 3] = boxes[:, 1] + boxes[:, 3] - off
    return out


def xyxy_to_xywh(boxes, legacy_plus_one=False):
    """[x1, y1, x2, y2] -> COCO's [x, y, w, h]; works on tensors and numpy arrays (N, 4)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    off = _offset(legacy_plus_one)
    out[:, 2] = boxes[:, 2] - boxes[:, 0] + off
    out[:, 3] = boxes[:, 3] - boxes[:, 1] + off
    return out


def extent_boxes(boxes, legacy_plus_one=False):
    """Boxes (N, 4) as the regions they cover, so that plain IoU (torchvision's, our kernels')
    is their IoU in the model's convention; the ops of detectron_lib.ops.boxes apply it given
    ``legacy_plus_one``.

    A legacy box covers the pixels x1..x2, the region [x1, x2 + 1): its IoU with the +1 widths
    and areas of Detectron's bbox_overlaps and NMS is the plain IoU of x1, y1, x2 + 1, y2 + 1.
    """
    if not legacy_plus_one:
        return boxes
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def flip_boxes(boxes, width, legacy_plus_one=False):
    """Mirror boxes (N, 4k), k boxes x1y1x2y2 per row, left-right in an image ``width`` wide;
    works on tensors and numpy arrays.

    With the legacy convention x is a pixel index and maps to width - 1 - x; else width - x.
    """
    last = width - _offset(legacy_plus_one)
    flipped = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    flipped[:, 0::4] = last - boxes[:, 2::4]
    flipped[:, 2::4] = last - boxes[:, 0::4]
    return flipped


def clip_boxes(boxes, height, width, legacy_plus_one=False):
    """Clip boxes (N, 4) to an image of ``height`` x ``width`` pixels (returns a new tensor).

    With the legacy convention the last valid coordinate is ``width - 1`` (a pixel index);
    otherwise it is ``width`` (a continuous coordinate).
    """
    off = _offset(legacy_plus_one)
    x = boxes[:, 0::2].clamp(min=0, max=width - off)
    y = boxes[:, 1::2].clamp(min=0, max=height - off)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def nonempty_boxes(boxes, min_size=0.0, legacy_plus_one=False):
    """(N,) bool mask of boxes whose width and height both exceed ``min_size``."""
    w, h = box_widths_heights(boxes, legacy_plus_one)
    return (w > min_size) & (h > min_size)


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes and back (Detectron's bbox_transform).

    For a reference box with center (cx, cy), size (w, h) and a target with (gx, gy, gw, gh),
    the deltas are ``wx (gx - cx) / w, wy (gy - cy) / h, ww log(gw / w), wh log(gh / h)`` for
    weights ``(wx, wy, ww, wh)`` (MODEL.BBOX_REG_WEIGHTS, RPN uses (1, 1, 1, 1)). Decoding
    clamps dw, dh at ``xform_clip`` so exp() cannot overflow.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), xform_clip=DEFAULT_XFORM_CLIP,
                 legacy_plus_one=False):
        self.weights = tuple(float(w) for w in weights)
        self.xform_clip = float(xform_clip)
        self.legacy_plus_one = legacy_plus_one

    def _centers_sizes(self, boxes):
        w, h = box_widths_heights(boxes, self.legacy_plus_one)
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode(self, reference_boxes, target_boxes):
        """deltas (N, 4) that map reference_boxes (N, 4) onto target_boxes (N, 4)."""
        cx, cy, w, h = self._centers_sizes(reference_boxes)
        gx, gy, gw, gh = self._centers_sizes(target_boxes)
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (
                wx * (gx - cx) / w,
                wy * (gy - cy) / h,
                ww * torch.log(gw / w),
                wh * torch.log(gh / h),
            ),
            dim=1,
        )

    def decode(self, deltas, reference_boxes):
        """Apply deltas (N, 4k) to reference_boxes (N, 4); returns boxes (N, 4k).

        ``k > 1`` holds class-specific deltas laid out as [class0 (4), class1 (4), ...].
        """
        if deltas.numel() == 0:
            return deltas.new_zeros(deltas.shape)
        reference_boxes = reference_boxes.to(deltas.dtype)
        cx, cy, w, h = self._centers_sizes(reference_boxes)
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.xform_clip)

        pred_cx = dx * w[:, None] + cx[:, None]
        pred_cy = dy * h[:, None] + cy[:, None]
        pred_w = torch.exp(dw) * w[:, None]
        pred_h = torch.exp(dh) * h[:, None]
        # Inverse of the center/size convention above: x2 = cx + w/2 - off.
        off = _offset(self.legacy_plus_one)
        out = torch.empty_like(deltas)
        out[:, 0::4] = pred_cx - 0.5 * pred_w
        out[:, 1::4] = pred_cy - 0.5 * pred_h
        out[:, 2::4] = pred_cx + 0.5 * pred_w - off
        out[:, 3::4] = pred_cy + 0.5 * pred_h - off
        return out
