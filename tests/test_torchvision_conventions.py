"""The config switches for torchvision's conventions, each against torchvision's own code:
pixel normalization (PIXEL_ORDER, PIXEL_MEANS, PIXEL_STDS), mask pasting (MRCNN.LEGACY_PASTE)
keypoint heatmap upsampling (KRCNN.UP_SCALE_INTERPOLATE) and RetinaNet's anchors
(RETINANET.INTEGER_ANCHOR_SIZES, RATIO_MAJOR_ANCHORS), and detectron2's exact, size-first anchors
(MODEL.ROUND_ANCHORS, RPN.SIZE_MAJOR_ANCHORS) against its formula."""
import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectron_lib.config import ConfigError, load_config
from detectron_lib.data.transforms import image_tensor
from detectron_lib.modeling.anchors import AnchorGenerator, retinanet_anchor_specs
from detectron_lib.modeling.image_io import normalize_image
from detectron_lib.modeling.roi_heads.keypoint_head import KeypointPredictor
from detectron_lib.ops.masks import paste_masks_legacy
from detectron_lib.structures.boxes import CONTINUOUS


def test_rgb_normalization_matches_torchvision_transform(repo_root):
    # Reference: GeneralizedRCNNTransform.normalize on the RGB image in [0, 1].
    cfg = load_config(repo_root / "configs/torchvision/fasterrcnn_resnet50_fpn.yaml")
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    ours = normalize_image(image_tensor(bgr), cfg.PIXEL_MEANS, cfg.PIXEL_STDS, cfg.PIXEL_ORDER)
    transform = GeneralizedRCNNTransform(20, 30, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(ours, transform.normalize(rgb), rtol=0, atol=2e-6)


def test_default_normalization_is_detectrons_bgr_mean_subtraction():
    bgr = np.array([[[10, 20, 30]]], dtype=np.uint8)
    out = normalize_image(image_tensor(bgr), (1.0, 2.0, 3.0))
    assert out[:, 0, 0].tolist() == [9.0, 18.0, 27.0]


@pytest.mark.parametrize("overrides,message", [
    (["PIXEL_STDS", "(1.0, 0.0, 1.0)"], "PIXEL_STDS must be positive"),
    (["PIXEL_STDS", "(1.0, 2.0)"], "PIXEL_STDS must be three numbers"),
    (["PIXEL_ORDER", "GBR"], "PIXEL_ORDER: unknown value 'GBR'"),
])
def test_bad_normalization_keys_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_legacy_paste_equals_torchvision_paste_masks_in_image():
    # Reference: torchvision's paste_masks_in_image (padding 1), which follows Detectron's
    # segm_results; boxes of every size, some touching the image border.
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(60, 28, 28, generator=g)
    corners = torch.rand(60, 2, generator=g) * 70
    sizes = torch.rand(60, 2, generator=g) * torch.tensor([60.0, 40.0]) + 0.2
    boxes = torch.cat([corners, corners + sizes], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=130)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=100)
    expected = paste_masks_in_image(masks[:, None], boxes, (100, 130), padding=1)[:, 0]
    assert torch.equal(paste_masks_legacy(masks, boxes, 100, 130), expected)
    assert paste_masks_legacy(masks[:0], boxes[:0], 100, 130).shape == (0, 100, 130)


def test_keypoint_upsampling_switch_matches_torchvision_predictor():
    # Reference: torchvision's KeypointRCNNPredictor (deconv 4x4/2, then F.interpolate x2).
    # KRCNN.UP_SCALE_INTERPOLATE reproduces it; Detectron's transposed-conv upsampling agrees
    # inside and differs on the border cells only.
    torch.manual_seed(0)
    reference = KeypointRCNNPredictor(16, 5)
    x = torch.randn(3, 16, 7, 7)
    ours = {}
    for interpolate in (True, False):
        predictor = KeypointPredictor(16, 5, use_deconv_output=True, up_scale=2,
                                      up_scale_interpolate=interpolate)
        predictor.score.load_state_dict(reference.kps_score_lowres.state_dict())
        with torch.no_grad():
            ours[interpolate] = predictor(x)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(ours[True], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[False][..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ours[False][..., 0, :], expected[..., 0, :])


def test_retinanet_anchor_switches_give_torchvisions_cell_anchors():
    # Reference: the cell anchors of torchvision's retinanet_resnet50_fpn (integer sizes
    # 32, 40, 50 ... on P3..P7, aspect ratio outer, size inner).
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
    reference = TorchvisionAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    reference.set_cell_anchors(torch.float32, torch.device("cpu"))
    specs = retinanet_anchor_specs(3, 7, 3, 4, (0.5, 1.0, 2.0), integer_sizes=True)
    ours = AnchorGenerator(specs, CONTINUOUS, sizes_first=False)
    for level, expected in enumerate(reference.cell_anchors):
        torch.testing.assert_close(ours.cell_anchors[level], expected, rtol=0, atol=0)
    detectron_order = AnchorGenerator(specs, CONTINUOUS, sizes_first=True)
    assert not torch.equal(detectron_order.cell_anchors[0], reference.cell_anchors[0])


# ---- detectron2's anchors --------------------------------------------------------------------
def detectron2_cell_anchors(sizes, aspect_ratios):
    """detectron2's DefaultAnchorGenerator.generate_cell_anchors, written from its formula:
    sizes outer, aspect ratios inner; w = sqrt(size^2 / ratio), h = ratio * w; no rounding."""
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def test_exact_size_first_anchors_are_detectron2s(repo_root):
    # C4's single-level RPN: five sizes, three ratios (detectron2's ANCHOR_GENERATOR defaults)
    cfg = load_config(repo_root / "configs/torchvision/fasterrcnn_resnet50_fpn.yaml", [
        "MODEL.NUM_CLASSES", "3", "MODEL.ROUND_ANCHORS", "False", "RPN.SIZE_MAJOR_ANCHORS", "True",
        "FPN.FPN_ON", "False", "MODEL.CONV_BODY", "ResNet.add_ResNet50_conv4_body",
        "FAST_RCNN.ROI_BOX_HEAD", "ResNet.add_ResNet_roi_conv5_head", "RPN.STRIDE", "16",
        "RPN.SIZES", "(32, 64, 128, 256, 512)", "RPN.ASPECT_RATIOS", "(0.5, 1.0, 2.0)",
        "TRAIN.WEIGHTS", ""])
    from detectron_lib.modeling.meta_arch import build_model

    (cell,) = build_model(cfg).rpn.anchor_generator.cell_anchors
    expected = detectron2_cell_anchors((32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    torch.testing.assert_close(cell, expected, rtol=0, atol=1e-5)
    assert cell[0, 2] - cell[0, 0] == pytest.approx(45.2548, abs=1e-4)  # not rounded to 45


def test_exact_retinanet_anchors_are_detectron2s():
    sizes = tuple(32 * 2 ** (o / 3) for o in range(3))
    cell = AnchorGenerator(retinanet_anchor_specs(3, 3, 3, 4, (0.5, 1.0, 2.0)),
                           CONTINUOUS, sizes_first=True, round_to_pixels=False).cell_anchors[0]
    torch.testing.assert_close(cell, detectron2_cell_anchors(sizes, (0.5, 1.0, 2.0)), rtol=0, atol=1e-5)


def test_exact_anchors_need_the_continuous_geometry():
    with pytest.raises(ConfigError, match=r"MODEL.ROUND_ANCHORS False.*MODEL.BBOX_LEGACY_PLUS_ONE False"):
        load_config(None, ["MODEL.ROUND_ANCHORS", "False"])


@pytest.mark.parametrize("overrides,message", [
    (["MODEL.RESCALE_PER_AXIS", "True"], r"MODEL.RESCALE_PER_AXIS.*MODEL.BBOX_LEGACY_PLUS_ONE False"),
    (["MODEL.RESCALE_PER_AXIS", "True", "MODEL.BBOX_LEGACY_PLUS_ONE", "False",
      "TEST.BBOX_AUG.ENABLED", "True"], "turn them off or set MODEL.RESCALE_PER_AXIS False"),
])
def test_detectron2_postprocess_needs_its_geometry_and_no_detectron_tta(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
