"""Boxes, the box coder, anchors and Instances against hand-computed cases and torchvision."""
import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detectron_lib.modeling.anchors import (
    AnchorGenerator,
    fpn_rpn_anchor_specs,
    generate_cell_anchors,
    grid_anchors,
    retinanet_anchor_specs,
    straddle_mask,
)
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, BoxCoder, BoxConvention, Boxes
from detectron_lib.structures.instances import Instances


def test_detectron_deltas_hand_computed_pixel_indices():
    # Box [0,0,9,9] is 10 px wide (legacy +1), centre 5; gt [5,5,14,14] has centre 10.
    # dx = 10 * (10 - 5) / 10 = 5, dw = 5 * log(10 / 10) = 0.
    coder = BoxCoder(weights=(10, 10, 5, 5))
    deltas = coder.encode(Boxes(torch.tensor([[0.0, 0, 9, 9]]), PIXEL_INDICES),
                          Boxes(torch.tensor([[5.0, 5, 14, 14]]), PIXEL_INDICES))
    assert torch.allclose(deltas, torch.tensor([[5.0, 5.0, 0.0, 0.0]]))


def test_deltas_hand_computed_without_plus_one():
    # Box [0,0,10,20]: w=10, h=20, centre (5, 10). gt [2,4,22,24]: w=20, h=20, centre (12, 14).
    # dx = (12-5)/10 = 0.7, dy = (14-10)/20 = 0.2, dw = log 2, dh = log 1 = 0.
    coder = BoxCoder()
    deltas = coder.encode(Boxes(torch.tensor([[0.0, 0, 10, 20]])),
                          Boxes(torch.tensor([[2.0, 4, 22, 24]])))
    assert torch.allclose(deltas, torch.tensor([[0.7, 0.2, math.log(2.0), 0.0]]))


@pytest.mark.parametrize("convention", [PIXEL_INDICES, CONTINUOUS])
def test_decode_inverts_encode(convention):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([ref, ref + 5 + torch.rand(50, 2, generator=g) * 50], dim=1)
    tgt = torch.rand(50, 2, generator=g) * 100
    tgt = torch.cat([tgt, tgt + 5 + torch.rand(50, 2, generator=g) * 50], dim=1)
    coder = BoxCoder(weights=(10, 10, 5, 5))
    ref, tgt = Boxes(ref, convention), Boxes(tgt, convention)
    decoded = coder.decode(coder.encode(ref, tgt), ref)
    assert decoded.convention is convention
    assert torch.allclose(decoded.tensor, tgt.tensor, atol=1e-4)


def test_coder_matches_torchvision_without_plus_one():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(30, 2, generator=g) * 200
    ref = torch.cat([ref, ref + 1 + torch.rand(30, 2, generator=g) * 100], dim=1)
    deltas = torch.randn(30, 8, generator=g)
    ours = BoxCoder(weights=(10, 10, 5, 5)).decode(deltas, Boxes(ref)).tensor
    theirs = TorchvisionBoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode_single(deltas, ref)
    assert torch.allclose(ours, theirs, atol=1e-4)
    tgt = ours[:, :4]
    assert torch.allclose(
        BoxCoder(weights=(10, 10, 5, 5)).encode(Boxes(ref), Boxes(tgt)),
        TorchvisionBoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode_single(tgt, ref),
        atol=1e-4,
    )


def test_decode_clamps_large_dw():
    coder = BoxCoder(xform_clip=math.log(1000.0 / 16))
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]),
                       Boxes(torch.tensor([[0.0, 0, 16, 16]]))).tensor
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 2] - out[0, 0], torch.tensor(1000.0), rtol=1e-5)


def test_box_helpers_hand_computed():
    boxes = torch.tensor([[0.0, 0, 9, 9], [5.0, 5, 4, 20]])
    assert PIXEL_INDICES.area(boxes).tolist() == [100.0, 0.0]
    assert CONTINUOUS.area(boxes[:1]).tolist() == [81.0]
    assert CONTINUOUS.nonempty(boxes).tolist() == [True, False]
    xywh = torch.tensor([[10.0, 20, 30, 40]])
    assert CONTINUOUS.from_xywh(xywh).tolist() == [[10, 20, 40, 60]]
    assert PIXEL_INDICES.from_xywh(xywh).tolist() == [[10, 20, 39, 59]]
    assert PIXEL_INDICES.to_xywh(PIXEL_INDICES.from_xywh(xywh)).tolist() == xywh.tolist()
    assert PIXEL_INDICES.from_xywh(xywh.numpy()).tolist() == [[10, 20, 39, 59]]
    # A pixel-index box covers the region one pixel past its last index, and back.
    assert PIXEL_INDICES.regions(boxes[:1]).tolist() == [[0, 0, 10, 10]]
    assert PIXEL_INDICES.from_regions(PIXEL_INDICES.regions(boxes)).tolist() == boxes.tolist()
    assert CONTINUOUS.regions(boxes) is boxes and CONTINUOUS.from_regions(boxes) is boxes
    clipped = CONTINUOUS.clip(torch.tensor([[-5.0, -1, 120, 90]]), height=80, width=100)
    assert clipped.tolist() == [[0, 0, 100, 80]]
    assert PIXEL_INDICES.clip(torch.tensor([[-5.0, -1, 120, 90]]), 80, 100).tolist() == [[0, 0, 99, 79]]
    # Class boxes (N, 4k) clip box by box.
    two = torch.tensor([[-5.0, -1, 120, 90, 3, 200, 50, 60]])
    assert CONTINUOUS.clip(two, 80, 100).tolist() == [[0, 0, 100, 80, 3, 80, 50, 60]]
    assert BoxConvention.of(SimpleNamespace(MODEL=SimpleNamespace(BBOX_LEGACY_PLUS_ONE=True))) \
        is PIXEL_INDICES


def test_boxes_carry_their_convention():
    """Every method answers in the boxes' own convention, and every box derived from them
    (indexed, concatenated, decoded, clipped, flipped, rescaled) keeps it."""
    xyxy = torch.tensor([[0.0, 0, 9, 9], [5.0, 5, 4, 20]])
    pixels, continuous = Boxes(xyxy, PIXEL_INDICES), Boxes(xyxy)
    assert pixels.area().tolist() == [100.0, 0.0] and continuous.area().tolist() == [81.0, -15.0]
    assert pixels.nonempty().tolist() == [True, False]
    assert pixels.clip(8, 8).tensor.tolist() == [[0, 0, 7, 7], [5, 5, 4, 7]]
    assert continuous.clip(8, 8).tensor.tolist() == [[0, 0, 8, 8], [5, 5, 4, 8]]
    assert pixels.flip(10).tensor[0].tolist() == [0, 0, 9, 9]
    assert continuous.flip(10).tensor[0].tolist() == [1, 0, 10, 9]
    assert pixels.regions()[0].tolist() == [0, 0, 10, 10]
    assert pixels.to_xywh()[0].tolist() == [0, 0, 10, 10]
    assert Boxes.from_xywh(torch.tensor([[0.0, 0, 10, 10]]), PIXEL_INDICES).tensor.tolist()         == [[0, 0, 9, 9]]
    # IoU of [0, 9] with [5, 14]: legacy 5 * 10 / (100 + 100 - 50) = 1/3 (plain: 16 / 146).
    other = Boxes(torch.tensor([[5.0, 0, 14, 9]]), PIXEL_INDICES)
    assert pixels[:1].iou(other).item() == pytest.approx(50 / 150)
    assert continuous[:1].iou(Boxes(other.tensor)).item() == pytest.approx(36 / 126)
    for derived in (pixels[0], pixels[torch.tensor([True, False])], Boxes.cat([pixels, other]),
                    pixels.clip(8, 8), pixels.flip(10), pixels * 2.0, pixels / 2.0,
                    pixels.to(torch.float64),
                    BoxCoder().decode(torch.zeros(2, 8), pixels)):
        assert derived.convention is PIXEL_INDICES and derived.tensor.ndim == 2
    assert (pixels * 2.0).tensor[0].tolist() == [0, 0, 18, 18]
    # Boxes of two conventions never meet silently.
    with pytest.raises(ValueError, match="plus_one True and False"):
        pixels.iou(continuous)
    with pytest.raises(ValueError, match="conventions"):
        Boxes.cat([pixels, continuous])
    with pytest.raises(ValueError, match="BBOX_LEGACY_PLUS_ONE"):
        BoxCoder().encode(pixels, continuous)
    inst = Instances((10, 20), boxes=pixels, scores=torch.tensor([0.9, 0.1]))
    assert inst[inst.scores > 0.5].boxes.convention is PIXEL_INDICES
    assert Instances.cat([inst, inst]).boxes.tensor.shape == (4, 4)


def test_detectron_cell_anchors_hand_listed():
    # Detectron's generate_anchors(stride=16, sizes=(128, 256, 512), aspect_ratios=(0.5, 1, 2)),
    # checked in its source against the original MATLAB anchors.mat, which is 1-based: the
    # table below is that MATLAB listing, ratio-major and size-minor, minus one.
    expected = -1 + torch.tensor([
        [-83.0, -39.0, 100.0, 56.0],
        [-175.0, -87.0, 192.0, 104.0],
        [-359.0, -183.0, 376.0, 200.0],
        [-55.0, -55.0, 72.0, 72.0],
        [-119.0, -119.0, 136.0, 136.0],
        [-247.0, -247.0, 264.0, 264.0],
        [-35.0, -79.0, 52.0, 96.0],
        [-79.0, -167.0, 96.0, 184.0],
        [-167.0, -343.0, 184.0, 360.0],
    ])
    assert torch.equal(generate_cell_anchors(16, (128, 256, 512), (0.5, 1, 2)), expected)


def test_torchvision_geometry_matches_torchvision_anchor_generator():
    sizes, ratios = (32, 64), (0.5, 1.0, 2.0)
    ours = grid_anchors(generate_cell_anchors(8, sizes, ratios, CONTINUOUS), 8, 5, 7)
    tv = TorchvisionAnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = ImageList(torch.zeros(1, 3, 40, 56), [(40, 56)])
    theirs = tv(images, [torch.zeros(1, 4, 5, 7)])[0]
    assert torch.equal(ours, theirs)


def test_grid_order_is_y_x_anchor():
    cell = generate_cell_anchors(4, (8,), (1.0,), CONTINUOUS)  # [[-4, -4, 4, 4]]
    grid = grid_anchors(cell, 4, height=2, width=3)
    # (y, x) = (0, 0), (0, 1), (0, 2), (1, 0): x moves fastest.
    assert grid[:4, 0].tolist() == [-4.0, 0.0, 4.0, -4.0]
    assert grid[:4, 1].tolist() == [-4.0, -4.0, -4.0, 0.0]


def test_level_specs():
    fpn = fpn_rpn_anchor_specs(2, 6, 32, (0.5, 1, 2))
    assert [(s, z) for s, z, _ in fpn] == [(4, (32.0,)), (8, (64.0,)), (16, (128.0,)), (32, (256.0,)), (64, (512.0,))]
    retina = retinanet_anchor_specs(3, 7, 3, 4.0, (0.5, 1.0, 2.0))
    stride, sizes, _ = retina[0]
    assert stride == 8
    assert sizes == pytest.approx((32.0, 32.0 * 2 ** (1 / 3), 32.0 * 2 ** (2 / 3)))
    gen = AnchorGenerator(retina)
    assert gen.num_anchors == [9] * 5
    assert [len(a) for a in gen([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)])] == [144, 36, 9, 9, 9]


def test_straddle_mask():
    anchors = torch.tensor([[-1.0, 0, 10, 10], [0.0, 0, 20, 10], [0.0, 0, 19, 9]])
    assert straddle_mask(anchors, 10, 20, 0).tolist() == [False, False, True]
    assert straddle_mask(anchors, 10, 20, 0.5).tolist() == [False, True, True]
    assert straddle_mask(anchors, 10, 20, 1).tolist() == [True, True, True]
    assert straddle_mask(anchors, 10, 20, -1).tolist() == [True, True, True]


def test_instances_index_and_cat():
    inst = Instances((10, 20), boxes=Boxes(torch.zeros(3, 4)), scores=torch.tensor([0.1, 0.9, 0.5]),
                     polygons=[["a"], ["b"], ["c"]])
    kept = inst[inst.scores > 0.3]
    assert len(kept) == 2 and kept.polygons == [["b"], ["c"]]
    assert inst[1].scores.tolist() == pytest.approx([0.9])
    both = Instances.cat([inst, kept])
    assert len(both) == 5 and both.polygons[-1] == ["c"]
    with pytest.raises(ValueError, match="has 2 entries"):
        inst.classes = torch.zeros(2)
    with pytest.raises(AttributeError, match="no field 'masks'"):
        inst.masks
