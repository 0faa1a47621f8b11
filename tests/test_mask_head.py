"""Mask R-CNN heads, targets, loss and inference (detectron_lib.modeling.roi_heads.mask_head).

References: hand-made target bitmaps and hand-computed binary cross-entropy numbers,
torchvision's roi_align (RLE targets), torch's bilinear interpolate (fixed upsampling),
torchvision's paste_masks_in_image (pasting), and Detectron's configs of the same name.
"""
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

from detectron_lib.config import load_config
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.modeling.backbone.build import build_roi_box_head
from detectron_lib.modeling.poolers import RoIPooler
from detectron_lib.modeling.roi_heads.mask_head import (
    IGNORE_TARGET,
    BilinearUpsample,
    MaskConvUpsampleHead,
    MaskPredictor,
    MaskROIHeads,
    MaskRes5UpsampleHead,
    build_mask_roi_heads,
    mask_rcnn_loss,
    mask_targets,
    paste_mask_probs,
)
from detectron_lib.structures.boxes import Boxes
from detectron_lib.structures.instances import Instances

FPN_1X = "12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml"
FPN_GN = "04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml"
C4_1X = "12_2017_baselines/e2e_mask_rcnn_R-50-C4_1x.yaml"
HEAD = "mask_rcnn_heads.mask_rcnn_fcn_head_"


def _rle_of(bitmap):
    return mask_util.encode(np.asfortranarray(bitmap.astype(np.uint8)))


# ---- targets --------------------------------------------------------------------------------
def test_polygon_filling_right_half_of_box_gives_right_half_target():
    """Hand-made: box 20x20 at (10, 20), polygon covering x in [20, 30] -> columns M/2.. are 1."""
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    right_half = [[20.0, 20.0, 30.0, 20.0, 30.0, 40.0, 20.0, 40.0]]
    for m in (4, 28):
        target = mask_targets(box, [right_half], m)
        expected = torch.zeros(1, m, m)
        expected[:, :, m // 2:] = 1
        assert target.dtype == torch.float32
        assert torch.equal(target, expected)


def test_rle_gives_the_same_target_as_the_polygon():
    """The same square as an RLE (pycocotools-encoded bitmap) and as a polygon, two RoIs
    (the second one only partly overlapping the object), sharing one RLE dict."""
    bitmap = np.zeros((50, 60), dtype=np.uint8)
    bitmap[20:40, 20:30] = 1
    rle = _rle_of(bitmap)
    polygon = [[20.0, 20.0, 30.0, 20.0, 30.0, 40.0, 20.0, 40.0]]
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [16.0, 12.0, 44.0, 33.0]])
    from_rle = mask_targets(boxes, [rle, rle], 28)
    from_polygon = mask_targets(boxes, [polygon, polygon], 28)
    assert from_rle.sum() > 0
    assert torch.equal(from_rle, from_polygon)


def test_rle_targets_match_torchvision_roi_align_of_the_bitmap():
    """RLE targets = torchvision roi_align (aligned, one sample per cell) of the full bitmap,
    thresholded at 0.5 (what detectron2 / torchvision do with bitmask ground truth)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:80]
    bitmap = (((xx - 37.3) / 21.0) ** 2 + ((yy - 30.6) / 13.0) ** 2 < 1).astype(np.uint8)
    x1 = rng.uniform(5, 40, 6)
    y1 = rng.uniform(5, 30, 6)
    boxes = torch.tensor(np.stack([x1, y1, x1 + rng.uniform(8, 40, 6),
                                   y1 + rng.uniform(8, 30, 6)], axis=1), dtype=torch.float32)
    rle = _rle_of(bitmap)
    ours = mask_targets(boxes, [rle] * len(boxes), 14)
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    reference = torchvision.ops.roi_align(torch.from_numpy(bitmap).float()[None, None], rois,
                                          14, 1.0, sampling_ratio=1, aligned=True)[:, 0] >= 0.5
    assert torch.equal(ours, reference.float())


# ---- loss -----------------------------------------------------------------------------------
def _bce(x, y):
    return math.log1p(math.exp(x)) - x * y


def test_loss_is_hand_computed_bce_on_the_target_class_channel():
    """2x2 masks, 3 channels; RoI of class 2 is scored on channel 2 only; an ignored (-1)
    RoI and the other channels (large logits) do not change the mean."""
    logits = torch.full((2, 3, 2, 2), 50.0)
    logits[0, 2] = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                           torch.full((2, 2), IGNORE_TARGET)])
    expected = (_bce(0, 1) + _bce(2, 0) + _bce(-1, 0) + _bce(1, 1)) / 4
    loss = mask_rcnn_loss(logits, torch.tensor([2, 1]), targets, weight=0.5)
    assert loss.item() == pytest.approx(0.5 * expected, rel=1e-6)


def test_loss_is_zero_when_every_pixel_is_ignored():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = mask_rcnn_loss(logits, torch.tensor([1]), torch.full((1, 3, 3), IGNORE_TARGET))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


# ---- heads from Detectron's configs ---------------------------------------------------------
def _backbone_maps(cfg):
    """Channels and strides of the backbone maps the config's mask head pools from."""
    if cfg.FPN.FPN_ON:
        return {f"p{k}": 256 for k in range(2, 7)}, {f"p{k}": 2 ** k for k in range(2, 7)}
    return {"res4": 1024}, {"res4": 16}


def _build(reference_dir, config, overrides=()):
    cfg = load_config(reference_dir / "detectron_configs" / config,
                      ["MODEL.NUM_CLASSES", "4", *overrides])
    channels, strides = _backbone_maps(cfg)
    box_head = None if cfg.FPN.FPN_ON else build_roi_box_head(cfg, channels["res4"])
    return cfg, build_mask_roi_heads(cfg, channels, strides, box_head=box_head), box_head


@pytest.mark.parametrize("config, head, resolution", [
    (FPN_1X, "v1up4convs", 28),
    (FPN_GN, "v1up4convs_gn", 28),
    (FPN_1X, "v1up", 28),
    (C4_1X, "v0upshare", 14),
    (C4_1X, "v0up", 14),
])
def test_head_output_shapes_with_detectron_configs(reference_dir, config, head, resolution):
    """Each registered head, with the Detectron baseline config that uses it (v1up / v0up:
    that config with MRCNN.ROI_MASK_HEAD overridden): logits (R, NUM_CLASSES, M, M)."""
    cfg, heads, box_head = _build(reference_dir, config, ["MRCNN.ROI_MASK_HEAD", HEAD + head])
    assert cfg.MRCNN.RESOLUTION == resolution
    channels, strides = _backbone_maps(cfg)
    generator = torch.Generator().manual_seed(0)
    features = {name: torch.randn(1, c, 256 // strides[name], 256 // strides[name],
                                  generator=generator) for name, c in channels.items()}
    boxes = [Boxes(torch.tensor([[10.0, 20.0, 100.0, 120.0], [0.0, 0.0, 255.0, 255.0],
                                 [40.0, 50.0, 60.0, 58.0]]))]
    logits = heads.mask_logits(features, boxes)
    assert logits.shape == (3, 4, resolution, resolution)
    convs = [m for m in heads.head.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in heads.head.modules() if isinstance(m, torch.nn.GroupNorm)]
    if head.startswith("v1up"):
        assert len(convs) == (2 if head == "v1up" else 4)
        assert len(norms) == (4 if head.endswith("_gn") else 0)
        assert all(c.out_channels == cfg.MRCNN.DIM_REDUCED for c in convs)
    if head == "v0upshare":
        assert heads.shared_res5 is box_head.res5 and heads.head.res5 is None
    if head == "v0up":
        assert heads.shared_res5 is None and heads.head.res5 is not None

    heads.eval()
    detections = [Instances((256, 256), boxes=boxes[0], scores=torch.ones(3),
                            classes=torch.tensor([1, 3, 2]))]
    out, losses = heads(features, detections)
    assert losses == {}
    probs = out[0].mask_probs
    assert probs.shape == (3, resolution, resolution)
    own_channel = torch.sigmoid(logits[torch.arange(3), torch.tensor([1, 3, 2])])
    assert torch.allclose(probs, own_channel, atol=1e-6)


def test_class_agnostic_mask_predicts_one_channel(reference_dir):
    _, heads, _ = _build(reference_dir, FPN_1X, ["MRCNN.CLS_SPECIFIC_MASK", "False",
                                                  "MRCNN.DIM_REDUCED", "16"])
    assert heads.predictor.logits.out_channels == 1
    features = {f"p{k}": torch.randn(1, 256, 64 // 2 ** k, 64 // 2 ** k) for k in range(2, 7)}
    detections = [Instances((64, 64), boxes=Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0]])),
                            scores=torch.ones(1), classes=torch.tensor([3]))]
    out, _ = heads.eval()(features, detections)
    assert out[0].mask_probs.shape == (1, 28, 28)


def test_weight_fills_follow_detectron(reference_dir):
    """Hand-computed stds: MSRAFill (MRCNN.CONV_INIT of the baselines) is N(0, 2 / fan_out),
    fan_out = out_channels x kernel area; v0up's transposed conv and a class-agnostic logits
    conv use GaussianFill(0.001) whatever CONV_INIT says (Detectron's mask_rcnn_heads)."""
    _, fpn, _ = _build(reference_dir, FPN_1X)
    conv = fpn.head.convs[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0
    _, agnostic, _ = _build(reference_dir, FPN_1X, ["MRCNN.CLS_SPECIFIC_MASK", "False"])
    assert agnostic.predictor.logits.weight.std().item() == pytest.approx(0.001, rel=0.2)
    _, v0up, _ = _build(reference_dir, C4_1X, ["MRCNN.ROI_MASK_HEAD", HEAD + "v0up"])
    assert v0up.head.upsample.weight.std().item() == pytest.approx(0.001, rel=0.02)


def test_resolution_that_the_head_cannot_predict_is_a_config_error(reference_dir):
    with pytest.raises(ConfigError, match="MRCNN.RESOLUTION"):
        _build(reference_dir, FPN_1X, ["MRCNN.RESOLUTION", "14"])


def test_upsample_ratio_doubles_the_predicted_resolution(reference_dir):
    _, heads, _ = _build(reference_dir, FPN_1X, ["MRCNN.RESOLUTION", "56",
                                                  "MRCNN.UPSAMPLE_RATIO", "2",
                                                  "MRCNN.DIM_REDUCED", "16"])
    features = {f"p{k}": torch.randn(1, 256, 64 // 2 ** k, 64 // 2 ** k) for k in range(2, 7)}
    assert heads.mask_logits(features, [Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0]]))]).shape == (
        1, 4, 56, 56)


def test_shared_res5_head_without_res5_box_head_is_a_config_error(reference_dir):
    cfg = load_config(reference_dir / "detectron_configs" / C4_1X, ["MODEL.NUM_CLASSES", "4"])
    with pytest.raises(ConfigError, match="FAST_RCNN.ROI_BOX_HEAD"):
        build_mask_roi_heads(cfg, {"res4": 1024}, {"res4": 16}, box_head=None)


def test_fixed_bilinear_upsampling_matches_torch_interpolate_inside():
    """Detectron's BilinearInterpolation kernel = bilinear interpolate (align_corners=False)
    away from the border, where the transposed conv sees zero padding."""
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for factor in (2, 4):
        ours = BilinearUpsample(factor)(x)
        reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert ours.shape == reference.shape
        inner = (..., slice(factor, -factor), slice(factor, -factor))
        assert torch.allclose(ours[inner], reference[inner], atol=1e-5)


# ---- training -------------------------------------------------------------------------------
def _tiny_mask_heads(head=None, max_fg_rois_per_image=0):
    torch.manual_seed(0)
    head = head or MaskConvUpsampleHead(8, 2, 16, weight_fill="MSRAFill")
    return MaskROIHeads(RoIPooler(7, [4], sampling_ratio=2), head,
                        MaskPredictor(head.out_channels, 3, "MSRAFill"), ["p2"],
                        max_fg_rois_per_image=max_fg_rois_per_image)


def _one_roi_batch(roi_class):
    features = {"p2": torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2))}
    rois = [Instances((64, 64), boxes=Boxes(torch.tensor([[8.0, 8.0, 48.0, 48.0]])),
                      classes=torch.tensor([roi_class]), matched_gt=torch.tensor([0]))]
    triangle = [[10.0, 10.0, 46.0, 12.0, 20.0, 44.0]]
    gt = [Instances((64, 64), boxes=Boxes(torch.tensor([[10.0, 10.0, 46.0, 44.0]])),
                    classes=torch.tensor([2]), segms=[triangle])]
    return features, rois, gt


def test_sgd_steps_on_one_fixed_roi_reduce_the_loss():
    heads = _tiny_mask_heads()
    features, rois, gt = _one_roi_batch(roi_class=2)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        _, loss = heads(features, rois, gt)
        optimizer.zero_grad()
        loss["loss_mask"].backward()
        optimizer.step()
        losses.append(loss["loss_mask"].item())
    assert losses[-1] < 0.3 * losses[0]


def test_image_without_fg_rois_gives_zero_loss_but_gradients():
    """Detectron keeps one bg RoI with ignored targets: the loss is 0 and every weight still
    receives a (zero) gradient, so data-parallel training sees all parameters used."""
    heads = _tiny_mask_heads()
    features, rois, gt = _one_roi_batch(roi_class=0)
    _, loss = heads(features, rois, gt)
    loss["loss_mask"].backward()
    assert loss["loss_mask"].item() == 0.0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0
               for p in heads.parameters())


def _rois_of_classes(classes):
    """One image's RoIs: box k is shifted by 3k px; every fg RoI matches gt 0."""
    n = len(classes)
    shifts = 3.0 * torch.arange(n, dtype=torch.float32)[:, None]
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]]) + shifts
    return Instances((64, 64), boxes=Boxes(boxes), classes=torch.tensor(classes),
                     matched_gt=torch.zeros(n, dtype=torch.int64))


def test_capped_mask_loss_is_the_loss_of_the_first_fg_rois():
    """MRCNN.MAX_FG_ROIS_PER_IM 2: the loss of RoIs (fg, bg, fg, fg, fg) is the uncapped loss
    of the first two fg RoIs alone, and an image with fewer fg RoIs keeps them all."""
    features, _, gt = _one_roi_batch(roi_class=2)
    features = {"p2": features["p2"].expand(2, -1, -1, -1)}
    rois = [_rois_of_classes([2, 0, 1, 2, 2]), _rois_of_classes([0, 1])]
    _, loss = _tiny_mask_heads(max_fg_rois_per_image=2)(features, rois, gt * 2)
    reference = [rois[0][torch.tensor([0, 2])], rois[1][torch.tensor([1])]]
    _, expected = _tiny_mask_heads()(features, reference, gt * 2)
    uncapped = _tiny_mask_heads()(features, rois, gt * 2)[1]["loss_mask"]
    assert loss["loss_mask"].item() == pytest.approx(expected["loss_mask"].item(), rel=1e-6)
    assert loss["loss_mask"].item() != pytest.approx(uncapped.item(), rel=1e-3)


def test_negative_fg_roi_cap_is_a_config_error(reference_dir):
    with pytest.raises(ConfigError, match="MRCNN.MAX_FG_ROIS_PER_IM"):
        _build(reference_dir, FPN_1X, ["MRCNN.MAX_FG_ROIS_PER_IM", "-1"])


def test_res5_upsample_head_is_trained_through_the_shared_res5():
    res5 = torch.nn.Sequential(torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU())
    head = MaskRes5UpsampleHead(12, 16, "MSRAFill")
    heads = MaskROIHeads(RoIPooler(14, [4], sampling_ratio=2), head,
                         MaskPredictor(16, 3, "MSRAFill"), ["p2"], shared_res5=res5)
    features, rois, gt = _one_roi_batch(roi_class=2)
    _, loss = heads(features, rois, gt)
    loss["loss_mask"].backward()
    assert res5[0].weight.grad is not None and torch.count_nonzero(res5[0].weight.grad) > 0


# ---- inference ------------------------------------------------------------------------------
def test_inference_without_detections_gives_empty_mask_probs():
    heads = _tiny_mask_heads().eval()
    features, _, _ = _one_roi_batch(roi_class=2)
    empty = [Instances((64, 64), boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                       classes=torch.zeros(0, dtype=torch.int64))]
    out, _ = heads(features, empty)
    assert out[0].mask_probs.shape == (0, 14, 14)
    assert paste_mask_probs(out[0], 64, 64).shape == (0, 64, 64)


def test_paste_of_constant_one_mask_covers_exactly_the_box():
    """Hand-made box bitmaps, and torchvision's paste_masks_in_image: that one follows
    Detectron's legacy paste (box expanded by (M+2)/M and rounded to integer pixels, +1 width),
    so it may add a one-pixel border around the box; it agrees exactly where the rounding
    lands on the box (the second box)."""
    boxes = torch.tensor([[3.0, 5.0, 13.0, 12.0], [10.0, 2.0, 24.0, 20.0],
                          [30.0, 40.0, 86.0, 68.0], [0.0, 0.0, 28.0, 28.0]])
    ones = torch.ones(len(boxes), 28, 28)
    detections = Instances((80, 96), boxes=Boxes(boxes), mask_probs=ones)
    ours = paste_mask_probs(detections, 80, 96, thresh=0.5)
    expected = torch.zeros(len(boxes), 80, 96, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        expected[k, y1:y2, x1:x2] = True
    assert ours.dtype == torch.bool
    assert torch.equal(ours, expected)
    torchvision_masks = paste_masks_in_image(ones[:, None], boxes, (80, 96))[:, 0] > 0.5
    assert torch.equal(ours[1], torchvision_masks[1])
    one_pixel_border = F.max_pool2d(ours[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    assert bool((ours <= torchvision_masks).all())
    assert bool((torchvision_masks <= one_pixel_border).all())


def test_ground_truth_without_masks_is_a_dataset_error():
    heads = _tiny_mask_heads()
    features, rois, gt = _one_roi_batch(roi_class=2)
    no_masks = [Instances(g.image_size, boxes=g.boxes, classes=g.classes) for g in gt]
    with pytest.raises(DatasetError, match="segms"):
        heads(features, rois, no_masks)
