"""Test-time augmentation (TEST.BBOX_AUG, MASK_AUG, KPS_AUG in inference/tta.py): box mapping round
trips, the combination heuristics against hand-computed values, a flip-equivariant stub detector
whose augmented passes must agree with its identity pass, real models whose identity-only
augmentation must equal plain inference, and ``detectron test`` with BBOX_AUG and SOFT_NMS on."""
import json
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.data.transforms import image_tensor
from detectron_lib.data.shapes import generate_shapes_dataset
from detectron_lib.engine.checkpoint import save_checkpoint
from detectron_lib.errors import ConfigError
from detectron_lib.inference.predictor import Predictor
from detectron_lib.inference.tta import (
    Augmentation,
    augmentations,
    combine_box_predictions,
    combine_heatmaps,
    DetectorWithTTA,
    combine_soft_masks,
    drop_by_size,
    flip_heatmaps,
    map_boxes,
    size_dependent_use,
    transform_image,
)
from detectron_lib.modeling.image_io import DetectorIO
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.postprocess import BoxVoting
from detectron_lib.modeling.roi_heads.fast_rcnn import box_results_with_nms_and_limit
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, Boxes
from detectron_lib.structures.instances import Instances

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"
SMALL_MODEL = ["FPN.DIM", "32", "FAST_RCNN.MLP_HEAD_DIM", "32", "TEST.RPN_PRE_NMS_TOP_N", "200",
               "TEST.RPN_POST_NMS_TOP_N", "50", "TEST.SCALE", "64", "TEST.MAX_SIZE", "96"]


# ---- geometry --------------------------------------------------------------------------------


def test_flip_boxes_hand_computed_both_conventions():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0, 0.0, 0.0, 64.0, 8.0]])  # two boxes per row
    assert CONTINUOUS.flip(boxes, 64).tolist() == [[34.0, 5.0, 54.0, 20.0, 0.0, 0.0, 64.0, 8.0]]
    # Legacy (pixel-index) boxes: x -> width - 1 - x, as Detectron's box_utils.flip_boxes.
    assert PIXEL_INDICES.flip(boxes[:, :4], 64).tolist() == [[33.0, 5.0, 53.0, 20.0]]
    # The data pipeline flips numpy records with the same function, leaving its input alone.
    array = boxes[:, :4].numpy()
    assert CONTINUOUS.flip(array, 64).tolist() == [[34.0, 5.0, 54.0, 20.0]]
    assert array.tolist() == [[10.0, 5.0, 30.0, 20.0]]


@pytest.mark.parametrize("aug", [
    Augmentation(600, 1000, hflip=True),
    Augmentation(600, 1000, aspect_ratio=0.5),
    Augmentation(600, 1000, hflip=True, aspect_ratio=1.7),
])
@pytest.mark.parametrize("convention", [CONTINUOUS, PIXEL_INDICES])
def test_box_mapping_round_trip(aug, convention):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 70
    boxes = Boxes(torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 30], dim=1).repeat(1, 3),
                  convention)
    there = map_boxes(boxes, aug, 101)
    assert not torch.allclose(there.tensor, boxes.tensor) and there.convention is convention
    torch.testing.assert_close(map_boxes(there, aug, 101, inverse=True).tensor, boxes.tensor)


def test_box_mapping_follows_the_image_transform():
    """A box drawn in an image lands on the same pixels of the transformed image."""
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[10:20, 8:24] = 255
    box = Boxes(torch.tensor([[8.0, 10.0, 24.0, 20.0]]))
    for aug in (Augmentation(40, 100, hflip=True), Augmentation(40, 100, aspect_ratio=0.5),
                Augmentation(40, 100, hflip=True, aspect_ratio=0.5)):
        moved = transform_image(image, aug)[:, :, 0] > 127
        x1, y1, x2, y2 = map_boxes(box, aug, 60).tensor[0].tolist()
        expected = np.zeros_like(moved)
        expected[int(y1):int(y2), int(x1):int(x2)] = True
        assert np.array_equal(moved, expected), aug


def test_augmentations_follow_the_config():
    node = SimpleNamespace(H_FLIP=True, SCALES=(400, 800), MAX_SIZE=2000, SCALE_H_FLIP=True,
                           ASPECT_RATIOS=(0.5,), ASPECT_RATIO_H_FLIP=False)
    passes = augmentations(node, 600, 1000)
    assert passes[0].is_identity and passes[0] == Augmentation(600, 1000)
    assert passes[1:] == [
        Augmentation(600, 1000, hflip=True),
        Augmentation(400, 2000, size_tag="down"), Augmentation(400, 2000, hflip=True, size_tag="down"),
        Augmentation(800, 2000, size_tag="up"), Augmentation(800, 2000, hflip=True, size_tag="up"),
        Augmentation(600, 1000, aspect_ratio=0.5),
    ]


# ---- combination heuristics ----------------------------------------------------------------


def test_combine_box_predictions_heuristics():
    identity = (torch.tensor([[0.2, 0.8]]), Boxes(torch.tensor([[0.0, 0, 10, 10, 2, 2, 12, 12]])))
    flipped = (torch.tensor([[0.4, 0.6]]), Boxes(torch.tensor([[0.0, 0, 10, 10, 4, 2, 14, 12]])))
    scores, boxes = combine_box_predictions([identity, flipped], "ID", "ID")
    assert scores.tolist() == identity[0].tolist()
    assert boxes.tensor.tolist() == identity[1].tensor.tolist()
    scores, boxes = combine_box_predictions([identity, flipped], "AVG", "AVG")
    torch.testing.assert_close(scores, torch.tensor([[0.3, 0.7]]))
    assert boxes.tensor.tolist() == [[0.0, 0, 10, 10, 3, 2, 13, 12]]
    scores, boxes = combine_box_predictions([identity, flipped], "UNION", "UNION")
    assert scores.shape == (2, 2) and boxes.tensor.shape == (2, 8)
    with pytest.raises(ConfigError, match="AVG needs the same RoIs"):
        combine_box_predictions([identity, (scores, boxes)], "AVG", "AVG")


def test_drop_by_size():
    scores = torch.tensor([[0.1, 0.9, 0.8]])
    boxes = Boxes(torch.tensor([[0.0, 0, 10, 10, 0, 0, 4, 4, 0, 0, 30, 30]]))  # areas 100, 16, 900
    assert drop_by_size(scores, boxes, "down", 50, 500).flatten().tolist() == pytest.approx([0.1, 0.0, 0.8])
    assert drop_by_size(scores, boxes, "up", 50, 500).flatten().tolist() == pytest.approx([0.1, 0.9, 0.0])
    assert drop_by_size(scores, boxes, None, 50, 500) is scores
    agnostic = Boxes(torch.tensor([[0.0, 0, 10, 10, 0, 0, 30, 30]]))  # the fg box serves both classes
    assert drop_by_size(scores, agnostic, "up", 50, 500).flatten().tolist() == [0.0, 0.0, 0.0]


def test_combine_soft_masks_heuristics():
    masks = torch.tensor([[[[0.2, 0.9]]], [[[0.6, 0.5]]]])  # 2 passes, 1 detection, 1x2 mask
    assert combine_soft_masks(masks, "SOFT_AVG").flatten().tolist() == pytest.approx([0.4, 0.7])
    assert combine_soft_masks(masks, "SOFT_MAX").flatten().tolist() == pytest.approx([0.6, 0.9])
    logit = lambda p: np.log(p / (1 - p))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    expected = [sigmoid((logit(0.2) + logit(0.6)) / 2), sigmoid((logit(0.9) + logit(0.5)) / 2)]
    assert combine_soft_masks(masks, "LOGIT_AVG").flatten().tolist() == pytest.approx(expected)
    only_first = torch.tensor([[True], [False]])
    assert combine_soft_masks(masks, "SOFT_AVG", only_first).flatten().tolist() == pytest.approx([0.2, 0.9])
    assert combine_soft_masks(masks, "SOFT_MAX", only_first).flatten().tolist() == pytest.approx([0.2, 0.9])
    certain = torch.tensor([[[[1.0]]], [[[0.0]]]])  # Detectron floors p at 1e-20, not 1 - p
    assert torch.isfinite(combine_soft_masks(certain, "LOGIT_AVG")).all()


def test_size_dependent_use():
    use = size_dependent_use([None, "down", "up"], torch.tensor([100.0, 10000.0]), 1000)
    # small object: no downscaled pass; large object: no upscaled pass
    assert use.tolist() == [[True, True], [False, True], [True, False]]


# ---- a flip-equivariant stub detector ------------------------------------------------------


class _Image(nn.Module):
    """A body whose only feature map is the normalized image itself (PIXEL_MEANS 0)."""

    def forward(self, images):
        return {"image": images}


class _WholeImageRPN(nn.Module):
    def forward(self, image_sizes, features, scales):
        return [Instances(size, boxes=Boxes(torch.tensor([[0.0, 0.0, size[1], size[0]]])))
                for size in image_sizes], {}


class _ThresholdBoxHeads(nn.Module):
    """One class-1 RoI: the bounding box of the pixels brighter than mid-grey in channel 0."""

    def __init__(self, box_voting=None):
        super().__init__()
        self.box_voting = box_voting

    def predict_boxes(self, features, proposals):
        (h, w) = proposals[0].image_size
        ys, xs = torch.nonzero(features["image"][0, 0, :h, :w] > 127.5, as_tuple=True)
        box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        return [(torch.tensor([[0.1, 0.9]]), Boxes(box.repeat(2)[None]))]

    def postprocess(self, scores, boxes, size):
        return box_results_with_nms_and_limit(scores, boxes, size, 0.05, 0.5, 100,
                                              box_voting=self.box_voting)


class _RampMaskHeads(nn.Module):
    """Masks as RoIAlign crops of channel 1."""

    def forward(self, features, instances, targets=None, scales=None):
        out = []
        for image_instances in instances:
            rois = torch.cat([torch.zeros(len(image_instances), 1), image_instances.boxes.tensor],
                             dim=1)
            crops = torchvision.ops.roi_align(features["image"][:, 1:2], rois, (8, 8), 1.0, 2,
                                              aligned=True)
            result = image_instances[:]
            result.mask_probs = crops[:, 0] / 255.0
            out.append(result)
        return out, {}


class ThresholdDetector(nn.Module):
    """A detector with the parts DetectorWithTTA uses, whose box and mask both commute
    with flips and with 2x bilinear upscaling of a sharp-edged box, so every augmented pass
    must give back the identity pass's boxes and masks."""

    def __init__(self, box_voting=None):
        super().__init__()
        self.io = DetectorIO((0.0, 0.0, 0.0), test_scale=40, test_max_size=1000)
        self.backbone = _Image()
        self.body_precision = "float32"
        self.rpn = _WholeImageRPN()
        self.roi_heads = _ThresholdBoxHeads(box_voting)
        self.instance_head_names = ["mask_heads"]
        self.mask_heads = _RampMaskHeads()
        self.keypoint_heads = None


def detect_with_augmentation(model, cfg, image_bgr):
    """DetectorWithTTA's detections of one (H, W, 3) uint8 BGR image."""
    (out,) = DetectorWithTTA(model, cfg)([image_tensor(image_bgr)])
    return out


def stub_config(**options):
    opts = {"PIXEL_MEANS": "(0.0, 0.0, 0.0)", "TEST.SCALE": "40", "TEST.MAX_SIZE": "1000",
            "MODEL.NUM_CLASSES": "2", **options}
    return load_config(str(SHAPES_CONFIG), [t for pair in opts.items() for t in pair])


def stub_image():
    """A bright box off-centre in channel 0, a left-to-right ramp in channel 1 inside it (so
    its mask is not mirror-symmetric)."""
    image = np.zeros((40, 64, 3), dtype=np.uint8)
    image[8:28, 10:30, 0] = 255
    image[8:28, 10:30, 1] = np.linspace(50, 255, 20, dtype=np.uint8)[None, :]
    return image


def test_stub_detector_passes_agree_with_the_identity_pass():
    image = stub_image()
    plain = detect_with_augmentation(ThresholdDetector(), stub_config(), image)
    assert plain.boxes.tensor.tolist() == [[10.0, 8.0, 30.0, 28.0]]
    assert plain.scores.tolist() == pytest.approx([0.9])
    cfg = stub_config(**{"TEST.BBOX_AUG.ENABLED": "True", "TEST.BBOX_AUG.H_FLIP": "True",
                         "TEST.BBOX_AUG.SCALES": "(80,)", "TEST.BBOX_AUG.SCALE_H_FLIP": "True",
                         "TEST.BBOX_AUG.ASPECT_RATIOS": "(2.0,)",
                         "TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP": "True",
                         "TEST.MASK_AUG.ENABLED": "True", "TEST.MASK_AUG.H_FLIP": "True",
                         "TEST.MASK_AUG.HEUR": "SOFT_MAX"})
    augmented = detect_with_augmentation(ThresholdDetector(BoxVoting(0.5, "AVG")), cfg, image)
    # Seven passes mapped back onto the same box: NMS leaves one detection, and voting over
    # all seven (score-weighted mean box) moves it nowhere.
    torch.testing.assert_close(augmented.boxes.tensor, plain.boxes.tensor)
    assert augmented.scores.tolist() == pytest.approx([0.9])
    # The flipped pass's mask is mirrored back: the max over both equals the identity mask.
    torch.testing.assert_close(augmented.mask_probs, plain.mask_probs)
    assert not torch.allclose(plain.mask_probs, plain.mask_probs.flip(-1))


def test_stub_masks_without_unflipping_would_differ():
    """Guards the test above: the hflip pass's raw mask is the mirror of the identity mask."""
    model, image = ThresholdDetector(), stub_image()
    flipped = np.ascontiguousarray(image[:, ::-1])
    boxes = map_boxes(Boxes(torch.tensor([[10.0, 8.0, 30.0, 28.0]])),
                      Augmentation(40, 1000, hflip=True), 64)
    features = {"image": image_tensor(flipped)[None].float()}
    (raw,), _ = model.mask_heads(features, [Instances((40, 64), boxes=boxes)])
    plain = detect_with_augmentation(model, stub_config(), image)
    torch.testing.assert_close(raw.mask_probs.flip(-1), plain.mask_probs)


# ---- real models -----------------------------------------------------------------------------


def _save_random_model(cfg, path):
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg))
    return str(path)


def test_identity_only_augmentation_equals_plain_inference(tmp_path):
    """BBOX_AUG on with no extra pass (UNION of one pass) is the model's ordinary inference."""
    cfg = load_config(str(SHAPES_CONFIG), SMALL_MODEL)
    weights = _save_random_model(cfg, tmp_path / "model.pth")
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    plain = Predictor(cfg, weights)(image)
    assert len(plain) > 0
    cfg_aug = load_config(str(SHAPES_CONFIG), SMALL_MODEL + ["TEST.BBOX_AUG.ENABLED", "True"])
    augmented = Predictor(cfg_aug, weights)(image)
    torch.testing.assert_close(augmented.boxes.tensor, plain.boxes.tensor)
    torch.testing.assert_close(augmented.scores, plain.scores)
    assert torch.equal(augmented.classes, plain.classes)
    # With a flipped pass the union has more candidates and still comes out sorted.
    cfg_flip = load_config(str(SHAPES_CONFIG), SMALL_MODEL + [
        "TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True", "TEST.SOFT_NMS.ENABLED", "True"])
    flipped = Predictor(cfg_flip, weights)(image)
    assert len(flipped) > 0 and (flipped.scores[:-1] >= flipped.scores[1:]).all()
    assert (flipped.boxes.tensor[:, 2] <= 90 + 1e-4).all() and (flipped.boxes.tensor[:, 0] >= 0).all()


def test_mask_rcnn_mask_augmentation(reference_dir):
    name = reference_dir / "detectron_configs" / "12_2017_baselines" / "e2e_mask_rcnn_R-50-FPN_1x.yaml"
    small = ["MODEL.NUM_CLASSES", "3", "TEST.RPN_PRE_NMS_TOP_N", "200", "TEST.RPN_POST_NMS_TOP_N", "20",
             "TEST.SCALE", "64", "TEST.MAX_SIZE", "96", "TEST.DETECTIONS_PER_IM", "5"]
    torch.manual_seed(0)
    model = build_model(load_config(name, small)).eval()
    image = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    plain = detect_with_augmentation(model, load_config(name, small), image)
    assert 0 < len(plain) <= 5 and plain.mask_probs.shape == (len(plain), 28, 28)
    # MASK_AUG with no extra pass keeps the identity masks (the model's own forward's).
    cfg = load_config(name, small + ["TEST.MASK_AUG.ENABLED", "True"])
    same = detect_with_augmentation(model, cfg, image)
    torch.testing.assert_close(same.mask_probs, plain.mask_probs)
    for heur in ("SOFT_AVG", "SOFT_MAX", "LOGIT_AVG"):
        cfg = load_config(name, small + [
            "TEST.MASK_AUG.ENABLED", "True", "TEST.MASK_AUG.HEUR", heur, "TEST.MASK_AUG.H_FLIP", "True",
            "TEST.MASK_AUG.SCALES", "(48, 80)", "TEST.MASK_AUG.SCALE_SIZE_DEP", "True",
            "TEST.MASK_AUG.AREA_TH", "400"])
        out = detect_with_augmentation(model, cfg, image)
        torch.testing.assert_close(out.boxes.tensor, plain.boxes.tensor)  # masks only: boxes unchanged
        assert out.mask_probs.shape == plain.mask_probs.shape
        assert ((out.mask_probs >= 0) & (out.mask_probs <= 1)).all()
        assert not torch.allclose(out.mask_probs, plain.mask_probs)


def test_combine_and_flip_heatmaps():
    heatmaps = torch.tensor([[[[1.0, -2.0]], [[0.0, 4.0]]]])[None]  # 1 pass, 1 det, K=2, 1x2 maps
    second = torch.tensor([[[[3.0, 0.0]], [[2.0, 0.0]]]])[None]
    both = torch.cat([heatmaps, second])
    assert combine_heatmaps(both, "HM_AVG").flatten().tolist() == [2.0, -1.0, 1.0, 2.0]
    assert combine_heatmaps(both, "HM_MAX").flatten().tolist() == [3.0, 0.0, 2.0, 4.0]
    assert torch.equal(combine_heatmaps(both, "HM_AVG", torch.tensor([[True], [False]])), heatmaps[0])
    # Mirrored on a flipped image: keypoints 0 and 1 are a left/right pair, so they swap.
    assert flip_heatmaps(heatmaps[0], [1, 0]).flatten().tolist() == [4.0, 0.0, -2.0, 1.0]


@pytest.mark.slow
def test_keypoint_rcnn_keypoint_augmentation(reference_dir):
    """Detectron's e2e_keypoint_rcnn_R-50-FPN_1x (COCO person keypoints and flip map)."""
    name = reference_dir / "detectron_configs" / "12_2017_baselines" / "e2e_keypoint_rcnn_R-50-FPN_1x.yaml"
    small = ["MODEL.NUM_CLASSES", "2", "TEST.RPN_PRE_NMS_TOP_N", "200", "TEST.RPN_POST_NMS_TOP_N", "20",
             "TEST.SCALE", "64", "TEST.MAX_SIZE", "96", "TEST.DETECTIONS_PER_IM", "4"]
    torch.manual_seed(0)
    model = build_model(load_config(name, small)).eval()
    image = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    plain = detect_with_augmentation(model, load_config(name, small), image)
    assert 0 < len(plain) <= 4 and plain.keypoints.shape == (len(plain), 17, 3)
    same = detect_with_augmentation(model, load_config(name, small + ["TEST.KPS_AUG.ENABLED", "True"]),
                                    image)
    torch.testing.assert_close(same.keypoints, plain.keypoints, atol=1e-3, rtol=1e-4)
    for heur in ("HM_AVG", "HM_MAX"):
        cfg = load_config(name, small + [
            "TEST.KPS_AUG.ENABLED", "True", "TEST.KPS_AUG.HEUR", heur, "TEST.KPS_AUG.H_FLIP", "True",
            "TEST.KPS_AUG.SCALES", "(48, 80)", "TEST.KPS_AUG.SCALE_H_FLIP", "True",
            "TEST.KPS_AUG.SCALE_SIZE_DEP", "True", "TEST.KPS_AUG.AREA_TH", "400"])
        out = detect_with_augmentation(model, cfg, image)
        torch.testing.assert_close(out.boxes.tensor, plain.boxes.tensor)
        assert out.keypoints.shape == plain.keypoints.shape and out.keypoint_probs.shape == (len(plain), 17)
        # Decoded inside their boxes. A box under 1 pixel wide decodes over 1 pixel from x1;
        # in Detectron's +1 convention its x2 is then below x1 (x2 = x1 + width - 1).
        x, y, boxes = out.keypoints[:, :, 0], out.keypoints[:, :, 1], out.boxes.tensor[:, None]
        right = torch.maximum(boxes[..., 0], boxes[..., 2]) + 1
        bottom = torch.maximum(boxes[..., 1], boxes[..., 3]) + 1
        assert ((x >= boxes[..., 0]) & (x <= right)).all()
        assert ((y >= boxes[..., 1]) & (y <= bottom)).all()
        assert not torch.allclose(out.keypoints, plain.keypoints)


# ---- config checks -------------------------------------------------------------------------


@pytest.mark.parametrize("options,message", [
    ({"TEST.BBOX_AUG.SCORE_HEUR": "AVG"}, "both must be UNION or neither"),
    ({"TEST.BBOX_AUG.SCORE_HEUR": "AVG", "TEST.BBOX_AUG.COORD_HEUR": "AVG"}, "with an RPN"),
    ({"TEST.BBOX_AUG.SCALES": "(0,)"}, "TEST.BBOX_AUG.SCALES"),
    ({"TEST.BBOX_AUG.ASPECT_RATIOS": "(-1.0,)"}, "TEST.BBOX_AUG.ASPECT_RATIOS"),
    ({"MODEL.RPN_ONLY": "True"}, "R-CNN detectors only"),
])
def test_config_rejects_unsupported_bbox_aug(options, message):
    opts = {"TEST.BBOX_AUG.ENABLED": "True", **options}
    with pytest.raises(ConfigError, match=message):
        load_config(str(SHAPES_CONFIG), [t for pair in opts.items() for t in pair])


def test_detectron_test_time_aug_configs_load(reference_dir):
    for name in ("test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml",
                 "test_time_aug/keypoint_rcnn_R-50-FPN_1x.yaml"):
        cfg = load_config(str(reference_dir / "detectron_configs" / name))
        assert cfg.TEST.BBOX_AUG.ENABLED


# ---- detectron test end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta_data")
    annotations = generate_shapes_dataset(root / "tiny", num_images=3, seed=5, workers=1)
    catalog = root / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tta_shapes": {
        "annotation_file": str(annotations), "image_directory": str(annotations.parent / "images")}}))
    return catalog


def test_cli_test_with_bbox_aug_and_soft_nms(tiny_dataset, tmp_path):
    base = SMALL_MODEL + ["DATASET_CATALOG_FILE", str(tiny_dataset), "TEST.DATASETS", "('tta_shapes',)",
                          "DATA_LOADER.NUM_THREADS", "0"]
    weights = _save_random_model(load_config(str(SHAPES_CONFIG), base), tmp_path / "model.pth")

    def run(name, *options):
        out = tmp_path / name
        args = ["test", "--cfg", str(SHAPES_CONFIG), "--weights", weights, *base,
                "OUTPUT_DIR", str(out), *options]
        assert cli_main(args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        return metrics, json.loads((out / "tta_shapes_bbox_results.json").read_text())

    _, plain = run("plain")
    _, identity = run("identity", "TEST.BBOX_AUG.ENABLED", "True")
    assert len(plain) > 0 and len(identity) == len(plain)
    for a, b in zip(plain, identity):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    metrics, detections = run("aug", "TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True",
                              "TEST.BBOX_AUG.SCALES", "(48, 80)", "TEST.BBOX_AUG.MAX_SIZE", "200",
                              "TEST.SOFT_NMS.ENABLED", "True", "TEST.SOFT_NMS.METHOD", "gaussian",
                              "TEST.BBOX_VOTE.ENABLED", "True")
    assert 0.0 <= metrics["bbox/AP"] <= 1.0 and metrics["inference_time_s_per_im"] > 0
    assert len(detections) > 0 and {d["image_id"] for d in detections} <= {d["image_id"] for d in plain}


def test_cli_test_with_mask_aug(tiny_dataset, tmp_path):
    mask_model = ["MODEL.MASK_ON", "True", "MRCNN.ROI_MASK_HEAD",
                  "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs", "MRCNN.RESOLUTION", "14",
                  "MRCNN.ROI_XFORM_RESOLUTION", "7", "MRCNN.DIM_REDUCED", "16"]
    base = SMALL_MODEL + mask_model + ["DATASET_CATALOG_FILE", str(tiny_dataset),
                                       "TEST.DATASETS", "('tta_shapes',)", "DATA_LOADER.NUM_THREADS", "0"]
    weights = _save_random_model(load_config(str(SHAPES_CONFIG), base), tmp_path / "model.pth")
    out = tmp_path / "mask_aug"
    assert cli_main(["test", "--cfg", str(SHAPES_CONFIG), "--weights", weights, *base,
                     "OUTPUT_DIR", str(out), "TEST.MASK_AUG.ENABLED", "True",
                     "TEST.MASK_AUG.H_FLIP", "True", "TEST.MASK_AUG.SCALES", "(80,)",
                     "TEST.MASK_AUG.HEUR", "LOGIT_AVG", "TEST.BBOX_AUG.ENABLED", "True",
                     "TEST.BBOX_AUG.H_FLIP", "True"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox/AP"] <= 1.0 and 0.0 <= metrics["segm/AP"] <= 1.0
