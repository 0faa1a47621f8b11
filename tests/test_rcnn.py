"""RPN, RoI sampling, Fast R-CNN losses and post-processing: hand-computed cases, and one
training step + inference for models built from Detectron's own config files."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import noise_images

from detectron_lib.config import ConfigError, load_config
from detectron_lib.modeling.backbone import body_autocast_dtype, body_features
from detectron_lib.modeling.backbone.precision import body_layout, native_cpu_bfloat16
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.poolers import RoIPooler, assign_fpn_levels
from detectron_lib.modeling.roi_heads.fast_rcnn import (
    BoxROIHeads,
    box_results_with_nms_and_limit,
    fast_rcnn_losses,
    sample_rois,
    unique_boxes,
)
from detectron_lib.modeling.rpn import build_rpn_matcher, flatten_level_outputs
from detectron_lib.modeling.sampling import Matcher, sample_labels
from detectron_lib.structures.boxes import BoxCoder, BoxConvention, Boxes
from detectron_lib.structures.instances import Instances


def test_rpn_matcher_thresholds_and_low_quality_matches():
    # IoU of 2 gts (rows) with 5 anchors (columns).
    iou = torch.tensor([
        [0.80, 0.50, 0.20, 0.00, 0.10],
        [0.10, 0.40, 0.25, 0.35, 0.60],
    ])
    matched, labels = build_rpn_matcher(0.7, 0.3)(iou)
    # anchor 0: >= 0.7 -> fg; 1: best max 0.5 in [0.3, 0.7) -> ignored; 2: 0.25 < 0.3 -> bg;
    # 3: 0.35 ignored; 4: 0.6 is gt 1's best IoU -> fg by the low-quality rule.
    assert labels.tolist() == [1, -1, 0, -1, 1]
    assert matched[[0, 4]].tolist() == [0, 1]


def test_fast_rcnn_matcher_background_band():
    iou = torch.tensor([[0.6, 0.5, 0.49, 0.05, 0.0]])
    _, labels = Matcher(0.5, 0.5, 0.1)(iou)
    assert labels.tolist() == [1, 1, 0, -1, -1]
    _, labels = Matcher(0.5, 0.5, 0.0)(torch.zeros(0, 3))
    assert labels.tolist() == [0, 0, 0]


def test_sample_labels_respects_fraction_and_is_seeded():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5, dtype=torch.int8)
    fg, bg = sample_labels(labels, 16, 0.25, torch.Generator().manual_seed(3))
    assert len(fg) == 4 and len(bg) == 12
    assert (labels[fg] == 1).all() and (labels[bg] == 0).all()
    fg2, bg2 = sample_labels(labels, 16, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(fg, fg2) and torch.equal(bg, bg2)
    # Few fg: background fills the rest of the batch.
    fg, bg = sample_labels(torch.tensor([1, 0, 0, 0, 0], dtype=torch.int8), 4, 0.5)
    assert len(fg) == 1 and len(bg) == 3


def test_flatten_level_outputs_matches_anchor_order():
    # Anchor a at (y, x) must line up with grid_anchors' (y, x, a) order.
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)  # A=2, H=3, W=4
    deltas = torch.arange(8 * 3 * 4, dtype=torch.float32).view(1, 8, 3, 4)
    flat_logits, flat_deltas = flatten_level_outputs(logits, deltas)
    # Element for (y=1, x=2, a=1) sits at index (1 * 4 + 2) * 2 + 1 = 13.
    assert flat_logits[0, 13] == logits[0, 1, 1, 2]
    assert flat_deltas[0, 13].tolist() == deltas[0, 4:8, 1, 2].tolist()


def test_fpn_level_assignment_hand_computed():
    # sqrt(area) 224 -> level 4; 112 -> 3; 448 -> 5; 56 -> 2; 20 -> clamped to 2; 2000 -> 5.
    sizes = torch.tensor([224.0, 112.0, 448.0, 56.0, 20.0, 2000.0])
    boxes = Boxes(torch.stack([torch.zeros(6), torch.zeros(6), sizes, sizes], dim=1))
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [4, 3, 5, 2, 2, 5]


def test_multilevel_pooler_matches_torchvision_per_level():
    torch.manual_seed(0)
    features = [torch.randn(1, 4, 32, 32), torch.randn(1, 4, 16, 16)]
    boxes = torch.tensor([[0.0, 0, 20, 20], [10.0, 10, 120, 110], [5.0, 5, 30, 60]])
    pooler = RoIPooler(7, [4, 8], sampling_ratio=2, aligned=True, canonical_level=3, canonical_scale=56)
    out = pooler(features, [Boxes(boxes)])
    levels = assign_fpn_levels(Boxes(boxes), 2, 3, 3, 56)
    for i, level in enumerate(levels.tolist()):
        rois = torch.cat([torch.zeros(1, 1), boxes[i:i + 1]], dim=1)
        expected = torchvision.ops.roi_align(features[level - 2], rois, 7, 1.0 / 2 ** level, 2, True)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-5)


def test_fast_rcnn_losses_hand_computed():
    # Two RoIs, 3 classes (0 = background). RoI 0 is class 2 with target deltas (1, 0, 0, 0)
    # and predicts zero deltas for class 2; RoI 1 is background.
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    deltas = torch.zeros(2, 12)
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    losses = fast_rcnn_losses(logits, deltas, torch.tensor([2, 0]), targets)
    expected_cls = (math.log(3) + -math.log(math.exp(2) / (math.exp(2) + 2))) / 2
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    # smooth L1 (beta 1) of |1| = 0.5, summed over fg, divided by the 2 RoIs.
    assert losses["loss_bbox"].item() == pytest.approx(0.25)


def test_sample_rois_labels_and_targets():
    gt = Instances((100, 100), boxes=Boxes(torch.tensor([[10.0, 10, 50, 50]])),
                   classes=torch.tensor([3]))
    props = Instances((100, 100), boxes=Boxes(torch.tensor([[12.0, 10, 50, 50], [60.0, 60, 90, 90]])))
    coder = BoxCoder((10, 10, 5, 5))
    (rois,) = sample_rois([props], [gt], Matcher(0.5, 0.5, 0.0), 8, 0.5, coder,
                          [torch.Generator().manual_seed(0)])
    # fg: the near proposal and the gt box itself (appended); bg: the far proposal.
    assert rois.classes.tolist() == [3, 3, 0]
    fg_boxes = rois.boxes[:2]
    assert torch.allclose(coder.decode(rois.regression_targets[:2], fg_boxes).tensor,
                          gt.boxes.tensor.expand(2, 4), atol=1e-4)


def _bbox_thresh_case(bbox_thresh):
    gt = Instances((100, 100), boxes=Boxes(torch.tensor([[10.0, 10, 50, 50]])),
                   classes=torch.tensor([3]))
    # IoUs with the gt box: 0.95 (fg), 0.4 (bg), 0 (bg); the gt box itself (1.0) is appended.
    props = Instances((100, 100), boxes=Boxes(torch.tensor([[12.0, 10, 50, 50], [10.0, 10, 50, 26],
                                                            [60.0, 60, 90, 90]])))
    coder = BoxCoder((10, 10, 5, 5))
    (rois,) = sample_rois([props], [gt], Matcher(0.5, 0.5, 0.0), 8, 0.5, coder,
                          [torch.Generator().manual_seed(0)], bbox_thresh=bbox_thresh)
    return rois, gt, coder


def test_bbox_thresh_selects_the_rois_that_regress():
    """TRAIN.BBOX_THRESH (Detectron's compute_bbox_regression_targets): sampled RoIs with IoU
    >= it regress onto their matched box on its class, whatever their label."""
    by_box = {}
    for thresh in (None, 0.5, 0.3, 0.96):
        rois, gt, coder = _bbox_thresh_case(thresh)
        by_box[thresh] = {tuple(box.tolist()): (int(label), int(reg), target)
                          for box, label, reg, target in zip(rois.boxes.tensor, rois.classes,
                                                             rois.regression_classes,
                                                             rois.regression_targets)}
    near, half, far, own = (12.0, 10, 50, 50), (10.0, 10, 50, 26), (60.0, 60, 90, 90), (10.0, 10, 50, 50)
    # Equal to FG_THRESH (the default): exactly the fg RoIs regress, as without the option.
    for thresh in (None, 0.5):
        assert {b: v[:2] for b, v in by_box[thresh].items()} == \
            {near: (3, 3), own: (3, 3), half: (0, 0), far: (0, 0)}
    assert all(torch.equal(by_box[None][b][2], by_box[0.5][b][2]) for b in by_box[None])
    # 0.3: the bg RoI of IoU 0.4 also regresses toward the gt box, on class 3.
    assert {b: v[:2] for b, v in by_box[0.3].items()} == \
        {near: (3, 3), own: (3, 3), half: (0, 3), far: (0, 0)}
    decoded = coder.decode(by_box[0.3][half][2][None], Boxes(torch.tensor([half])))
    assert torch.allclose(decoded.tensor, gt.boxes.tensor, atol=1e-4)
    assert torch.equal(by_box[0.3][far][2], torch.zeros(4))
    # 0.96: only the gt box itself; the fg RoI of IoU 0.95 keeps its label but no target.
    assert {b: v[:2] for b, v in by_box[0.96].items()} == \
        {near: (3, 0), own: (3, 3), half: (0, 0), far: (0, 0)}


def test_fast_rcnn_box_loss_follows_regression_classes():
    # RoI 0 is background but regresses on class 2 (IoU >= BBOX_THRESH < BG_THRESH_HI), target
    # (1, 0, 0, 0) and zero deltas: smooth L1 0.5 over 2 RoIs. RoI 1 is class 2, no target.
    logits, deltas = torch.zeros(2, 3), torch.zeros(2, 12)
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    losses = fast_rcnn_losses(logits, deltas, torch.tensor([0, 2]), targets,
                              regression_classes=torch.tensor([2, 0]))
    assert losses["loss_bbox"].item() == pytest.approx(0.25)
    assert fast_rcnn_losses(logits, deltas, torch.tensor([0, 2]), targets)["loss_bbox"].item() == 0


def test_unique_boxes_rounds_at_the_dedup_scale():
    """DEDUP_BOXES = 1/16 (Detectron's im_detect_bbox): coordinates / 16, rounded half to even
    as numpy's np.round: 8 -> 0.5 -> 0, 24 -> 1.5 -> 2, 9 -> 0.5625 -> 1, 40 -> 2.5 -> 2."""
    boxes = torch.tensor([[0.0, 0, 15, 15],    # (0, 0, 1, 1)
                          [16.0, 16, 40, 40],  # (1, 1, 2, 2)
                          [1.0, 1, 16, 16],    # (0, 0, 1, 1): as box 0
                          [0.0, 0, 8, 8],      # (0, 0, 0, 0)
                          [0.0, 0, 24, 24],    # (0, 0, 2, 2)
                          [0.0, 0, 9, 9]])     # (0, 0, 1, 1): as box 0
    first, inverse = unique_boxes(boxes, 1.0 / 16)
    assert first[inverse].tolist() == [0, 1, 0, 3, 4, 0]
    assert sorted(first.tolist()) == [0, 1, 3, 4]
    empty_first, empty_inverse = unique_boxes(torch.zeros(0, 4), 1.0 / 16)
    assert empty_first.numel() == empty_inverse.numel() == 0


class _CoordinateHeads(BoxROIHeads):
    """Box heads whose 'network' scores a box by its x1 and predicts deltas (0.1, 0, 0, 0) for
    every class, recording how many boxes it was run on."""

    def __init__(self, **options):
        super().__init__(None, None, None, [], matcher=None, batch_size_per_image=0,
                         fg_fraction=0, box_coder=BoxCoder((10, 10, 5, 5)), score_thresh=0.0,
                         nms_thresh=0.5, detections_per_image=10, **options)
        self.runs = []

    def predict(self, features, boxes_per_image):
        boxes = torch.cat([b.tensor for b in boxes_per_image])
        self.runs.append(len(boxes))
        logits = torch.stack([torch.zeros(len(boxes)), boxes[:, 0]], dim=1)
        return logits, torch.tensor([0.1, 0, 0, 0]).repeat(len(boxes), 2)


def test_dedup_boxes_runs_each_group_once_and_shares_its_prediction():
    proposals = Instances((64, 64), boxes=Boxes(torch.tensor([[0.0, 0, 15, 15], [1.0, 1, 16, 16],
                                                              [32.0, 0, 47, 15]])))
    plain, dedup = _CoordinateHeads(), _CoordinateHeads(dedup_boxes=1.0 / 16)
    ((plain_scores, plain_boxes),) = plain.predict_boxes({}, [proposals])
    ((scores, boxes),) = dedup.predict_boxes({}, [proposals])
    plain_boxes, boxes = plain_boxes.tensor, boxes.tensor
    assert plain.runs == [3] and dedup.runs == [2]
    # Box 1 rounds to box 0's cells: it takes box 0's scores and box 0's decoded boxes.
    assert torch.equal(scores[1], plain_scores[0]) and torch.equal(boxes[1], plain_boxes[0])
    assert torch.equal(scores[[0, 2]], plain_scores[[0, 2]])
    assert torch.equal(boxes[[0, 2]], plain_boxes[[0, 2]])
    assert not torch.equal(plain_boxes[1], plain_boxes[0])
    # Decoded: dx 0.1 / wx 10 of a 15-wide box moves it by 0.15 pixels.
    assert plain_boxes[0, 4:].tolist() == pytest.approx([0.15, 0, 15.15, 15])


def test_bbox_reg_off_keeps_the_proposals_as_boxes():
    """TEST.BBOX_REG False (Detectron's im_detect_bbox): every class's box is the proposal."""
    proposals = Instances((64, 64), boxes=Boxes(torch.tensor([[0.0, 0, 15, 15], [32.0, 0, 47, 15]])))
    ((_, boxes),) = _CoordinateHeads(bbox_reg=False).predict_boxes({}, [proposals])
    assert torch.equal(boxes.tensor, proposals.boxes.tensor.repeat(1, 2))


def test_box_head_options_from_config():
    """BBOX_THRESH and BBOX_REG reach the box heads; DEDUP_BOXES only for precomputed
    proposals (Detectron: not cfg.MODEL.FASTER_RCNN)."""
    options = ["MODEL.TYPE", "generalized_rcnn", "MODEL.CONV_BODY", "ResNet.add_ResNet50_conv4_body",
               "FAST_RCNN.ROI_BOX_HEAD", "ResNet.add_ResNet_roi_conv5_head", "MODEL.NUM_CLASSES", "3",
               "TRAIN.BBOX_THRESH", "0.3", "TEST.BBOX_REG", "False"]
    fast = build_model(load_config(None, options + ["TEST.PROPOSAL_FILES", "('p.pkl',)",
                                                    "TEST.DATASETS", "('d',)"]))
    assert (fast.roi_heads.bbox_thresh, fast.roi_heads.bbox_reg) == (0.3, False)
    assert fast.roi_heads.dedup_boxes == pytest.approx(1.0 / 16)
    faster = build_model(load_config(None, options + ["MODEL.FASTER_RCNN", "True"]))
    assert faster.roi_heads.dedup_boxes == 0.0


def test_post_processing_thresholds_nms_and_limit():
    # 3 RoIs, 2 fg classes. RoIs 0 and 1 overlap heavily and both score class 1.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11], [50.0, 50, 60, 60]])
    all_boxes = Boxes(boxes.repeat(1, 3))
    scores = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.02, 0.68]])
    dets = box_results_with_nms_and_limit(scores, all_boxes, (100, 100), 0.05, 0.5, 100)
    assert dets.classes.tolist() == [1, 2, 2] and dets.scores.tolist() == pytest.approx([0.8, 0.68, 0.1])
    dets = box_results_with_nms_and_limit(scores, all_boxes, (100, 100), 0.05, 0.5, 2)
    assert len(dets) == 2


RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_bbox"}
REFERENCE_CONFIGS = [
    ("12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml", RPN_LOSSES | {"loss_cls", "loss_bbox"}),
    ("12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml", RPN_LOSSES | {"loss_cls", "loss_bbox"}),
    ("12_2017_baselines/rpn_R-50-FPN_1x.yaml", RPN_LOSSES),
]


@pytest.mark.parametrize("name,expected_losses", REFERENCE_CONFIGS)
def test_detectron_config_trains_one_step_and_infers(reference_dir, name, expected_losses):
    # Detectron's config unchanged but for the class count and small RoI batches.
    cfg = load_config(reference_dir / "detectron_configs" / name, [
        "MODEL.NUM_CLASSES", "5", "TRAIN.BATCH_SIZE_PER_IM", "32", "TRAIN.RPN_POST_NMS_TOP_N", "64",
        "TEST.RPN_POST_NMS_TOP_N", "32", "TEST.RPN_PRE_NMS_TOP_N", "200"])
    torch.manual_seed(0)
    model = build_model(cfg)
    sizes = [(96, 120), (90, 128)]
    images = noise_images(model, sizes)
    convention = BoxConvention.of(cfg)
    targets = [
        Instances(sizes[0], boxes=Boxes(torch.tensor([[10.0, 10, 60, 80], [50, 40, 110, 90]]),
                                        convention), classes=torch.tensor([1, 3])),
        Instances(sizes[1], boxes=Boxes(torch.tensor([[0.0, 0, 30, 30]]), convention),
                  classes=torch.tensor([4])),
    ]
    model.train()
    losses = model(images, [1.0, 0.5], targets, seeds=[1, 2])
    assert set(losses) == expected_losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    model.eval()
    with torch.no_grad():
        results = model(images, [1.0, 0.5])
    assert len(results) == 2
    for result, (h, w), scale in zip(results, sizes, [1.0, 0.5]):
        boxes = result.boxes.tensor
        assert boxes.shape[1] == 4 and result.boxes.convention is convention
        # Boxes come back in original-image pixels: inside (w, h) / scale.
        assert (boxes[:, 2] <= w / scale + 1e-3).all() and (boxes[:, 3] <= h / scale + 1e-3).all()
        assert (result.scores[:-1] >= result.scores[1:]).all()


def test_bfloat16_body_features_are_float32_and_close_to_float32_body(reference_dir):
    # MODEL.BODY_PRECISION bfloat16 autocasts the backbone only: heads get float32 maps whose
    # values stay within bfloat16's ~3 significant digits of the float32 body's.
    name = reference_dir / "detectron_configs" / "12_2017_baselines" / "e2e_faster_rcnn_R-50-FPN_1x.yaml"
    overrides = ["MODEL.NUM_CLASSES", "5", "MODEL.BODY_PRECISION"]
    torch.manual_seed(0)
    model_fp32 = build_model(load_config(name, overrides + ["float32"])).eval()
    model_bf16 = build_model(load_config(name, overrides + ["bfloat16"])).eval()
    model_bf16.load_state_dict(model_fp32.state_dict())
    images, _ = model_fp32.io.batch(noise_images(model_fp32, [(64, 96)]))
    with torch.no_grad():
        reference = model_fp32.backbone(images)
        mixed = body_features(model_bf16.backbone, images, model_bf16.body_precision)
    assert list(mixed) == list(reference)
    for level, features in mixed.items():
        assert features.dtype == torch.float32
        scale = reference[level].abs().max()
        assert (features - reference[level]).abs().max() < 0.05 * scale, level
        assert not torch.equal(features, reference[level]), "the body did not run in bfloat16"
    # The whole model, in inference, keeps float32 boxes and scores.
    with torch.no_grad():
        (result,) = model_bf16(noise_images(model_bf16, [(64, 96)]), [1.0])
    assert result.boxes.dtype == torch.float32 and result.scores.dtype == torch.float32


@pytest.mark.parametrize("precision,device_type,expected", [
    ("auto", "cuda", torch.float16), ("float32", "cuda", None), ("float32", "cpu", None),
    ("bfloat16", "cpu", torch.bfloat16), ("float16", "cuda", torch.float16),
])
def test_body_autocast_dtype(precision, device_type, expected):
    assert body_autocast_dtype(precision, device_type) == expected


@pytest.mark.parametrize("avx512_bf16,amx,isa_cap,expected", [
    (True, False, None, torch.bfloat16), (False, True, None, torch.bfloat16),
    (False, False, None, None),                                  # AVX2 / AVX-512 only
    (True, True, "AVX2", None), (True, False, "AVX512_CORE", None),   # oneDNN capped below
    (True, True, "AVX512_CORE_AMX", torch.bfloat16), (True, False, "AVX512_CORE_BF16", torch.bfloat16),
])
def test_auto_precision_on_the_cpu_is_bfloat16_where_it_is_native(monkeypatch, avx512_bf16, amx,
                                                                  isa_cap, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    if isa_cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native_cpu_bfloat16.cache_clear()
    try:
        assert body_autocast_dtype("auto", "cpu") == expected
    finally:
        native_cpu_bfloat16.cache_clear()


def test_body_precision_rejects_unknown_value():
    with pytest.raises(ConfigError, match="MODEL.BODY_PRECISION.*bfloat16"):
        load_config(None, ["MODEL.BODY_PRECISION", "bf16"])


@pytest.mark.parametrize("config,channels_last", [
    ("configs/torchvision/fasterrcnn_resnet50_fpn.yaml", True),   # frozen BN: channels-last
    ("configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml", False),   # GroupNorm: NCHW
])
def test_cpu_layout_follows_the_norms(repo_root, config, channels_last):
    """build_model lays convolution weights out channels-last unless the model has GroupNorm
    (slow backward in that layout), and the body's input follows the weights."""
    cfg = load_config(repo_root / config, ["TRAIN.WEIGHTS", "", "MODEL.NUM_CLASSES", "3"])
    model = build_model(cfg)
    stem_weight = model.backbone.bottom_up.stem.conv1.weight
    assert (stem_weight.is_contiguous(memory_format=torch.channels_last)
            and not stem_weight.is_contiguous()) == channels_last
    images = body_layout(torch.randn(1, 3, 32, 32), model.backbone)
    assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert images.is_contiguous() != channels_last
