"""One model of every family (Faster / Mask / Keypoint R-CNN, FPN and C4, GN, RPN, models on
precomputed proposals, RetinaNet, R-FCN, VGG16), built from Detectron's own config file of that
name (NUM_CLASSES changed, RoI / proposal counts made small): one SGD step and one inference on
small images.

Detectron shipped no config for R-FCN or VGG16; those two start from e2e_faster_rcnn_R-50-C4_1x
with the overrides of Detectron's hard-coded model types (model_builder.ResNet50_rfcn:
ResNet-50 conv5 body; VGG16_faster_rcnn: VGG16 conv5 body and fc head), R-FCN's res5 dilated
to stride 16 as in the R-FCN paper. The R-FCN heads are also checked against hand-computed
position-sensitive pooling cases, and the shapes baselines of these families run train, test
and infer end to end on a tiny dataset.
"""
import json

import pytest
import torch
from torch import nn
from test_training import tiny_overrides
from conftest import noise_images

from detectron_lib.cli import main as cli_main
from detectron_lib.config import ConfigError, load_config
from detectron_lib.inference.predictor import infer_images
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.retinanet import RetinaNetHead
from detectron_lib.modeling.roi_heads.box_head import ConvFCHead, MLPHead
from detectron_lib.modeling.roi_heads.fast_rcnn import FastRCNNPredictor
from detectron_lib.modeling.roi_heads.keypoint_head import KeypointConvHead, KeypointPredictor
from detectron_lib.modeling.roi_heads.mask_head import MaskConvUpsampleHead, MaskPredictor
from detectron_lib.modeling.roi_heads.rfcn import RFCNPredictor
from detectron_lib.modeling.rpn import RPNHead
from detectron_lib.structures.boxes import BoxConvention, Boxes
from detectron_lib.structures.instances import Instances

SMALL = ["MODEL.NUM_CLASSES", "5", "TRAIN.BATCH_SIZE_PER_IM", "32", "TRAIN.RPN_POST_NMS_TOP_N", "64",
         "TEST.RPN_PRE_NMS_TOP_N", "200", "TEST.RPN_POST_NMS_TOP_N", "32"]
RFCN = ["MODEL.TYPE", "rfcn", "MODEL.CONV_BODY", "ResNet.add_ResNet50_conv5_body",
        "RESNETS.RES5_DILATION", "2"]
VGG16 = ["MODEL.CONV_BODY", "VGG16.add_VGG16_conv5_body",
         "FAST_RCNN.ROI_BOX_HEAD", "VGG16.add_VGG16_roi_fc_head"]

RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_bbox"}
BOX_LOSSES = {"loss_cls", "loss_bbox"}
MASK_LOSSES = {"loss_mask"}
KEYPOINT_LOSSES = {"loss_kps"}
RETINANET_LOSSES = {"loss_retnet_cls", "loss_retnet_bbox"}
B = "12_2017_baselines/"
SLOW = pytest.mark.slow  # the C4 models run a ResNet-50 res5 per RoI: > 10 s on 2 shared cores
FAMILIES = [
    # (config, extra overrides, uses precomputed proposals, expected losses)
    pytest.param(B + "e2e_faster_rcnn_R-50-FPN_1x.yaml", [], False, RPN_LOSSES | BOX_LOSSES,
                 id="faster_fpn"),
    pytest.param(B + "e2e_faster_rcnn_R-50-C4_1x.yaml", [], False, RPN_LOSSES | BOX_LOSSES,
                 id="faster_c4", marks=SLOW),
    pytest.param(B + "e2e_mask_rcnn_R-50-FPN_1x.yaml", [], False,
                 RPN_LOSSES | BOX_LOSSES | MASK_LOSSES, id="mask_fpn"),
    pytest.param(B + "e2e_mask_rcnn_R-50-C4_1x.yaml", [], False,
                 RPN_LOSSES | BOX_LOSSES | MASK_LOSSES, id="mask_c4", marks=SLOW),
    pytest.param("04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml", [], False,
                 RPN_LOSSES | BOX_LOSSES | MASK_LOSSES, id="mask_fpn_gn"),
    pytest.param(B + "rpn_R-50-FPN_1x.yaml", [], False, RPN_LOSSES, id="rpn_fpn"),
    pytest.param(B + "fast_rcnn_R-50-FPN_1x.yaml", [], True, BOX_LOSSES, id="fast_fpn"),
    pytest.param(B + "fast_rcnn_R-50-C4_1x.yaml", [], True, BOX_LOSSES, id="fast_c4", marks=SLOW),
    pytest.param(B + "mask_rcnn_R-50-FPN_1x.yaml", [], True, BOX_LOSSES | MASK_LOSSES,
                 id="mask_on_proposals_fpn"),
    pytest.param(B + "e2e_keypoint_rcnn_R-50-FPN_1x.yaml", [], False,
                 RPN_LOSSES | BOX_LOSSES | KEYPOINT_LOSSES, id="keypoint_fpn"),
    pytest.param(B + "keypoint_rcnn_R-50-FPN_1x.yaml", [], True, BOX_LOSSES | KEYPOINT_LOSSES,
                 id="keypoint_on_proposals_fpn"),
    pytest.param(B + "retinanet_R-50-FPN_1x.yaml", [], False, RETINANET_LOSSES, id="retinanet"),
    pytest.param(B + "e2e_faster_rcnn_R-50-C4_1x.yaml", RFCN, False, RPN_LOSSES | BOX_LOSSES,
                 id="rfcn_e2e"),
    pytest.param(B + "fast_rcnn_R-50-C4_1x.yaml", RFCN, True, BOX_LOSSES, id="rfcn_on_proposals"),
    pytest.param(B + "e2e_faster_rcnn_R-50-C4_1x.yaml", VGG16, False, RPN_LOSSES | BOX_LOSSES,
                 id="faster_vgg16"),
]

SIZES = [(96, 120), (90, 128)]
SCALES = [1.0, 0.5]


def _square(x1, y1, x2, y2):
    """A COCO polygon covering the box."""
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _keypoints(boxes, num_keypoints):
    """(G, K, 3) visible keypoints spread over each box's diagonal."""
    t = torch.linspace(0.1, 0.9, num_keypoints)[None, :]
    x = boxes[:, :1] + t * (boxes[:, 2:3] - boxes[:, :1])
    y = boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])
    return torch.stack([x, y, torch.full_like(x, 2.0)], dim=2)


def _targets(num_keypoints, convention):
    boxes = [torch.tensor([[10.0, 10, 60, 80], [50, 40, 110, 90]]), torch.tensor([[0.0, 0, 30, 30]])]
    return [
        Instances(size, boxes=Boxes(b, convention), classes=c,
                  segms=[_square(*box.tolist()) for box in b],
                  keypoints=_keypoints(b, num_keypoints))
        for size, b, c in zip(SIZES, boxes, [torch.tensor([1, 3]), torch.tensor([4])])
    ]


def _proposals(convention):
    torch.manual_seed(1)
    out = []
    for h, w in SIZES:
        xy = torch.rand(40, 2) * torch.tensor([w * 0.6, h * 0.6])
        wh = 8 + torch.rand(40, 2) * torch.tensor([w * 0.4, h * 0.4])
        out.append(Instances((h, w), boxes=Boxes(torch.cat([xy, xy + wh], dim=1), convention)))
    return out


@pytest.mark.parametrize("name,overrides,on_proposals,expected_losses", FAMILIES)
def test_family_trains_one_step_and_infers(reference_dir, name, overrides, on_proposals,
                                           expected_losses):
    cfg = load_config(reference_dir / "detectron_configs" / name, SMALL + overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = noise_images(model, SIZES)
    # Models on precomputed proposals get them; the others (RetinaNet included) take none.
    convention = BoxConvention.of(cfg)
    proposals = {"proposals": _proposals(convention)} if on_proposals else {}
    model.train()
    losses = model(images, SCALES, _targets(max(cfg.KRCNN.NUM_KEYPOINTS, 1), convention), seeds=[1, 2],
                   **proposals)
    assert set(losses) == expected_losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    optimizer.zero_grad()
    total.backward()
    assert all(p.grad is not None for p in params), "a trainable parameter got no gradient"
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))

    model.eval()
    with torch.no_grad():
        results = model(images, SCALES, **proposals)
    assert len(results) == 2
    for result, (h, w), scale in zip(results, SIZES, SCALES):
        boxes = result.boxes.tensor
        assert boxes.shape[1] == 4 and torch.isfinite(boxes).all()
        assert result.boxes.convention is convention
        assert (boxes[:, 2] <= w / scale + 1e-3).all() and (boxes[:, 3] <= h / scale + 1e-3).all()
        assert (result.scores[:-1] >= result.scores[1:]).all()
        if cfg.MODEL.RPN_ONLY:
            continue
        assert ((result.classes >= 1) & (result.classes <= 4)).all()
        if cfg.MODEL.MASK_ON:
            resolution = cfg.MRCNN.RESOLUTION
            assert result.mask_probs.shape == (len(result), resolution, resolution)
        if cfg.MODEL.KEYPOINTS_ON:
            assert result.keypoints.shape == (len(result), cfg.KRCNN.NUM_KEYPOINTS, 3)


HIDDEN_LAYERS = (RPNHead, MLPHead, ConvFCHead, MaskConvUpsampleHead, KeypointConvHead)
PREDICTORS = (FastRCNNPredictor, MaskPredictor, KeypointPredictor)


@pytest.mark.parametrize("name", [B + "e2e_mask_rcnn_R-50-FPN_1x.yaml",
                                  "04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml",
                                  B + "e2e_keypoint_rcnn_R-50-FPN_1x.yaml",
                                  B + "retinanet_R-50-FPN_1x.yaml"])
def test_head_precision_runs_hidden_layers_in_bfloat16_and_predictors_in_float32(
        reference_dir, name):
    """MODEL.HEAD_PRECISION bfloat16: the RPN conv, RetinaNet towers and box / mask / keypoint
    head layers run under bfloat16 autocast; every predictor gets float32 features outside it,
    the losses stay close to a float32 model's with the same weights, and the gradients of the
    trainable parameters are float32."""
    cfg = load_config(reference_dir / "detectron_configs" / name,
                      SMALL + ["MODEL.BODY_PRECISION", "float32", "MODEL.HEAD_PRECISION", "bfloat16"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    reference = build_model(load_config(reference_dir / "detectron_configs" / name,
                                        SMALL + ["MODEL.BODY_PRECISION", "float32"])).train()
    reference.load_state_dict(model.state_dict())

    seen = {}

    def record(kind):
        def hook(module, inputs):
            seen.setdefault(kind, set()).add(
                torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            if kind == "predictor":
                assert all(x.dtype == torch.float32 for x in inputs if torch.is_tensor(x))
        return hook

    for module in model.modules():
        if isinstance(module, HIDDEN_LAYERS):  # their first conv or fc layer
            first = next(m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            first.register_forward_pre_hook(record("hidden"))
        if isinstance(module, RPNHead):
            module.cls_logits.register_forward_pre_hook(record("predictor"))
        if isinstance(module, PREDICTORS):
            module.register_forward_pre_hook(record("predictor"))
        if isinstance(module, RetinaNetHead):
            module.cls_tower[0].register_forward_pre_hook(record("hidden"))
            module.cls_pred.register_forward_pre_hook(record("predictor"))

    images = noise_images(model, SIZES)
    targets = _targets(max(cfg.KRCNN.NUM_KEYPOINTS, 1), BoxConvention.of(cfg))
    losses = model(images, SCALES, targets, seeds=[1, 2])
    assert seen == {"hidden": {torch.bfloat16}, "predictor": {None}}
    expected = reference(images, SCALES, targets, seeds=[1, 2])
    for key, value in losses.items():
        assert value.dtype == torch.float32
        # the same proposals and samples unless bfloat16 reorders near-tied objectness scores
        torch.testing.assert_close(value, expected[key], rtol=0.1, atol=0.02, msg=key)
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


# ---- R-FCN: position-sensitive pooling wiring, hand-computed -------------------------------
def _rfcn_with_one_active_channel(method, conv, channel):
    """R-FCN predictor (G = 2, 2 classes, class-agnostic boxes) on a 1-channel map whose 1x1
    convs are zero except weight 1 from the input to score-map ``channel`` of ``conv``."""
    predictor = RFCNPredictor(1, 2, 2, spatial_scale=1.0, cls_agnostic_bbox_reg=True, method=method,
                              sampling_ratio=2)
    with torch.no_grad():
        for layer in (predictor.conv_cls, predictor.conv_bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        getattr(predictor, conv).weight[channel] = 1.0
    return predictor


def _quadrant(row, col):
    """(1, 1, 4, 4) map: 1 in quadrant (row, col) of 2x2-pixel quadrants, 0 elsewhere."""
    feature = torch.zeros(1, 1, 4, 4)
    feature[0, 0, 2 * row:2 * row + 2, 2 * col:2 * col + 2] = 1.0
    return feature


@pytest.mark.parametrize("method", ["RoIPoolF", "RoIAlign"])
def test_rfcn_class_score_reads_its_bin_from_its_own_score_map(method):
    # Score map of class 1, bin (row 0, col 1) is channel (1 * 2 + 0) * 2 + 1 = 5. The whole-map
    # RoI's bin (0, 1) is the top-right quadrant: with the map lit there, that bin pools 1 and
    # the other three bins (which read channels 4, 6, 7) pool 0, so the vote (average) is 1/4.
    predictor = _rfcn_with_one_active_channel(method, "conv_cls", 5)
    whole = [Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))]
    logits, deltas = predictor(_quadrant(0, 1), whole)
    assert logits.tolist() == [[0.0, 0.25]]
    assert deltas.shape == (1, 8) and not deltas.any()
    # The same evidence in the bottom-left quadrant falls in bin (1, 0), which class 1 reads
    # from channel 6: no vote. Position sensitivity is the whole point of R-FCN.
    logits, _ = predictor(_quadrant(1, 0), whole)
    assert logits.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("method", ["RoIPoolF", "RoIAlign"])
def test_rfcn_box_delta_reads_its_bin_from_its_own_map(method):
    # Class-agnostic boxes: 8 outputs (background, foreground) x (dx, dy, dw, dh). Output 5
    # (foreground dy) in bin (1, 0) is channel (5 * 2 + 1) * 2 + 0 = 22.
    predictor = _rfcn_with_one_active_channel(method, "conv_bbox_pred", 22)
    logits, deltas = predictor(_quadrant(1, 0), [Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))])
    expected = torch.zeros(1, 8)
    expected[0, 5] = 0.25
    assert torch.equal(deltas, expected) and not logits.any()


def test_rfcn_rejects_heads_it_does_not_have(reference_dir):
    name = reference_dir / "detectron_configs" / B / "e2e_mask_rcnn_R-50-C4_1x.yaml"
    with pytest.raises(ConfigError, match="rfcn does not support MODEL.MASK_ON"):
        build_model(load_config(name, SMALL + RFCN))


# ---- the shapes baselines of these families, end to end on a tiny dataset ------------------
@pytest.mark.slow
@pytest.mark.parametrize("baseline", [
    "rfcn_R-18-DC5_1x", "e2e_faster_rcnn_VGG16_1x", "e2e_mask_rcnn_R-18-FPN_1x",
    "e2e_mask_rcnn_R-50-FPN_1x_gn", "retinanet_R-18-FPN_1x",
])
def test_shapes_baseline_trains_tests_and_infers(baseline, tiny_dataset, tmp_path, repo_root,
                                                 reference_dir):
    # Two iterations on 12 images: the config builds, trains, evaluates into metrics.json
    # (segm too for Mask R-CNN), and `infer` writes the drawing and, for Mask R-CNN, masks.
    config = str(repo_root / "configs" / "shapes" / f"{baseline}.yaml")
    out = tmp_path / "run"
    extra = {"SOLVER.MAX_ITER": "2", "SOLVER.STEPS": "[0]", "SOLVER.WARM_UP_ITERS": "1"}
    if baseline.startswith("retinanet"):  # P7 is 1x1 here: GN needs 2+ channels per group
        extra["GROUP_NORM.NUM_GROUPS"] = "16"
    opts = tiny_overrides(tiny_dataset, out, **extra)
    assert cli_main(["train", "--cfg", config, *opts]) == 0
    weights = str(out / "model_final.pth")
    assert cli_main(["test", "--cfg", config, "--weights", weights, *opts]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox/AP"] <= 1.0
    is_mask = "mask" in baseline
    assert ("segm/AP" in metrics) == is_mask
    boxes = json.loads((out / "tiny_shapes_bbox_results.json").read_text())
    segm = out / "tiny_shapes_segm_results.json"
    assert segm.exists() == is_mask
    if is_mask:  # one mask per box, in the order of the boxes
        masks = json.loads(segm.read_text())
        assert [(m["image_id"], m["category_id"], m["score"]) for m in masks] == [
            (b["image_id"], b["category_id"], b["score"]) for b in boxes]

    cfg = load_config(config, opts + ["TEST.SCORE_THRESH", "0.0"])  # keep an untrained model's
    image = sorted((reference_dir / "demo_images").glob("*.jpg"))[0]
    written = list(infer_images(cfg, weights, image, tmp_path / "vis", score_thresh=0.0,
                                write_json=True))
    assert (tmp_path / "vis" / f"{image.stem}.png") in written
    detections = json.loads((tmp_path / "vis" / f"{image.stem}.json").read_text())["detections"]
    assert detections
    assert all(("mask" in d) == is_mask for d in detections)
