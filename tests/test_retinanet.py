"""RetinaNet: focal losses against torchvision / cross-entropy, anchors against hand-computed
Detectron cell anchors, Detectron's anchor labeling on hand-made IoU cases, post-processing on
hand-made head outputs, one training step + inference of Detectron's own RetinaNet config,
overfitting one tiny image (the shapes baseline runs through the CLI in
test_detectron_configs_families.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import noise_images

from detectron_lib.config import load_config
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.anchors import (
    AnchorGenerator,
    generate_cell_anchors,
    retinanet_anchor_specs,
)
from detectron_lib.modeling.backbone.layers import detectron_blob_names
from detectron_lib.modeling.image_io import DetectorIO
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.postprocess import SoftNMS
from detectron_lib.modeling.retinanet import (
    RetinaNet,
    RetinaNetHead,
    flatten_anchor_maps,
    retinanet_anchor_labels,
    retinanet_losses,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, BoxCoder, BoxConvention, Boxes
from detectron_lib.structures.instances import Instances

RETINANET_CONFIG = "12_2017_baselines/retinanet_R-50-FPN_1x.yaml"


# ---- focal losses -----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_sigmoid_focal_loss_matches_torchvision(alpha, gamma):
    torch.manual_seed(0)
    logits = (torch.randn(50, 7) * 4).requires_grad_()
    targets = (torch.rand(50, 7) < 0.2).float()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = torchvision.ops.sigmoid_focal_loss(ref_logits, targets, alpha, gamma, reduction="none")
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_sigmoid_focal_loss_is_finite_for_extreme_logits():
    logits = torch.tensor([[-100.0, 100.0]], requires_grad=True)
    loss = sigmoid_focal_loss(logits, torch.tensor([[1.0, 0.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert loss[0, 0].item() == pytest.approx(0.25 * 100.0)  # -alpha * 1 * log(sigmoid(-100))


def test_softmax_focal_loss_hand_computed_and_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    # Row 0, background: p = e^2 / (e^2 + 2); loss = -(1 - 0.25) (1 - p)^2 log p.
    p0 = math.exp(2) / (math.exp(2) + 2)
    # Row 1, class 2: p = 1 / (2 + e); loss = -0.25 (1 - p)^2 log p.
    p1 = 1 / (2 + math.e)
    expected = [-0.75 * (1 - p0) ** 2 * math.log(p0), -0.25 * (1 - p1) ** 2 * math.log(p1)]
    assert softmax_focal_loss(logits, labels, 0.25, 2.0).tolist() == pytest.approx(expected)
    # gamma 0, alpha 0.5: half the cross-entropy (torch's F.cross_entropy).
    torch.manual_seed(0)
    logits, labels = torch.randn(20, 5), torch.randint(0, 5, (20,))
    torch.testing.assert_close(softmax_focal_loss(logits, labels, 0.5, 0.0),
                               0.5 * F.cross_entropy(logits, labels, reduction="none"))


# ---- anchors ----------------------------------------------------------------------------------
def test_cell_anchors_in_detectron_retinanet_order_hand_computed():
    # P3 (stride 8), ANCHOR_SCALE 4, 3 octaves, ratios (1, 2, 0.5) as Detectron's config.
    specs = retinanet_anchor_specs(3, 7, 3, 4, (1.0, 2.0, 0.5))
    gen = AnchorGenerator(specs, PIXEL_INDICES, sizes_first=True)
    cell = gen([(1, 1)] * 5)[0].tensor
    assert cell.shape == (9, 4)
    # Detectron's generate_anchors, base box [0, 0, 7, 7] (centre 3.5):
    # anchor 0, octave 0 ratio 1: w = h = 8 * 32 / 8 = 32 -> 3.5 -+ 15.5
    # anchor 1, octave 0 ratio 2: w = round(sqrt(64 / 2)) * 4 = 24, h = round(6 * 2) * 4 = 48
    # anchor 3, octave 1 ratio 1: w = 8 * 32 * 2^(1/3) / 8 = 40.32 -> 3.5 -+ 19.66
    assert cell[0].tolist() == pytest.approx([-12.0, -12.0, 19.0, 19.0])
    assert cell[1].tolist() == pytest.approx([-8.0, -20.0, 15.0, 27.0])
    assert cell[3].tolist() == pytest.approx([-16.159, -16.159, 23.159, 23.159], abs=1e-3)
    # The same order as Detectron's test_retinanet._create_cell_anchors loop: octave outer,
    # aspect ratio inner, one generate_anchors call each.
    for level, (stride, sizes, ratios) in enumerate(specs):
        loop = torch.cat([generate_cell_anchors(stride, (size,), (ratio,), PIXEL_INDICES)
                          for size in sizes for ratio in ratios])
        assert torch.equal(gen([(1, 1)] * 5)[level].tensor, loop)


def test_cell_anchors_without_plus_one_hand_computed():
    gen = AnchorGenerator(retinanet_anchor_specs(3, 3, 3, 4, (1.0, 2.0, 0.5)),
                          CONTINUOUS, sizes_first=True)
    cell = gen([(1, 1)])[0].tensor
    # Centred on 0: size 32 ratio 1 -> +-16; ratio 2 -> w 32/sqrt2 = 22.6, h 45.3 -> round(+-11.3),
    # round(+-22.6); octave 1 (40.3 px) ratio 1 -> round(+-20.2).
    assert cell[0].tolist() == [-16.0, -16.0, 16.0, 16.0]
    assert cell[1].tolist() == [-11.0, -23.0, 11.0, 23.0]
    assert cell[3].tolist() == [-20.0, -20.0, 20.0, 20.0]


def test_anchor_counts_per_level_and_grid_order():
    gen = AnchorGenerator(retinanet_anchor_specs(3, 7, 3, 4, (1.0, 2.0, 0.5)),
                          CONTINUOUS, sizes_first=True)
    shapes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]  # a 96 x 128 image, strides 8..128
    anchors = gen(shapes)
    assert [len(a) for a in anchors] == [9 * h * w for h, w in shapes]
    # Anchor (y=1, x=2, a=4) of P4 (stride 16) is the cell anchor shifted by (32, 16).
    p4 = anchors[1].tensor.view(6, 8, 9, 4)
    torch.testing.assert_close(p4[1, 2, 4],
                               gen([(1, 1)] * 5)[1].tensor[4] + torch.tensor([32.0, 16, 32, 16]))


def test_flatten_anchor_maps_follows_anchor_order():
    # (N, A * D, H, W) with A = 2, D = 3: element (y=1, x=0, a=1, d=2) is channel 1 * 3 + 2.
    m = torch.arange(1 * 6 * 2 * 2, dtype=torch.float32).view(1, 6, 2, 2)
    (flat,) = flatten_anchor_maps([m], 3)
    assert flat.shape == (1, 8, 3)
    assert flat[0, (1 * 2 + 0) * 2 + 1, 2] == m[0, 5, 1, 0]


# ---- targets and losses -----------------------------------------------------------------------
def test_anchor_labels_follow_detectron():
    gt = Boxes(torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]]))
    classes = torch.tensor([3, 5])
    anchors = Boxes(torch.tensor([
        [0.0, 0, 10, 10],     # IoU 1 with gt 0 -> fg, class 3
        [0.0, 0, 10, 8],      # IoU 0.8 -> fg
        [0.0, 0, 10, 4.5],    # IoU 0.45 -> ignored
        [0.0, 0, 10, 3],      # IoU 0.3 -> bg
        [100.0, 100, 120, 120],  # IoU 0.25, gt 1's best anchor, but < 0.4: bg (Detectron)
        [50.0, 50, 60, 60],   # no overlap -> bg
    ]))
    labels, matched = retinanet_anchor_labels(anchors, gt, classes, 0.5, 0.4)
    assert labels.tolist() == [3, 3, -1, 0, 0, 0]
    assert torch.equal(matched[1], gt.tensor[0])
    # A best anchor between the thresholds is foreground; ties count too.
    anchors = Boxes(torch.tensor([[0.0, 0, 10, 4.5], [0.0, 5.5, 10, 10], [0.0, 0, 10, 3]]))
    labels, _ = retinanet_anchor_labels(anchors, gt[:1], classes[:1], 0.5, 0.4)
    assert labels.tolist() == [3, 3, 0]
    labels, _ = retinanet_anchor_labels(anchors, gt[:0], classes[:0], 0.5, 0.4)
    assert labels.tolist() == [0, 0, 0]


def test_losses_hand_normalized_against_torchvision():
    torch.manual_seed(0)
    cls_logits = torch.randn(2, 6, 4)
    box_deltas = torch.randn(2, 6, 4)
    labels = torch.tensor([[2, 0, -1, 0, 4, 0], [0, 0, 0, 1, -1, -1]])
    box_targets = torch.randn(3, 4)  # fg anchors (0, 0), (0, 4), (1, 3)
    losses = retinanet_losses(cls_logits, box_deltas, labels, box_targets, alpha=0.25, gamma=2.0,
                              softmax=False, bbox_reg_beta=0.11, bbox_reg_weight=2.0)
    normalizer = 3 + 2  # fg anchors + 1 per image
    valid = labels >= 0
    one_hot = torch.zeros(2, 6, 4)
    one_hot[0, 0, 1] = one_hot[0, 4, 3] = one_hot[1, 3, 0] = 1
    expected_cls = torchvision.ops.sigmoid_focal_loss(
        cls_logits[valid], one_hot[valid], 0.25, 2.0, reduction="sum") / normalizer
    fg_deltas = torch.stack([box_deltas[0, 0], box_deltas[0, 4], box_deltas[1, 3]])
    expected_box = 2.0 * F.smooth_l1_loss(fg_deltas, box_targets, beta=0.11, reduction="sum") / normalizer
    torch.testing.assert_close(losses["loss_retnet_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_retnet_bbox"], expected_box)


def test_class_specific_box_loss_uses_the_anchor_class():
    box_deltas = torch.zeros(1, 2, 12)  # 3 classes x 4
    box_deltas[0, 1, 8:12] = 1.0  # anchor 1's class-3 deltas
    labels = torch.tensor([[0, 3]])
    losses = retinanet_losses(torch.zeros(1, 2, 3), box_deltas, labels, torch.ones(1, 4),
                              alpha=0.25, gamma=2.0, softmax=False, bbox_reg_beta=0.11,
                              bbox_reg_weight=1.0)
    assert losses["loss_retnet_bbox"].item() == 0.0


# ---- inference --------------------------------------------------------------------------------
def _toy_retinanet(**options):
    head = RetinaNetHead(in_channels=4, num_anchors=1, num_classes=2, num_convs=0)
    gen = AnchorGenerator([(8, (16.0,), (1.0,)), (16, (32.0,), (1.0,))], CONTINUOUS)
    return RetinaNet(DetectorIO((0.0, 0.0, 0.0)), torch.nn.Identity(), head, gen, ["p3", "p4"],
                     box_coder=BoxCoder(), **options)


def test_detect_thresholds_topk_nms_and_rescales():
    model = _toy_retinanet(score_thresh=0.3, pre_nms_topk=2, nms_thresh=0.5,
                           detections_per_image=10)
    anchors = [Boxes(torch.tensor([[0.0, 0, 16, 16], [2.0, 0, 18, 16], [40.0, 40, 56, 56]])),
               Boxes(torch.tensor([[0.0, 0, 32, 32]]))]
    logit = torch.logit
    # Level 0: (anchor, class) probs; anchors 0 and 1 overlap (IoU 0.78), same class 0.
    level0 = logit(torch.tensor([[[0.9, 0.1], [0.8, 0.35], [0.2, 0.7]]]))
    # Coarsest level: Detectron's threshold 0 keeps its weak scores.
    level1 = logit(torch.tensor([[[0.05, 0.01]]]))
    deltas = [torch.zeros(1, 3, 4), torch.zeros(1, 1, 4)]
    (result,) = model.io.postprocess(model.detect(anchors, [level0, level1], deltas, [(64, 64)]),
                                     [2.0])
    # Level 0 top-2 above 0.3: (a0, c0) 0.9 and (a1, c0) 0.8 (0.7 and 0.35 lose the top-k);
    # NMS removes (a1, c0). Level 1: 0.05 (c0) and 0.01 (c1), both kept.
    assert result.scores.tolist() == pytest.approx([0.9, 0.05, 0.01])
    assert result.classes.tolist() == [1, 1, 2]
    assert result.boxes.tensor[0].tolist() == [0.0, 0.0, 8.0, 8.0]  # rescaled by 1 / 2


def test_detect_decodes_clips_and_soft_nms_decays():
    model = _toy_retinanet(score_thresh=0.05, pre_nms_topk=10, nms_thresh=0.3,
                           soft_nms=SoftNMS("linear"), detections_per_image=10)
    anchors = [Boxes(torch.tensor([[0.0, 0, 16, 16], [2.0, 0, 18, 16]])), Boxes(torch.zeros(0, 4))]
    level0 = torch.logit(torch.tensor([[[0.9, 0.01], [0.8, 0.01]]]))
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 0, 0] = 1.0  # shift anchor 0 by one width: [16, 0, 32, 16] -> clipped at 20
    (result,) = model.detect(anchors, [level0, torch.zeros(1, 0, 2)],
                             [deltas, torch.zeros(1, 0, 4)], [(16, 20)])
    assert result.boxes.tensor[0].tolist() == [16.0, 0.0, 20.0, 16.0]
    # IoU([16, 0, 20, 16], [2, 0, 18, 16]) = 32 / 288: below the 0.3 threshold, no decay.
    assert result.scores.tolist() == pytest.approx([0.9, 0.8])


def test_detectron2_thresholds_every_level():
    """RETINANET.THRESH_ALL_LEVELS: the coarsest level's weak candidates go too (detectron2)."""
    model = _toy_retinanet(score_thresh=0.3, pre_nms_topk=2, nms_thresh=0.5,
                           detections_per_image=10, thresh_all_levels=True)
    anchors = [Boxes(torch.tensor([[0.0, 0, 16, 16]])), Boxes(torch.tensor([[0.0, 0, 32, 32]]))]
    levels = [torch.logit(torch.tensor([[[0.9, 0.1]]])), torch.logit(torch.tensor([[[0.05, 0.01]]]))]
    (result,) = model.detect(anchors, levels, [torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)],
                             [(64, 64)])
    assert result.scores.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize("clip_after_nms,expected_boxes", [
    # Detectron: clipped first, B coincides with A and is suppressed; C is kept, empty
    (False, [[10.0, 0.0, 20.0, 10.0], [20.0, 0.0, 20.0, 10.0]]),
    # detectron2: NMS sees IoU(A, B) = 100 / 300 and keeps both, then clips; C, empty, goes
    (True, [[10.0, 0.0, 20.0, 10.0], [10.0, 0.0, 20.0, 10.0]]),
])
def test_clip_before_or_after_nms(clip_after_nms, expected_boxes):
    model = _toy_retinanet(score_thresh=0.05, pre_nms_topk=10, nms_thresh=0.5,
                           detections_per_image=10, clip_after_nms=clip_after_nms)
    # anchors as boxes (zero deltas) in a 20 x 20 image: A runs out to the right, B inside,
    # C wholly right of the image
    anchors = [Boxes(torch.tensor([[10.0, 0, 40, 10], [10.0, 0, 20, 10], [30.0, 0, 40, 10]])),
               Boxes(torch.zeros(0, 4))]
    level0 = torch.logit(torch.tensor([[[0.9, 0.01], [0.8, 0.01], [0.7, 0.01]]]))
    (result,) = model.detect(anchors, [level0, torch.zeros(1, 0, 2)],
                             [torch.zeros(1, 3, 4), torch.zeros(1, 0, 4)], [(20, 20)])
    keep = result.classes == 1
    assert result.boxes[keep].tensor.tolist() == expected_boxes


# ---- models from configs ----------------------------------------------------------------------
def _targets(sizes, convention):
    return [
        Instances(sizes[0], boxes=Boxes(torch.tensor([[10.0, 10, 60, 80], [50, 40, 110, 90]]),
                                        convention),
                  classes=torch.tensor([1, 3])),
        Instances(sizes[1], boxes=Boxes(torch.tensor([[0.0, 0, 30, 30]]), convention),
                  classes=torch.tensor([4])),
    ]


@pytest.mark.parametrize("overrides", [
    [],
    ["RETINANET.CLASS_SPECIFIC_BBOX", "True", "RETINANET.SHARE_CLS_BBOX_TOWER", "True"],
    ["RETINANET.SOFTMAX", "True", "TEST.SOFT_NMS.ENABLED", "True"],
])
def test_detectron_config_trains_one_step_and_infers(reference_dir, overrides):
    cfg = load_config(reference_dir / "detectron_configs" / RETINANET_CONFIG,
                      ["MODEL.NUM_CLASSES", "5"] + overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, RetinaNet) and model.in_features == ["p3", "p4", "p5", "p6", "p7"]
    sizes = [(96, 120), (90, 128)]
    images = noise_images(model, sizes)
    model.train()
    losses = model(images, [1.0, 0.5], _targets(sizes, BoxConvention.of(cfg)), seeds=[1, 2])
    assert set(losses) == {"loss_retnet_cls", "loss_retnet_bbox"}
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_retnet_bbox"] > 0
    total.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    model.eval()
    with torch.no_grad():
        results = model(images, [1.0, 0.5])
    assert len(results) == 2
    for result, (h, w), scale in zip(results, sizes, [1.0, 0.5]):
        assert 0 < len(result) <= cfg.TEST.DETECTIONS_PER_IM
        assert ((result.classes >= 1) & (result.classes <= 4)).all()
        boxes = result.boxes.tensor
        assert (boxes[:, 2] <= w / scale + 1e-3).all() and (boxes[:, 3] <= h / scale + 1e-3).all()
        assert (result.scores[:-1] >= result.scores[1:]).all()


def test_head_initialization_and_blob_names(reference_dir):
    cfg = load_config(reference_dir / "detectron_configs" / RETINANET_CONFIG,
                      ["MODEL.NUM_CLASSES", "81"])
    torch.manual_seed(0)
    head = build_model(cfg).head
    # 9 anchors x 80 classes; every class starts at probability PRIOR_PROB = 0.01.
    assert head.cls_pred.weight.shape == (9 * 80, 256, 3, 3)
    assert torch.sigmoid(head.cls_pred.bias).tolist() == pytest.approx([0.01] * 720)
    assert head.box_pred.weight.shape == (9 * 4, 256, 3, 3)
    assert head.cls_tower[0].weight.std().item() == pytest.approx(0.01, rel=0.02)
    names = detectron_blob_names(head)
    assert names["cls_tower.3.weight"] == "retnet_cls_conv_n3_fpn3_w"
    assert names["box_tower.0.bias"] == "retnet_bbox_conv_n0_fpn3_b"
    assert names["cls_pred.bias"] == "retnet_cls_pred_fpn3_b"
    assert names["box_pred.weight"] == "retnet_bbox_pred_fpn3_w"


def test_group_norm_towers_keep_the_signal(reference_dir):
    """RETINANET.USE_GN: GroupNorm after every tower conv (blob ..._gn_s / _gn_b), none after
    the predictors; on a narrow (64-channel) tower the features reaching the predictors keep
    unit scale, where the plain 0.01-std tower shrinks them a thousandfold."""
    cfg = load_config(reference_dir / "detectron_configs" / RETINANET_CONFIG,
                      ["MODEL.NUM_CLASSES", "5", "FPN.DIM", "64", "RETINANET.USE_GN", "True"])
    head = build_model(cfg).head
    assert isinstance(head.cls_tower[0].norm, torch.nn.GroupNorm)
    assert head.cls_pred.norm is None and head.box_pred.norm is None
    names = detectron_blob_names(head)
    assert names["box_tower.3.norm.weight"] == "retnet_bbox_conv_n3_fpn3_gn_s"

    def tower_output_std(tower):
        x = torch.randn(1, 64, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for layer in tower:
                x = F.relu(layer(x))
        return x.std().item()

    plain = RetinaNetHead(64, num_anchors=9, num_classes=4)
    assert tower_output_std(head.cls_tower) > 0.3
    assert tower_output_std(plain.cls_tower) < 1e-2


def test_softmax_head_bias_starts_background_at_one_minus_prior():
    # Detectron's softmax bias: background log(K (1 - prior) / prior), classes 0, so the
    # background probability is 1 - prior and each of the K classes gets prior / K.
    head = RetinaNetHead(8, num_anchors=2, num_classes=4, num_convs=1, prior_prob=0.01, softmax=True)
    probs = F.softmax(head.cls_pred.bias.view(2, 5), dim=1)
    torch.testing.assert_close(probs[:, 0], torch.full((2,), 0.99))
    torch.testing.assert_close(probs[:, 1:], torch.full((2, 4), 0.0025))


@pytest.mark.parametrize("overrides, message", [
    # (RETINANET_ON off makes the config an R-CNN's for validation: its levels must agree.)
    (["RETINANET.RETINANET_ON", "False", "FPN.ROI_MIN_LEVEL", "3",
      "TEST.PRECOMPUTED_PROPOSALS", "False"], "RETINANET.RETINANET_ON"),
    (["FPN.MULTILEVEL_RPN", "False"], "MULTILEVEL_RPN"),
    (["FPN.EXTRA_CONV_LEVELS", "False"], "EXTRA_CONV_LEVELS"),
    (["RETINANET.NEGATIVE_OVERLAP", "0.6"], "NEGATIVE_OVERLAP"),
])
def test_config_mistakes_are_named(reference_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_model(load_config(reference_dir / "detectron_configs" / RETINANET_CONFIG,
                                ["MODEL.NUM_CLASSES", "5"] + overrides))


def test_shapes_baseline_config_builds(repo_root):
    cfg = load_config(repo_root / "configs/shapes/retinanet_R-18-FPN_1x.yaml")
    model = build_model(cfg)
    assert isinstance(model, RetinaNet)
    assert model.backbone.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    # Softmax focal loss: 6 shape classes plus background per anchor.
    assert model.head.softmax and model.head.cls_dim == 7
    assert model.anchor_generator.num_anchors == [9] * 5


def test_overfits_one_tiny_image(repo_root):
    cfg = load_config(repo_root / "configs/shapes/retinanet_R-18-FPN_1x.yaml",
                      ["RETINANET.NUM_CONVS", "1"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    sizes = [(128, 128)]
    images = noise_images(model, sizes)
    targets = [Instances(sizes[0], boxes=Boxes(torch.tensor([[20.0, 30, 60, 70],
                                                             [70, 60, 120, 100]])),
                         classes=torch.tensor([2, 5]))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(40):
        losses = model(images, [1.0], targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.3 * history[0]
    model.eval()
    with torch.no_grad():
        (result,) = model(images, [1.0])
    # The two objects come out on top, with their classes.
    top = result[:2]
    assert sorted(top.classes.tolist()) == [2, 5]
    assert top.boxes.iou(targets[0].boxes).max(dim=1).values.min() > 0.5

