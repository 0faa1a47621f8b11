"""NMS, batched NMS, soft-NMS, box IoU and mask pasting of detectron_lib.ops against
torchvision.ops, the pure-PyTorch references and hand-computed cases."""
import math

import pytest
import torch
import torchvision

from detectron_lib import ops
from detectron_lib.errors import ConfigError
from detectron_lib.ops import reference

pytestmark = pytest.mark.skipif(ops.KERNELS_ERROR is not None, reason="compiled kernels not built")


def random_boxes(n, generator, dtype=torch.float32):
    """n boxes in clusters (like detector outputs), with distinct random scores."""
    centers = torch.rand(max(n // 20, 1), 2, generator=generator) * 400
    pick = torch.randint(0, len(centers), (n,), generator=generator)
    xy = centers[pick] + torch.randn(n, 2, generator=generator) * 15
    wh = torch.rand(n, 2, generator=generator) * 60 + 4
    boxes = torch.cat([xy, xy + wh], dim=1).to(dtype)
    return boxes, torch.randperm(n, generator=generator).to(dtype) / n + 0.001


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_nms_matches_torchvision(generator, dtype, threshold):
    boxes, scores = random_boxes(1500, generator, dtype)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(ops.nms(boxes, scores, threshold), expected)
    assert torch.equal(reference.nms(boxes, scores, threshold), expected)


def test_nms_hand_computed():
    """Box 1 overlaps box 0 with IoU 81/119 = 0.68; box 2 is disjoint."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert ops.nms(boxes, scores, 0.7).tolist() == [0, 1, 2]


def test_nms_empty_and_degenerate():
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    # Zero-area boxes have IoU 0/0 = NaN with everything: nothing is suppressed (as torchvision).
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 4.0, 4.0]])
    scores = torch.tensor([0.5, 0.6, 0.7])
    assert torch.equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_batched_nms_matches_torchvision(generator):
    boxes, scores = random_boxes(3000, generator)
    classes = torch.randint(0, 7, (3000,), generator=generator)
    expected = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, classes, 0.5), expected)
    assert torch.equal(reference.batched_nms(boxes, scores, classes, 0.5), expected)


def test_box_iou_matches_torchvision(generator):
    boxes1, _ = random_boxes(70, generator)
    boxes2, _ = random_boxes(50, generator)
    boxes2[0] = torch.tensor([3.0, 3.0, 3.0, 9.0])  # zero area
    torch.testing.assert_close(ops.box_iou(boxes1, boxes2), torchvision.ops.box_iou(boxes1, boxes2), equal_nan=True)
    assert ops.box_iou(torch.zeros(0, 4), boxes2).shape == (0, 50)
    int_boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15]])
    torch.testing.assert_close(ops.box_iou(int_boxes, int_boxes)[0, 1], torch.tensor(25 / 175))


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_soft_nms_matches_reference(generator, method):
    boxes, scores = random_boxes(400, generator)
    keep, kept_scores = ops.soft_nms(boxes, scores, method, 0.5, 0.3, 0.01)
    ref_keep, ref_scores = reference.soft_nms(boxes, scores, method, 0.5, 0.3, 0.01)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(kept_scores, ref_scores)
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])  # decreasing score order


def test_soft_nms_hand_computed():
    """Two boxes with IoU 81/119: linear decays the second to 0.8 * (1 - 81/119);
    gaussian to 0.8 * exp(-(81/119)^2 / 0.5); hard drops it."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]],
                         dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    iou = 81 / 119
    keep, s = ops.soft_nms(boxes, scores, "linear", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.8 * (1 - iou)], dtype=torch.float64))
    keep, s = ops.soft_nms(boxes, scores, "gaussian", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0, 2, 1]  # 0.8 * 0.396 falls below 0.7
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.8 * math.exp(-iou * iou / 0.5)], dtype=torch.float64))
    keep, s = ops.soft_nms(boxes, scores, "hard", 0.5, 0.3, 0.001)
    assert keep.tolist() == [0, 2]
    keep, s = ops.soft_nms(torch.zeros(0, 4), torch.zeros(0), "gaussian")
    assert keep.shape == (0,) and s.shape == (0,)


def test_soft_nms_rejects_unknown_method():
    with pytest.raises(ConfigError, match="'cubic'"):
        ops.soft_nms(torch.zeros(1, 4), torch.ones(1), "cubic")


def test_paste_masks_matches_grid_sample_reference(generator):
    masks = torch.rand(6, 28, 28, generator=generator)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [0.0, 0.0, 100.0, 90.0], [-10.0, 5.0, 20.0, 30.0],
                          [30.0, 30.0, 30.0, 50.0], [60.5, 70.2, 99.9, 120.0], [200.0, 5.0, 260.0, 50.0]])
    ours = ops.paste_masks(masks, boxes, 90, 110)
    torch.testing.assert_close(ours, reference.paste_masks(masks, boxes, 90, 110), atol=1e-5, rtol=1e-5)
    assert torch.equal(ours[3], torch.zeros(90, 110))  # zero-width box
    assert torch.equal(ours[5], torch.zeros(90, 110))  # box outside the image
    assert ops.paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), 5, 5).shape == (0, 5, 5)


def test_paste_masks_hand_computed():
    """Box [2, 6] with 1-pixel mask cells: every pixel centre hits a cell centre, so a
    constant 0.8 mask fills the box exactly and nothing spills. With 2-pixel cells, pixel
    x = 1 (u = -0.75) sees 0.25 of cell 0, x = 2 (u = -0.25) 0.75, x = 3 (u = 0.25) all."""
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]], dtype=torch.float64)
    fine = ops.paste_masks(torch.full((1, 4, 4), 0.8, dtype=torch.float64), boxes, 8, 8)[0]
    expected = torch.zeros(8, 8, dtype=torch.float64)
    expected[2:6, 2:6] = 0.8
    torch.testing.assert_close(fine, expected)
    coarse = ops.paste_masks(torch.full((1, 2, 2), 0.8, dtype=torch.float64), boxes, 8, 8)[0]
    torch.testing.assert_close(coarse[3, :4], torch.tensor([0.0, 0.2, 0.6, 0.8], dtype=torch.float64))
