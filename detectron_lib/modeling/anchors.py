"""Anchors: the reference boxes RPN and RetinaNet classify and regress.

A cell's anchors are enumerated aspect ratio first, then size, as Detectron's RPN (size first for
its RetinaNet: ``sizes_first``); ``grid_anchors`` shifts them over a feature map, ordered
(y, x, anchor) to match predictions reshaped from ``(N, A, H, W)`` to ``(N, H, W, A)``.

Two geometries exist, one per box convention (structures.boxes.BoxConvention):

- Detectron's (PIXEL_INDICES): a cell's base box is ``[0, 0, stride - 1, stride - 1]``, widths count
  pixels inclusively and ratios are rounded to whole pixels before scaling.
- torchvision's and detectron2's (CONTINUOUS): anchors centred on the cell's top-left corner,
  ``[-w/2, -h/2, w/2, h/2]`` with ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)``;
  torchvision rounds them to whole pixels (``round_to_pixels``), detectron2 keeps them exact
  (22.63 x 11.31 for size 16, ratio 0.5, where torchvision has 23 x 11).
"""
import numpy as np
import torch

from detectron_lib.structures.boxes import PIXEL_INDICES, Boxes


def generate_cell_anchors(stride, sizes, aspect_ratios, convention=PIXEL_INDICES,
                          sizes_first=False, round_to_pixels=True):
    """Anchors of one feature-map cell: (len(aspect_ratios) * len(sizes), 4) float32 tensor.

    stride: the feature map's stride in input pixels. sizes: anchor sizes (sqrt of area) in
    input pixels. aspect_ratios: height / width. Anchor ``r * len(sizes) + s`` has ratio r and
    size s; with ``sizes_first`` it is anchor ``s * len(aspect_ratios) + r`` instead (the
    order of Detectron's RetinaNet and of detectron2: sizes outer, aspect ratios inner).
    round_to_pixels: round the continuous geometry to whole pixels (torchvision; False:
    detectron2). Detectron's geometry always rounds its ratios (MODEL.ROUND_ANCHORS is checked
    against it in config validation).
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    if convention.plus_one:
        # Base box [0, 0, stride-1, stride-1]: width `stride`, centre (stride-1)/2.
        center = 0.5 * (stride - 1)
        area = float(stride * stride)
        ratio_ws = np.round(np.sqrt(area / ratios))
        ratio_hs = np.round(ratio_ws * ratios)
        scales = sizes / stride
        ws = _flatten_grid(ratio_ws[:, None] * scales[None, :], sizes_first)
        hs = _flatten_grid(ratio_hs[:, None] * scales[None, :], sizes_first)
        anchors = np.stack(
            (center - 0.5 * (ws - 1), center - 0.5 * (hs - 1),
             center + 0.5 * (ws - 1), center + 0.5 * (hs - 1)),
            axis=1,
        )
    else:
        h_ratios = np.sqrt(ratios)
        ws = _flatten_grid(sizes[None, :] / h_ratios[:, None], sizes_first)
        hs = _flatten_grid(sizes[None, :] * h_ratios[:, None], sizes_first)
        anchors = np.stack((-ws, -hs, ws, hs), axis=1) / 2
        if round_to_pixels:
            anchors = np.round(anchors)
    return torch.as_tensor(anchors, dtype=torch.float32)


def _flatten_grid(values, sizes_first):
    """(ratios, sizes) array -> flat, ratio-major (or size-major with ``sizes_first``)."""
    return (values.T if sizes_first else values).reshape(-1)


def grid_anchors(cell_anchors, stride, height, width):
    """Shift cell anchors (A, 4) over a ``height`` x ``width`` feature map: (H * W * A, 4)."""
    device = cell_anchors.device
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((x, y, x, y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors[None]).reshape(-1, 4)


def fpn_rpn_anchor_specs(min_level, max_level, start_size, aspect_ratios):
    """(stride, sizes, aspect_ratios) per FPN level for RPN: one size per level.

    Level l has stride 2**l and size ``start_size * 2**(l - min_level)`` (FPN.RPN_MIN_LEVEL,
    RPN_MAX_LEVEL, RPN_ANCHOR_START_SIZE, RPN_ASPECT_RATIOS).
    """
    return [
        (2 ** level, (start_size * 2.0 ** (level - min_level),), tuple(aspect_ratios))
        for level in range(min_level, max_level + 1)
    ]


def retinanet_anchor_specs(min_level, max_level, scales_per_octave, anchor_scale, aspect_ratios,
                           integer_sizes=False):
    """(stride, sizes, aspect_ratios) per level for RetinaNet.

    Level l has ``scales_per_octave`` sizes ``anchor_scale * 2**l * 2**(o / scales_per_octave)``
    (RETINANET.SCALES_PER_OCTAVE, ANCHOR_SCALE, ASPECT_RATIOS), truncated to whole pixels with
    ``integer_sizes`` (RETINANET.INTEGER_ANCHOR_SIZES: torchvision's 32, 40, 50 for 32, 40.3, 50.8).
    """
    specs = []
    for level in range(min_level, max_level + 1):
        stride = 2 ** level
        sizes = tuple(anchor_scale * stride * 2.0 ** (o / scales_per_octave)
                      for o in range(scales_per_octave))
        if integer_sizes:
            sizes = tuple(float(int(size)) for size in sizes)
        specs.append((stride, sizes, tuple(aspect_ratios)))
    return specs


class AnchorGenerator(torch.nn.Module):
    """Anchors for a list of feature maps, one (stride, sizes, aspect_ratios) spec per map.

    Cell anchors are computed once; grids are cached per feature-map size since training
    images take only a few distinct padded sizes. ``convention``: the model's box convention,
    decided here once: every proposal and detection decoded from these anchors keeps it.
    ``sizes_first``, ``round_to_pixels``: as for generate_cell_anchors.
    """

    def __init__(self, specs, convention=PIXEL_INDICES, sizes_first=False, round_to_pixels=True):
        super().__init__()
        self.strides = [stride for stride, _, _ in specs]
        self.num_anchors = [len(sizes) * len(ratios) for _, sizes, ratios in specs]
        self.convention = convention
        self.cell_anchors = [  # (A, 4) per level, as generate_cell_anchors gives them
            generate_cell_anchors(stride, sizes, ratios, convention, sizes_first,
                                  round_to_pixels)
            for stride, sizes, ratios in specs
        ]
        self._cache = {}

    def forward(self, feature_shapes, device=torch.device("cpu")):
        """feature_shapes: [(H, W)] per level (as feature_map_sizes gives them). Returns
        [Boxes (H * W * A, 4)] per level on ``device``."""
        out = []
        for cell, stride, (h, w) in zip(self.cell_anchors, self.strides, feature_shapes):
            if torch.jit.is_tracing():  # traced sizes: the grid follows the input, uncached
                out.append(Boxes(grid_anchors(cell.to(device), stride, h, w), self.convention))
                continue
            key = (stride, int(h), int(w), str(device))
            if key not in self._cache:
                self._cache[key] = grid_anchors(cell.to(device), stride, int(h), int(w))
            out.append(Boxes(self._cache[key], self.convention))
        return out


def feature_map_sizes(maps):
    """[(H, W)] of each (N, C, H, W) map; while tracing (the ONNX export) as traced tensors,
    so that an exported graph's anchors follow its input's size."""
    if torch.jit.is_tracing():
        shapes = [torch._shape_as_tensor(m) for m in maps]
        return [(shape[2], shape[3]) for shape in shapes]
    return [m.shape[-2:] for m in maps]


def straddle_mask(anchors, height, width, straddle_thresh):
    """(N,) bool: anchors ((N, 4) tensor) inside the image up to ``straddle_thresh`` pixels (RPN.STRADDLE_THRESH).

    A negative threshold keeps every anchor, as in Detectron.
    """
    if straddle_thresh < 0:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    t = straddle_thresh
    return (
        (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
        & (anchors[:, 2] < width + t) & (anchors[:, 3] < height + t)
    )

