"""Keypoint R-CNN: heatmap targets, loss, decoding, heads and the wired-in model
(detectron_lib.modeling.roi_heads.keypoint_head), and keypoint flipping at training.

References: hand-computed cells and cross-entropies, torchvision's Detectron-derived
keypoints_to_heatmap / heatmaps_to_keypoints / keypointrcnn_loss, the shapes generator's star
geometry (flip), and Detectron's e2e_keypoint_rcnn_R-50-FPN_1x.yaml.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection import roi_heads as tv_roi_heads
from conftest import noise_images

from detectron_lib.config import load_config
from detectron_lib.data import shapes
from detectron_lib.data.loader import in_box_convention
from detectron_lib.data.transforms import image_tensor, prepare_sample, transform_annotations
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.inference.engine import coco_results
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.roi_heads.keypoint_head import (
    KEYPOINT_CONV_STD,
    KeypointPredictor,
    KeypointROIHeads,
    build_keypoint_roi_heads,
    heatmaps_to_keypoints,
    keypoint_rcnn_loss,
    keypoints_to_heatmap_labels,
    visible_keypoint_in_box,
)
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, Boxes
from detectron_lib.structures.instances import Instances
from detectron_lib.structures.keypoints import flip_permutation

DETECTRON_KP = "12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml"
SHAPES_KP = "configs/shapes/e2e_keypoint_rcnn_R-18-FPN_1x.yaml"


# ---- targets --------------------------------------------------------------------------------
def test_heatmap_labels_hand_computed():
    """RoI (10, 20)-(30, 60), M = 4: cells are 5 px wide and 10 px high."""
    roi = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    keypoints = torch.tensor([[
        [15.0, 25.0, 2],     # x cell floor(5 / 5) = 1, y cell floor(5 / 10) = 0 -> 1
        [30.0, 60.0, 1],     # on the right / bottom edge: last cell (3, 3) -> 15
        [29.99, 59.99, 2],   # just inside -> 15
        [9.9, 30.0, 2],      # left of the RoI -> invalid
        [12.0, 41.0, 0],     # not labeled -> invalid
        [10.0, 20.0, 2],     # top-left corner -> 0
    ]])
    labels, valid = keypoints_to_heatmap_labels(keypoints, roi, 4)
    assert valid.tolist() == [[True, True, True, False, False, True]]
    assert labels[valid].tolist() == [1, 15, 15, 0]
    assert labels.dtype == torch.int64


def test_heatmap_labels_match_torchvision_keypoints_to_heatmap():
    """torchvision's keypoints_to_heatmap is a port of Detectron's: same cells, same validity."""
    g = torch.Generator().manual_seed(0)
    rois = torch.rand(50, 2, generator=g) * 100
    rois = torch.cat([rois, rois + 5 + torch.rand(50, 2, generator=g) * 80], dim=1)
    xy = rois[:, None, :2] - 10 + torch.rand(50, 17, 2, generator=g) * (rois[:, None, 2:] - rois[:, None, :2] + 20)
    v = torch.randint(0, 3, (50, 17, 1), generator=g).float()
    keypoints = torch.cat([xy, v], dim=2)
    labels, valid = keypoints_to_heatmap_labels(keypoints, rois, 56)
    tv_labels, tv_valid = tv_roi_heads.keypoints_to_heatmap(keypoints, rois, 56)
    assert torch.equal(valid, tv_valid.bool())
    assert torch.equal(labels[valid], tv_labels[valid])
    assert 0 < valid.sum() < valid.numel()


def test_visible_keypoint_in_box():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    keypoints = torch.tensor([
        [[5.0, 5, 0], [10, 10, 1]],    # the edge counts as inside
        [[5.0, 5, 0], [11, 5, 2]],     # visible one outside, inside one unlabeled
        [[0.0, 0, 0], [0, 0, 0]],
    ])
    assert visible_keypoint_in_box(keypoints, boxes).tolist() == [True, False, False]


# ---- decoding -------------------------------------------------------------------------------
def test_encode_decode_round_trip_returns_cell_centres():
    """A keypoint at a cell centre -> its label -> a one-hot heatmap -> decoded back exactly.

    RoI (10, 20)-(40, 38), M = 6: resized to 30 x 18 pixels, 5 x 3 per heatmap cell, so
    bicubic upsampling samples the peak exactly at the cell centre (+0.5 convention). Cells on
    the map's border decode to the RoI's outermost pixel instead: bicubic resampling with
    replicated borders (torch, and cv2.INTER_CUBIC that Detectron used) overshoots there.
    """
    m = 6
    roi = torch.tensor([[10.0, 20.0, 40.0, 38.0]])
    cx, cy = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="xy")
    centres = torch.stack([10 + (cx.flatten() + 0.5) * 5, 20 + (cy.flatten() + 0.5) * 3], dim=1)
    keypoints = torch.cat([centres, torch.full((m * m, 1), 2.0)], dim=1)[None]   # (1, 16, 3)
    labels, valid = keypoints_to_heatmap_labels(keypoints, roi, m)
    assert valid.all() and labels[0].tolist() == list(range(m * m))
    heatmaps = torch.full((1, m * m, m * m), -5.0)
    heatmaps[0, torch.arange(m * m), labels[0]] = 5.0
    decoded, probs = heatmaps_to_keypoints(heatmaps.view(1, m * m, m, m), roi)
    interior = ((cx > 0) & (cx < m - 1) & (cy > 0) & (cy < m - 1)).flatten()
    assert torch.allclose(decoded[0, interior, :2], centres[interior])
    assert torch.allclose(decoded[0, interior, 2], torch.full((int(interior.sum()),), 5.0))
    assert decoded[0, 0, :2].tolist() == [10.5, 20.5]             # cell (0, 0): first pixel
    assert decoded[0, m * m - 1, :2].tolist() == [39.5, 37.5]     # cell (5, 5): last pixel
    assert ((probs > 0) & (probs < 1)).all()


def test_decoding_matches_torchvision_heatmaps_to_keypoints():
    """Same bicubic resize, argmax and +0.5 mapping as torchvision's (Detectron-derived)
    heatmaps_to_keypoints; probs are the softmax of the resized map at the argmax."""
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(6, 5, 14, 14, generator=g)
    xy = torch.rand(6, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 0.5 + torch.rand(6, 2, generator=g) * 60], dim=1)
    boxes[0, 2] = boxes[0, 0] + 0.3   # narrower than a pixel: widths clamp to 1
    keypoints, probs = heatmaps_to_keypoints(maps, boxes)
    tv_xy, tv_scores = tv_roi_heads.heatmaps_to_keypoints(maps, boxes)
    assert torch.allclose(keypoints[:, :, :2], tv_xy[:, :, :2], atol=1e-4)
    assert torch.allclose(keypoints[:, :, 2], tv_scores, atol=1e-5)
    # probability by a full softmax of one resized map
    w, h = int(math.ceil(boxes[2, 2] - boxes[2, 0])), int(math.ceil(boxes[2, 3] - boxes[2, 1]))
    resized = torch.nn.functional.interpolate(maps[2:3], size=(h, w), mode="bicubic",
                                              align_corners=False)[0]
    assert torch.allclose(probs[2], resized.flatten(1).softmax(1).max(1).values, atol=1e-6)


def test_normalized_scores_are_detectron2s():
    """KRCNN.NORMALIZED_KEYPOINT_SCORES, against detectron2's heatmaps_to_keypoints written
    out: exp(resized map - its max) at the argmax over the sum of exp(heatmap - that max)
    over the heatmap's own cells; locations unchanged."""
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(3, 4, 14, 14, generator=g) * 3
    boxes = torch.tensor([[3.0, 5.0, 40.2, 30.7], [0.0, 0.0, 9.5, 60.0], [10.0, 10.0, 10.4, 12.0]])
    plain, _ = heatmaps_to_keypoints(maps, boxes)
    keypoints, _ = heatmaps_to_keypoints(maps, boxes, normalized_scores=True)
    assert torch.equal(keypoints[:, :, :2], plain[:, :, :2])
    for i, box in enumerate(boxes):
        w = int(math.ceil(max(box[2] - box[0], 1)))
        h = int(math.ceil(max(box[3] - box[1], 1)))
        resized = torch.nn.functional.interpolate(maps[i:i + 1], size=(h, w), mode="bicubic",
                                                  align_corners=False)[0]
        top = resized.flatten(1).max(1).values
        expected = 1.0 / (maps[i] - top[:, None, None]).exp().sum((1, 2))
        torch.testing.assert_close(keypoints[i, :, 2], expected, rtol=1e-5, atol=0)
    assert (keypoints[:, :, 2] > 0).all()


def test_decoding_inference_min_size_upsamples_small_boxes_further():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 2] = 10.0
    box = torch.tensor([[0.0, 0.0, 12.0, 12.0]])
    coarse, _ = heatmaps_to_keypoints(maps, box)
    fine, _ = heatmaps_to_keypoints(maps, box, min_size=120)
    # cell (x 2, y 1) covers [6, 9) x [3, 6): its centre (7.5, 4.5) is pixel (7, 4)'s centre
    # in the 12 x 12 map; in the 120 x 120 map (0.1 px cells) it falls between two pixels.
    assert coarse[0, 0, :2].tolist() == [7.5, 4.5]
    assert torch.allclose(fine[0, 0, :2], torch.tensor([7.5, 4.5]), atol=0.051)


def test_no_detections_decode_to_empty_arrays():
    keypoints, probs = heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4))
    assert keypoints.shape == (0, 17, 3) and probs.shape == (0, 17)


# ---- loss -----------------------------------------------------------------------------------
def test_loss_hand_computed_uniform_logits():
    """Zero logits: each valid keypoint costs log(M^2); the mean over visible keypoints, or the
    sum over Detectron's fixed normalizer."""
    logits = torch.zeros(3, 2, 4, 4, requires_grad=True)
    labels = torch.tensor([[0, 5], [15, 3], [1, 1]])
    valid = torch.tensor([[True, False], [True, True], [False, False]])
    assert keypoint_rcnn_loss(logits, labels, valid).item() == pytest.approx(math.log(16))
    loss = keypoint_rcnn_loss(logits, labels, valid, normalizer=12.0, weight=4.0)
    assert loss.item() == pytest.approx(4.0 * 3 * math.log(16) / 12.0)
    loss.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[0, 1].abs().sum() == 0


def test_loss_matches_torchvision_keypointrcnn_loss():
    """NORMALIZE_BY_VISIBLE_KEYPOINTS = torchvision's mean cross-entropy over valid keypoints."""
    g = torch.Generator().manual_seed(2)
    rois = torch.tensor([[0.0, 0, 40, 40], [10, 10, 50, 30], [5, 0, 25, 60]])
    gt = torch.cat([torch.rand(2, 5, 2, generator=g) * 50,
                    torch.randint(0, 3, (2, 5, 1), generator=g).float()], dim=2)
    matched = torch.tensor([0, 1, 1])
    logits = torch.randn(3, 5, 8, 8, generator=g)
    labels, valid = keypoints_to_heatmap_labels(gt[matched], rois, 8)
    expected = tv_roi_heads.keypointrcnn_loss(logits, [rois], [gt], [matched])
    assert keypoint_rcnn_loss(logits, labels, valid).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_without_valid_keypoints_is_zero_but_connected():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = keypoint_rcnn_loss(logits, torch.zeros(1, 2, dtype=torch.int64),
                              torch.zeros(1, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


class _UniformHeads(KeypointROIHeads):
    """Keypoint heads predicting one learnable 4 x 4 heatmap of logits (zeros) for every
    keypoint of every RoI."""

    def __init__(self, min_keypoint_count):
        super().__init__(None, None, None, [], 3, min_keypoint_count=min_keypoint_count)
        self.logit = torch.nn.Parameter(torch.zeros(4, 4))

    def heatmap_logits(self, features, boxes_per_image):
        return self.logit.expand(sum(len(b) for b in boxes_per_image), 3, 4, 4)


@pytest.mark.parametrize("min_count, valid", [(None, True), (0, True), (1, True), (2, False)])
def test_minibatch_with_too_few_visible_keypoints_gets_no_keypoint_loss(min_count, valid):
    """KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH (Detectron's finalize_keypoint_minibatch:
    valid when the visible keypoints of the keypoint RoIs number more than it). One RoI
    (0, 0, 8, 8) with 2 visible keypoints and a hidden one; uniform logits over 4 x 4 cells
    give log(16) per visible keypoint, divided by the 2 visible ones."""
    rois = [Instances((20, 20), boxes=Boxes(torch.tensor([[0.0, 0, 8, 8]])), classes=torch.tensor([1]),
                      matched_gt=torch.tensor([0]))]
    gt = [Instances((20, 20), keypoints=torch.tensor([[[1.0, 1, 2], [5, 5, 2], [3, 3, 0]]]))]
    heads = _UniformHeads(min_count)
    loss = heads.loss({}, rois, gt)
    assert loss.item() == pytest.approx(math.log(16) if valid else 0.0)
    loss.backward()  # an invalid minibatch still reaches every weight, with a zero gradient
    assert heads.logit.grad is not None and bool(heads.logit.grad.any()) == valid


def test_minibatch_check_applies_to_training_on_precomputed_proposals_only(reference_dir):
    """Detectron checked the minibatch in its data loader, which built the RoIs only for
    models on precomputed proposals (keypoint_rcnn_*); end-to-end (e2e_keypoint_rcnn_*)
    training computed the check and ignored it."""
    configs = reference_dir / "detectron_configs" / "12_2017_baselines"
    channels = {f"p{level}": 256 for level in range(2, 7)}
    strides = {f"p{level}": 2 ** level for level in range(2, 7)}
    precomputed = load_config(configs / "keypoint_rcnn_R-50-FPN_1x.yaml")
    e2e = load_config(configs / "e2e_keypoint_rcnn_R-50-FPN_1x.yaml")
    assert build_keypoint_roi_heads(precomputed, channels, strides).min_keypoint_count == 20
    assert build_keypoint_roi_heads(e2e, channels, strides).min_keypoint_count is None


# ---- heads from configs ---------------------------------------------------------------------
def _detectron_cfg(reference_dir, *overrides):
    return load_config(reference_dir / "detectron_configs" / DETECTRON_KP, [
        "MODEL.NUM_CLASSES", "3", "TRAIN.BATCH_SIZE_PER_IM", "32", "TRAIN.RPN_POST_NMS_TOP_N",
        "64", "TEST.RPN_POST_NMS_TOP_N", "32", "TEST.RPN_PRE_NMS_TOP_N", "200",
        "TEST.DETECTIONS_PER_IM", "8", *overrides])


def test_detectron_head_shapes_and_weight_fills(reference_dir):
    """8 x (3x3 conv 512, MSRAFill) on 14x14 RoIs, kps_score transposed conv to 28 (MSRAFill),
    bilinear x2 to HEATMAP_SIZE 56."""
    model = build_model(_detectron_cfg(reference_dir))
    heads = model.keypoint_heads
    convs = [m for m in heads.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.out_channels == 512 and c.kernel_size == (3, 3) for c in convs)
    score = heads.predictor.score
    assert isinstance(score, torch.nn.ConvTranspose2d) and score.out_channels == 17
    # MSRAFill: std sqrt(2 / fan_out), fan_out = numel / shape[1]
    expected_std = math.sqrt(2.0 / (score.weight.numel() / score.weight.shape[1]))
    assert score.weight.std().item() == pytest.approx(expected_std, rel=0.1)
    assert not score.bias.detach().any()
    assert heads.pooler.output_size == (14, 14)
    out = heads.predictor(heads.head(torch.randn(2, 256, 14, 14)))
    assert out.shape == (2, 17, 56, 56)


def test_gaussian_fill_and_deconv_options():
    predictor = KeypointPredictor(32, 5, "GaussianFill", use_deconv=True, deconv_dim=16,
                                  deconv_kernel=4, use_deconv_output=False, up_scale=1)
    assert predictor.output_size(7) == 14
    assert predictor(torch.randn(1, 32, 7, 7)).shape == (1, 5, 14, 14)
    torch.manual_seed(0)
    big = KeypointPredictor(256, 200, "GaussianFill", use_deconv=True, deconv_dim=256)
    assert big.deconv.weight.std().item() == pytest.approx(KEYPOINT_CONV_STD, rel=0.05)
    assert big.score.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_heatmap_size_mismatch_is_a_config_error(reference_dir):
    with pytest.raises(ConfigError, match="KRCNN.HEATMAP_SIZE to 56"):
        build_model(_detectron_cfg(reference_dir, "KRCNN.HEATMAP_SIZE", "28"))


def test_unset_num_keypoints_and_odd_up_scale_are_config_errors(reference_dir):
    with pytest.raises(ConfigError, match="KRCNN.NUM_KEYPOINTS"):
        build_model(_detectron_cfg(reference_dir, "KRCNN.NUM_KEYPOINTS", "-1"))
    with pytest.raises(ConfigError, match="KRCNN.UP_SCALE"):
        build_model(_detectron_cfg(reference_dir, "KRCNN.UP_SCALE", "3"))
    with pytest.raises(ConfigError, match="KRCNN.NMS_OKS"):
        build_model(_detectron_cfg(reference_dir, "KRCNN.NMS_OKS", "True"))


def _targets(sizes, num_keypoints):
    g = torch.Generator().manual_seed(3)
    # In Detectron's config's convention (MODEL.BBOX_LEGACY_PLUS_ONE True).
    boxes = [torch.tensor([[10.0, 10, 60, 80], [50, 40, 110, 90]]), torch.tensor([[0.0, 0, 30, 30]])]
    targets = []
    for size, b in zip(sizes, boxes):
        xy = b[:, None, :2] + torch.rand(len(b), num_keypoints, 2, generator=g) * (b[:, None, 2:] - b[:, None, :2])
        v = torch.randint(0, 3, (len(b), num_keypoints, 1), generator=g).float()
        v[:, 0] = 2
        targets.append(Instances(size, boxes=Boxes(b, PIXEL_INDICES), classes=torch.ones(len(b), dtype=torch.int64),
                                 keypoints=torch.cat([xy, v], dim=2)))
    return targets


@pytest.mark.slow
def test_detectron_config_trains_one_step_and_infers(reference_dir):
    """Detectron's e2e_keypoint_rcnn_R-50-FPN_1x (NUM_CLASSES 3, small RoI batches): one
    training step with every loss, then inference with keypoints inside their boxes, in
    original-image pixels."""
    torch.manual_seed(0)
    model = build_model(_detectron_cfg(reference_dir))
    sizes, scales = [(96, 120), (90, 128)], [1.0, 0.5]
    images = noise_images(model, sizes)
    model.train()
    losses = model(images, scales, _targets(sizes, 17), seeds=[1, 2])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_kps"}
    assert 0 < losses["loss_kps"].item() < 2 * math.log(56 * 56)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.keypoint_heads.parameters())
    model.eval()
    with torch.no_grad():
        results = model(images, scales)
    for result, (h, w), scale in zip(results, sizes, scales):
        assert 0 < len(result) <= 8
        assert result.keypoints.shape == (len(result), 17, 3)
        assert result.keypoint_probs.shape == (len(result), 17)
        kx, ky = result.keypoints[..., 0], result.keypoints[..., 1]
        b = result.boxes.tensor[:, None, :]
        assert ((kx >= b[..., 0]) & (kx <= b[..., 2]) & (ky >= b[..., 1]) & (ky <= b[..., 3])).all()
        assert (result.boxes.tensor[:, 2] <= w / scale + 1e-3).all()


def test_ground_truth_without_keypoints_is_a_dataset_error(reference_dir, repo_root):
    cfg = load_config(repo_root / SHAPES_KP)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    target = Instances((64, 64), boxes=Boxes(torch.tensor([[8.0, 8, 56, 56]])),
                       classes=torch.tensor([1]))
    with pytest.raises(DatasetError, match="keypoints"):
        model([torch.zeros(3, 64, 64)], [1.0], [target], seeds=[0])
    wrong_k = Instances((64, 64), boxes=Boxes(torch.tensor([[8.0, 8, 56, 56]])), classes=torch.tensor([1]),
                        keypoints=torch.full((1, 17, 3), 30.0))
    with pytest.raises(DatasetError, match="KRCNN.NUM_KEYPOINTS"):
        model([torch.zeros(3, 64, 64)], [1.0], [wrong_k], seeds=[0])


@pytest.mark.slow
def test_keypoint_loss_goes_down_overfitting_one_tiny_image(repo_root):
    """The shapes baseline's model, SGD on one 64x64 image with one star: loss_kps falls."""
    cfg = load_config(repo_root / SHAPES_KP)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    background = np.full((64, 64, 3), 90, dtype=np.uint8)
    star = shapes.Shape("star", center=(32.0, 30.0), size=44.0, angle=0.1, color=(250, 200, 40))
    image, annotations = shapes.render_scene(background, [star], ("star",), keypoints=True)
    ann = annotations[0]
    x, y, w, h = ann["bbox"]
    target = Instances((64, 64), boxes=Boxes(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)),
                       classes=torch.tensor([1]),
                       keypoints=torch.tensor(ann["keypoints"], dtype=torch.float32).view(1, 5, 3))
    pixels = [image_tensor(image[:, :, ::-1])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for step in range(30):
        losses = model(pixels, [1.0], [target], seeds=[step])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(losses["loss_kps"].item())
    assert history[0] == pytest.approx(math.log(56 * 56), abs=0.3)
    assert np.mean(history[-5:]) < 0.6 * history[0]


# ---- flip at training -----------------------------------------------------------------------
def _star_record(tmp_path, seed=5, index=0):
    background, scene = shapes.sample_scene(seed, index, keypoints=True)
    image, annotations = shapes.render_scene(background, scene, ("star",), keypoints=True)
    path = tmp_path / f"star_{index}.png"
    Image.fromarray(image).save(path)
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in annotations], dtype=np.float32)
    return {
        "file_name": str(path), "image_id": index, "height": image.shape[0],
        "width": image.shape[1], "boxes": boxes,
        "classes": np.ones(len(annotations), dtype=np.int64),
        "is_crowd": np.zeros(len(annotations), dtype=bool), "segms": None,
        "keypoints": np.array([a["keypoints"] for a in annotations],
                              dtype=np.float32).reshape(-1, 5, 3),
    }


STAR_PERM = flip_permutation(shapes.STAR_KEYPOINT_NAMES, shapes.STAR_KEYPOINT_FLIP_MAP)


def test_star_flip_permutation_swaps_left_and_right_tips():
    # top, upper_right, lower_right, lower_left, upper_left -> top stays, the others swap
    assert STAR_PERM.tolist() == [0, 4, 3, 2, 1]


def test_flipped_star_tips_keep_their_names():
    """Stars are rotated by < 30 degrees, so in any image the upper-right tip is right of the
    top tip, which is right of the upper-left tip (and lower-right right of lower-left). After a
    flip with the dataset's flip map this must still hold; mirroring x alone would reverse it."""
    checked = 0
    for index in range(12):
        background, scene = shapes.sample_scene(7, index, keypoints=True)
        _, annotations = shapes.render_scene(background, scene, ("star",), keypoints=True)
        keypoints = np.array([a["keypoints"] for a in annotations], dtype=np.float32).reshape(-1, 5, 3)
        record = {"height": background.shape[0], "width": background.shape[1],
                  "boxes": np.zeros((len(keypoints), 4), dtype=np.float32),
                  "classes": np.ones(len(keypoints), dtype=np.int64),
                  "is_crowd": np.zeros(len(keypoints), dtype=bool), "keypoints": keypoints,
                  "file_name": "x.png"}
        record = in_box_convention([record], CONTINUOUS)[0]
        flipped = transform_annotations(record, 1.0, True, STAR_PERM)["keypoints"].numpy()
        for star in flipped:
            if (star[:, 2] > 0).all():
                x = star[:, 0]
                assert x[1] > x[0] > x[4] and x[2] > x[3]
                checked += 1
    assert checked >= 5


def test_flipped_keypoints_land_on_the_same_image_content(tmp_path):
    """prepare_sample(flip=True): at each visible flipped keypoint the flipped image has the
    pixel the original image has at the keypoint it came from (slot STAR_PERM[k], mirrored)."""
    record = in_box_convention([_star_record(tmp_path)], CONTINUOUS)[0]
    short = min(record["height"], record["width"])
    plain = prepare_sample(record, short, 10_000)
    flipped = prepare_sample(record, short, 10_000, flip=True, keypoint_flip_perm=STAR_PERM)
    assert plain["im_scale"] == flipped["im_scale"] == 1.0
    kp_plain, kp_flip = plain["targets"]["keypoints"], flipped["targets"]["keypoints"]
    width = record["width"]
    # flipped slot k holds original keypoint STAR_PERM[k], mirrored: x -> width - x
    assert torch.allclose(kp_flip[..., 0][kp_flip[..., 2] > 0],
                          (width - kp_plain[:, STAR_PERM, 0])[kp_flip[..., 2] > 0])
    visible = torch.nonzero(kp_flip[..., 2] == 2)
    assert len(visible) > 0
    for i, k in visible.tolist():
        xf, yf = (int(c) for c in kp_flip[i, k, :2])
        xo, yo = (int(c) for c in kp_plain[i, STAR_PERM[k], :2])
        assert torch.equal(flipped["image"][:, yf, xf], plain["image"][:, yo, xo])


# ---- results for COCO evaluation ------------------------------------------------------------
def test_coco_keypoint_results_use_the_configured_confidence():
    inst = Instances((50, 50), boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])), scores=torch.tensor([0.9]),
                     classes=torch.tensor([1]),
                     keypoints=torch.tensor([[[1.0, 2, 4.0], [3, 4, 6.0]]]),
                     keypoint_probs=torch.tensor([[0.2, 0.4]]))
    by_bbox = coco_results([(7, inst)], {1: 1}, "bbox")
    assert by_bbox["keypoints"] == [{"image_id": 7, "category_id": 1,
                                     "keypoints": [1.0, 2.0, 1.0, 3.0, 4.0, 1.0],
                                     "score": pytest.approx(0.9)}]
    assert coco_results([(7, inst)], {1: 1}, "logit")["keypoints"][0]["score"] == 5.0
    assert coco_results([(7, inst)], {1: 1}, "prob")["keypoints"][0]["score"] == \
        pytest.approx(0.3)


def test_detectron2_keypoint_results_move_pixel_centres_to_pixel_indices():
    """detectron2 trains on COCO's integer keypoints + 0.5 and writes its predictions back
    with - 0.5, its per-keypoint score as the third value (its instances_to_coco_json)."""
    inst = Instances((50, 50), boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])), scores=torch.tensor([0.9]),
                     classes=torch.tensor([1]), keypoints=torch.tensor([[[1.5, 2.5, 0.25],
                                                                         [3.0, 4.75, 0.5]]]))
    (result,) = coco_results([(7, inst)], {1: 1}, "bbox", "detectron2")["keypoints"]
    assert result["keypoints"] == [1.0, 2.0, 0.25, 2.5, 4.25, 0.5]
    assert result["score"] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="KRCNN.RESULTS_FORMAT is 'detectron3'"):
        coco_results([(7, inst)], {1: 1}, "bbox", "detectron3")


def test_drawing_skeleton_comes_from_the_dataset_catalog(repo_root):
    """shapes_kp's skeleton joins consecutive star tips (1-based STAR_SKELETON in its JSON)."""
    from detectron_lib.data.catalog import COCO_PERSON_KEYPOINT_NAMES, get_dataset
    from detectron_lib.inference.predictor import keypoint_skeleton_for

    cfg = load_config(repo_root / SHAPES_KP)
    assert keypoint_skeleton_for(cfg) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]
    coco = get_dataset("keypoints_coco_2017_val")
    assert len(coco.keypoint_skeleton) == 19
    assert {name for pair in coco.keypoint_skeleton for name in pair} == set(COCO_PERSON_KEYPOINT_NAMES)
    # a 5-keypoint model run with COCO's datasets named (a detectron2 config, as parity runs
    # it): COCO's skeleton would index keypoints it does not have
    detectron2_config = repo_root / "configs" / "detectron2" / "keypoint_rcnn_R_50_FPN_1x.yaml"
    assert keypoint_skeleton_for(load_config(detectron2_config)) != []
    assert keypoint_skeleton_for(load_config(detectron2_config, ["KRCNN.NUM_KEYPOINTS", "5"])) == []


def test_ground_truth_keypoints_score_ap_one_with_the_dataset_sigmas(tmp_path):
    """The evaluation path test() uses (coco_results -> pycocotools OKS with shapes_kp's
    sigmas): the ground truth as predictions scores keypoints/AP 1; moved by 4 px, less."""
    from detectron_lib.data.coco import load_coco_json
    from detectron_lib.evaluation.coco import evaluate_coco

    annotation_file = shapes.generate_shapes_dataset(tmp_path / "kp", num_images=6, seed=11,
                                                     keypoints=True, workers=1)
    loaded = load_coco_json(annotation_file, tmp_path / "kp" / shapes.IMAGE_DIR)
    ap = {}
    for shift in (0.0, 4.0):
        results = []
        for record in loaded.records:
            keypoints = torch.from_numpy(record["keypoints"]).clone()
            keypoints[:, :, 0] += shift
            keypoints[:, :, 2] = 5.0   # a logit
            n = len(keypoints)
            results.append((record["image_id"], Instances(
                (record["height"], record["width"]), boxes=Boxes(torch.from_numpy(record["boxes"])),
                scores=torch.ones(n), classes=torch.from_numpy(record["classes"]),
                keypoints=keypoints, keypoint_probs=torch.ones(n, 5))))
        by_type = coco_results(results, loaded.categories.contiguous_to_json_id)
        metrics = evaluate_coco(str(annotation_file), {"keypoints": by_type["keypoints"]},
                                kpt_oks_sigmas=shapes.STAR_KEYPOINT_OKS_SIGMAS)
        ap[shift] = metrics["keypoints/AP"]
    assert ap[0.0] == pytest.approx(1.0)
    assert ap[4.0] < 0.9


def test_keypoint_training_keeps_images_with_a_visible_keypoint_only():
    """Detectron's filter_for_training with KEYPOINTS_ON: images whose instances have no
    keypoint with v > 0 are dropped."""
    from detectron_lib.data.coco import filter_for_training

    def record(v):
        return {"is_crowd": np.array([False]),
                "keypoints": np.array([[[3.0, 4.0, v], [0, 0, 0]]], dtype=np.float32)}

    records = [record(2), record(0), record(1)]
    assert len(filter_for_training(records)) == 3
    assert [r["keypoints"][0, 0, 2] for r in filter_for_training(records, True)] == [2, 1]


def test_detectron2_postprocess_keeps_keypoints_in_their_boxes(reference_dir):
    """MODEL.RESCALE_PER_AXIS: keypoints are decoded in the resized image and scaled per axis
    with their boxes, so they land inside them in the original image."""
    torch.manual_seed(0)
    model = build_model(_detectron_cfg(reference_dir, "MODEL.RESCALE_PER_AXIS", "True",
                                       "MODEL.BBOX_LEGACY_PLUS_ONE", "False")).eval()
    assert model.keypoint_heads.decode_in_input_pixels
    sizes, originals = [(96, 120), (90, 128)], [(48, 60), (180, 256)]
    with torch.no_grad():
        results = model(noise_images(model, sizes), [0.5, 2.0], original_sizes=originals)
    for result, (h, w) in zip(results, originals):
        assert len(result) > 0
        b = result.boxes.tensor[:, None, :]
        assert (b[..., 2] <= w).all() and (b[..., 3] <= h).all()
        kx, ky = result.keypoints[..., 0], result.keypoints[..., 1]
        assert ((kx >= b[..., 0] - 1e-4) & (kx <= b[..., 2] + 1e-4)).all()
        assert ((ky >= b[..., 1] - 1e-4) & (ky <= b[..., 3] + 1e-4)).all()
