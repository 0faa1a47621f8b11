"""Axis-aligned boxes and their convention (widths, areas, IoU, NMS, clipping, flipping, COCO's
xywh), and the R-CNN box coder.

Boxes are ``x1, y1, x2, y2`` in absolute pixels. Two conventions exist. Detectron's boxes hold
pixel indices: a box covers the pixels x1..x2, so its width is ``x2 - x1 + 1`` and the last
coordinate in an image W wide is W - 1. torchvision's and detectron2's boxes are continuous
regions: width ``x2 - x1``, last coordinate W.

A model and a dataset decide their convention once (``BoxConvention.of(cfg)``, from
MODEL.BBOX_LEGACY_PLUS_ONE): the model's anchors and the dataset's targets are made as
``Boxes`` in it, and every box derived from them (decoded, clipped, indexed, concatenated,
flipped, rescaled) keeps it, so the code in between asks its boxes, never a flag.
``BoxConvention`` holds the same geometry for bare tensors and numpy arrays (annotation
records, VOC ground truth).
"""
import math
from dataclasses import dataclass

import torch

from detectron_lib.ops import boxes as box_ops

# Detectron's BBOX_XFORM_CLIP default: log(1000 / 16), the largest allowed dw/dh.
DEFAULT_XFORM_CLIP = math.log(1000.0 / 16.0)


def _copy(boxes):
    return boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()


@dataclass(frozen=True)
class BoxConvention:
    """How box coordinates map onto pixels: ``plus_one`` for Detectron's pixel indices (widths
    x2 - x1 + 1), else continuous coordinates. Use the two instances below, PIXEL_INDICES and
    CONTINUOUS. Methods take tensors; those that say so also take numpy arrays.
    """

    plus_one: bool

    @staticmethod
    def of(cfg):
        """The convention a config's model and data use (MODEL.BBOX_LEGACY_PLUS_ONE)."""
        return PIXEL_INDICES if cfg.MODEL.BBOX_LEGACY_PLUS_ONE else CONTINUOUS

    @property
    def offset(self):
        """What a box's width adds to x2 - x1: 1 for pixel indices, 0 for continuous boxes."""
        return 1.0 if self.plus_one else 0.0

    def last(self, size):
        """The largest coordinate inside an image ``size`` pixels wide (or high)."""
        return size - self.offset

    def widths_heights(self, boxes):
        """widths, heights: (N,) each, for boxes (N, 4)."""
        return boxes[:, 2] - boxes[:, 0] + self.offset, boxes[:, 3] - boxes[:, 1] + self.offset

    def area(self, boxes):
        """(N,) areas of boxes (N, 4)."""
        w, h = self.widths_heights(boxes)
        return w * h

    def nonempty(self, boxes, min_size=0.0):
        """(N,) bool mask of boxes whose width and height both exceed ``min_size``."""
        w, h = self.widths_heights(boxes)
        return (w > min_size) & (h > min_size)

    def regions(self, boxes):
        """Boxes (N, 4) as the continuous regions they cover: a pixel-index box x1..x2 covers
        [x1, x2 + 1). Plain IoU of the regions is the IoU in this convention (Detectron's
        bbox_overlaps and NMS with +1 widths and areas); tensors or arrays."""
        if not self.plus_one:
            return boxes
        out = _copy(boxes)
        out[:, 2:4] += 1
        return out

    def from_regions(self, boxes):
        """The inverse of ``regions``: boxes given as continuous regions (e.g. a dataset's x2 =
        x + w from COCO's [x, y, w, h]) in this convention; tensors or arrays.

        Detectron's loader made a pixel-index box's last pixel x + w - 1; without it a model
        learns boxes one pixel too wide and tall, and its COCO results carry the error.
        """
        if not self.plus_one:
            return boxes
        out = _copy(boxes)
        out[:, 2:4] -= 1
        return out

    def from_xywh(self, boxes):
        """COCO's [x, y, w, h] -> [x1, y1, x2, y2] (N, 4); tensors or arrays."""
        out = _copy(boxes)
        out[:, 2] = boxes[:, 0] + boxes[:, 2] - self.offset
        out[:, 3] = boxes[:, 1] + boxes[:, 3] - self.offset
        return out

    def to_xywh(self, boxes):
        """[x1, y1, x2, y2] -> COCO's [x, y, w, h] (N, 4); tensors or arrays."""
        out = _copy(boxes)
        out[:, 2] = boxes[:, 2] - boxes[:, 0] + self.offset
        out[:, 3] = boxes[:, 3] - boxes[:, 1] + self.offset
        return out

    def flip(self, boxes, width):
        """Mirror boxes (N, 4k), k boxes x1y1x2y2 per row, left-right in an image ``width``
        wide: x maps to ``last(width) - x``; tensors or arrays."""
        last = self.last(width)
        flipped = _copy(boxes)
        flipped[:, 0::4] = last - boxes[:, 2::4]
        flipped[:, 2::4] = last - boxes[:, 0::4]
        return flipped

    def clip(self, boxes, height, width):
        """Boxes (N, 4k) clipped to an image ``height`` x ``width`` pixels (a new tensor)."""
        x = boxes[:, 0::2].clamp(min=0, max=self.last(width))
        y = boxes[:, 1::2].clamp(min=0, max=self.last(height))
        return torch.stack((x, y), dim=2).flatten(1)

    def iou(self, boxes1, boxes2):
        """IoU of every pair: (N, 4), (M, 4) -> (N, M)."""
        return box_ops.box_iou(self.regions(boxes1), self.regions(boxes2))

    def nms(self, boxes, scores, iou_threshold):
        """Greedy NMS (ops.nms) with this convention's IoU; kept indices, decreasing score."""
        return box_ops.nms(self.regions(boxes), scores, iou_threshold)

    def batched_nms(self, boxes, scores, idxs, iou_threshold):
        """NMS within each category of ``idxs`` (ops.batched_nms) with this convention's IoU."""
        return box_ops.batched_nms(self.regions(boxes), scores, idxs, iou_threshold)

    def soft_nms(self, boxes, scores, **options):
        """Soft-NMS (ops.soft_nms, whose ``options`` it takes) with this convention's IoU."""
        return box_ops.soft_nms(self.regions(boxes), scores, **options)

    def box_voting(self, top_boxes, top_scores, all_boxes, all_scores, iou_threshold, **options):
        """Box voting (ops.box_voting, whose ``options`` it takes) with this convention's IoU
        (a weighted mean of boxes is the same in either convention)."""
        return box_ops.box_voting(top_boxes, top_scores, all_boxes, all_scores, iou_threshold,
                                  ious=self.iou(top_boxes, all_boxes), **options)

PIXEL_INDICES = BoxConvention(plus_one=True)
CONTINUOUS = BoxConvention(plus_one=False)


class Boxes:
    """An (N, 4) float tensor of boxes and the convention they are in.

    Every question whose answer depends on the convention is a method, and every method that
    makes new boxes returns Boxes in the same convention. Rows may hold k boxes each, (N, 4k)
    (one per class, as a box head predicts), for ``clip``, ``flip``, ``*`` and ``/``; the
    other methods take (N, 4). ``tensor`` is the coordinates, for arithmetic and drawing.
    """

    __slots__ = ("tensor", "convention")

    def __init__(self, tensor, convention=CONTINUOUS):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"Boxes take a tensor, got {type(tensor).__name__}")
        self.tensor = tensor.reshape(-1, 4) if tensor.ndim != 2 else tensor
        self.convention = convention

    @classmethod
    def from_regions(cls, regions, convention):
        """Boxes in ``convention`` from the continuous regions they cover (e.g. COCO's
        x2 = x + w); the inverse of ``regions``."""
        return cls(convention.from_regions(regions), convention)

    @classmethod
    def from_xywh(cls, xywh, convention):
        """Boxes in ``convention`` from COCO's [x, y, w, h] (N, 4)."""
        return cls(convention.from_xywh(xywh), convention)

    @staticmethod
    def cat(boxes_list):
        """Concatenate Boxes of one convention (a mix of the two is an error)."""
        first = boxes_list[0]
        return first.like(torch.cat([first._same_convention(b).tensor for b in boxes_list]))

    def like(self, tensor):
        """Other coordinates (N, 4) or (N, 4k) in this convention."""
        return Boxes(tensor, self.convention)

    def __len__(self):
        return len(self.tensor)

    def __getitem__(self, index):
        """Select boxes by int, slice, bool mask or index tensor (always (M, 4k))."""
        tensor = self.tensor[index]
        return self.like(tensor.view(1, -1) if tensor.ndim == 1 else tensor)

    def __repr__(self):
        return f"Boxes({self.tensor!r}, plus_one={self.convention.plus_one})"

    @property
    def device(self):
        return self.tensor.device

    @property
    def dtype(self):
        return self.tensor.dtype

    def to(self, *args, **kwargs):
        """Boxes with the tensor moved or cast (Tensor.to's arguments)."""
        return self.like(self.tensor.to(*args, **kwargs))

    def _same_convention(self, other):
        if other.convention != self.convention:
            raise ValueError(f"boxes of two conventions meet (plus_one {self.convention.plus_one}"
                             f" and {other.convention.plus_one}): a model's and its dataset's "
                             f"boxes must share MODEL.BBOX_LEGACY_PLUS_ONE")
        return other

    def widths_heights(self):
        """widths, heights: (N,) each."""
        return self.convention.widths_heights(self.tensor)

    def area(self):
        """(N,) areas."""
        return self.convention.area(self.tensor)

    def nonempty(self, min_size=0.0):
        """(N,) bool: width and height both exceed ``min_size``."""
        return self.convention.nonempty(self.tensor, min_size)

    def clip(self, height, width):
        """These boxes clipped to an image ``height`` x ``width`` pixels."""
        return self.like(self.convention.clip(self.tensor, height, width))

    def flip(self, width):
        """These boxes mirrored left-right in an image ``width`` pixels wide."""
        return self.like(self.convention.flip(self.tensor, width))

    def __mul__(self, scale):
        """These boxes with the image resized by ``scale`` (a number, or x, y, x, y factors), as
        Detectron scaled boxes in both conventions."""
        return self.like(self.tensor * scale)

    def __truediv__(self, scale):
        """The inverse of ``*``: back to the image before the resize."""
        return self.like(self.tensor / scale)

    def regions(self):
        """(N, 4) tensor: the continuous regions these boxes cover (see BoxConvention.regions)."""
        return self.convention.regions(self.tensor)

    def to_xywh(self):
        """(N, 4) tensor of COCO's [x, y, w, h]."""
        return self.convention.to_xywh(self.tensor)

    def iou(self, other):
        """(N, M) IoU of every pair with ``other`` (Boxes of the same convention)."""
        return self.convention.iou(self.tensor, self._same_convention(other).tensor)

    def nms(self, scores, iou_threshold):
        """Greedy NMS (ops.nms) in this convention: kept indices, decreasing score."""
        return self.convention.nms(self.tensor, scores, iou_threshold)

    def batched_nms(self, scores, idxs, iou_threshold):
        """NMS within each category of ``idxs`` (ops.batched_nms) in this convention."""
        return self.convention.batched_nms(self.tensor, scores, idxs, iou_threshold)

    def soft_nms(self, scores, **options):
        """Soft-NMS (ops.soft_nms, whose ``options`` it takes) in this convention."""
        return self.convention.soft_nms(self.tensor, scores, **options)

    def box_voting(self, scores, voters, voter_scores, iou_threshold, **options):
        """These boxes refined by ``voters`` (Boxes) around them (ops.box_voting, whose
        ``options`` it takes): (Boxes, scores)."""
        boxes, scores = self.convention.box_voting(
            self.tensor, scores, self._same_convention(voters).tensor, voter_scores,
            iou_threshold, **options)
        return self.like(boxes), scores


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes and back (Detectron's bbox_transform).

    For a reference box with center (cx, cy), size (w, h) and a target with (gx, gy, gw, gh),
    the deltas are ``wx (gx - cx) / w, wy (gy - cy) / h, ww log(gw / w), wh log(gh / h)`` for
    weights ``(wx, wy, ww, wh)`` (MODEL.BBOX_REG_WEIGHTS, RPN uses (1, 1, 1, 1)), with centres
    and sizes in the boxes' own convention. Decoding clamps dw, dh at ``xform_clip`` so exp()
    cannot overflow.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), xform_clip=DEFAULT_XFORM_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.xform_clip = float(xform_clip)

    @staticmethod
    def _centers_sizes(boxes):
        w, h = boxes.widths_heights()
        return boxes.tensor[:, 0] + 0.5 * w, boxes.tensor[:, 1] + 0.5 * h, w, h

    def encode(self, reference_boxes, target_boxes):
        """deltas (N, 4) that map reference_boxes onto target_boxes (Boxes (N, 4) each)."""
        cx, cy, w, h = self._centers_sizes(reference_boxes)
        gx, gy, gw, gh = self._centers_sizes(reference_boxes._same_convention(target_boxes))
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
        """Apply deltas (N, 4k) to reference_boxes (Boxes (N, 4)); returns Boxes (N, 4k) in
        their convention.

        ``k > 1`` holds class-specific deltas laid out as [class0 (4), class1 (4), ...].
        """
        if deltas.numel() == 0 and not torch.jit.is_tracing():  # a traced graph takes any count
            return reference_boxes.like(deltas.new_zeros(deltas.shape))
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
        # Inverse of the center/size convention above: x2 = cx + w/2 - offset.
        off = reference_boxes.convention.offset
        out = torch.empty_like(deltas)
        out[:, 0::4] = pred_cx - 0.5 * pred_w
        out[:, 1::4] = pred_cy - 0.5 * pred_h
        out[:, 2::4] = pred_cx + 0.5 * pred_w - off
        out[:, 3::4] = pred_cy + 0.5 * pred_h - off
        return reference_boxes.like(out)
