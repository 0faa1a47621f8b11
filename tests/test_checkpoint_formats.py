"""Weight import (engine.checkpoint_formats): Detectron .pkl, detectron2 .pkl/.pth, torchvision
detection and ImageNet state dicts, our own checkpoints; URL download and cache.

The files are made here from a model's own weights under the names the other code bases use,
written out by hand from their sources (Detectron's blob names, detectron2's and torchvision's
module names), so the loader's rules are checked against an independent spelling. The
torchvision ImageNet backbones are checked against torchvision's own forward pass.
"""
import http.server
import logging
import pickle
import socket
import threading
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO_ROOT

from detectron_lib.config import load_config
from detectron_lib.engine.checkpoint import CheckpointError, save_checkpoint
from detectron_lib.engine.checkpoint_formats import (
    DETECTRON,
    DETECTRON2,
    OURS,
    TORCHVISION,
    TORCHVISION_IMAGENET,
    load_weights,
    read_weights_file,
)
from detectron_lib.inference.engine import load_model_for_inference, warn_on_box_convention_mismatch
from detectron_lib.modeling.backbone import precision
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.utils.download import DownloadError, cache_path_for, cached_path


# Narrow heads and bottlenecks keep the R-50 models small; names and structure are Detectron's.
NARROW_BASIC_BLOCKS = ["FPN.DIM", "32", "FAST_RCNN.MLP_HEAD_DIM", "64", "MRCNN.DIM_REDUCED", "32"]
NARROW = NARROW_BASIC_BLOCKS + ["RESNETS.WIDTH_PER_GROUP", "8"]  # bottlenecks have a group width


def _config(reference_dir, name, *overrides):
    path = reference_dir / "detectron_configs" / "12_2017_baselines" / name
    return load_config(path, ["MODEL.BODY_PRECISION", "float32", *overrides])


def _mask_config(reference_dir, *overrides):
    """Detectron's e2e Mask R-CNN R-50-FPN, narrowed, with 5 classes unless overridden."""
    return _config(reference_dir, "e2e_mask_rcnn_R-50-FPN_1x.yaml", *NARROW,
                   "MODEL.NUM_CLASSES", "5", *overrides)


def _randomized(model, seed=0):
    """``model`` with every tensor random (frozen-BN scales positive), so a misplaced tensor
    shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=g) + 0.5 if key.endswith("norm.weight")
                            else torch.randn(value.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module")
def mask_r50_fpn(reference_dir):
    """The narrowed Mask R-CNN R-50-FPN (5 classes) with random weights."""
    torch.manual_seed(0)
    cfg = _mask_config(reference_dir)
    return cfg, _randomized(build_model(cfg))


def _assert_same_state(model, reference, skip=()):
    own, ref = model.state_dict(), reference.state_dict()
    for key in ref:
        if not key.startswith(tuple(skip)):
            assert torch.equal(own[key], ref[key]), key


# ---- Detectron ------------------------------------------------------------------------------
R50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


# Detectron's blobs of the mask head (mask_rcnn_fcn_head_v1up4convs) and of the keypoint head
# (add_roi_pose_head_v1convX with 8 convs, USE_DECONV_OUTPUT and UP_SCALE 2), and ours
MASK_BLOBS = {
    "_[mask]_fcn1": "mask_heads.head.convs.0", "_[mask]_fcn2": "mask_heads.head.convs.2",
    "_[mask]_fcn3": "mask_heads.head.convs.4", "_[mask]_fcn4": "mask_heads.head.convs.6",
    "conv5_mask": "mask_heads.head.upsample", "mask_fcn_logits": "mask_heads.predictor.logits",
}
KEYPOINT_BLOBS = {f"conv_fcn{n}": f"keypoint_heads.head.convs.{2 * (n - 1)}" for n in range(1, 9)}
KEYPOINT_BLOBS["kps_score_lowres"] = "keypoint_heads.predictor.score"


def detectron_blobs(model, with_heads=True, roi_head_blobs=MASK_BLOBS):
    """Detectron's blob names for an R-50-FPN R-CNN (FPN.add_fpn_ResNet50_conv5_body,
    add_roi_2mlp_head and ``roi_head_blobs``), spelled out from Detectron's sources."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    body = "backbone.bottom_up."
    blobs = {"conv1_w": sd[body + "stem.conv1.weight"],
             "res_conv1_bn_s": sd[body + "stem.conv1.norm.weight"],
             "res_conv1_bn_b": sd[body + "stem.conv1.norm.bias"]}
    for stage, count in R50_BLOCKS.items():
        for i in range(count):
            for branch in ("branch2a", "branch2b", "branch2c") + (("branch1",) if i == 0 else ()):
                ours = f"{body}res{stage}.{i}.{branch}"
                blobs[f"res{stage}_{i}_{branch}_w"] = sd[ours + ".weight"]
                blobs[f"res{stage}_{i}_{branch}_bn_s"] = sd[ours + ".norm.weight"]
                blobs[f"res{stage}_{i}_{branch}_bn_b"] = sd[ours + ".norm.bias"]
    if not with_heads:
        return blobs
    for stage, count in R50_BLOCKS.items():
        sum_blob = f"res{stage}_{count - 1}_sum"
        lateral = f"fpn_inner_{sum_blob}" + ("" if stage == 5 else "_lateral")
        for blob, ours in ((lateral, f"backbone.lateral_convs.res{stage}"),
                           (f"fpn_{sum_blob}", f"backbone.output_convs.res{stage}")):
            blobs[blob + "_w"], blobs[blob + "_b"] = sd[ours + ".weight"], sd[ours + ".bias"]
    heads = {
        "conv_rpn_fpn2": "rpn.head.conv", "rpn_cls_logits_fpn2": "rpn.head.cls_logits",
        "rpn_bbox_pred_fpn2": "rpn.head.bbox_pred", "fc6": "roi_heads.box_head.fc6",
        "fc7": "roi_heads.box_head.fc7", "cls_score": "roi_heads.predictor.cls_score",
        "bbox_pred": "roi_heads.predictor.bbox_pred", **roi_head_blobs,
    }
    for blob, ours in heads.items():
        blobs[blob + "_w"], blobs[blob + "_b"] = sd[ours + ".weight"], sd[ours + ".bias"]
    return blobs


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # Detectron wrote Python 2 pickles
    return path


def test_detectron_model_zoo_pkl_loads_every_blob(mask_r50_fpn, tmp_path):
    cfg, reference = mask_r50_fpn
    blobs = detectron_blobs(reference)
    momentum = {"fc6_w_momentum": np.zeros((1,), np.float32)}  # optimizer state, not weights
    path = _write_pickle(tmp_path / "model_final.pkl", {"blobs": {**blobs, **momentum},
                                                         "cfg": "MODEL:\n  NUM_CLASSES: 5\n"})
    assert read_weights_file(path).format == DETECTRON
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    assert report.ignored == ["fc6_w_momentum"]
    _assert_same_state(model, reference)


def test_detectron_keypoint_rcnn_pkl_loads_every_blob(reference_dir, tmp_path):
    cfg = _config(reference_dir, "e2e_keypoint_rcnn_R-50-FPN_1x.yaml", *NARROW,
                  "KRCNN.CONV_HEAD_DIM", "32")
    reference = _randomized(build_model(cfg))
    path = _write_pickle(tmp_path / "model_final.pkl", {
        "blobs": detectron_blobs(reference, roi_head_blobs=KEYPOINT_BLOBS)})
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == []
    _assert_same_state(model, reference)


def test_detectron_retinanet_pkl_loads_every_blob(reference_dir, tmp_path):
    # Detectron's RetinaNet: FPN on res3..res5 plus fpn_6 (on C5) and fpn_7, and towers whose
    # blobs carry the finest level (retnet_cls_conv_n0_fpn3 ...), shared by every level.
    cfg = _config(reference_dir, "retinanet_R-50-FPN_1x.yaml", *NARROW)
    reference = _randomized(build_model(cfg))
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    blobs = detectron_blobs(reference, with_heads=False)
    names = {"fpn_inner_res5_2_sum": "backbone.lateral_convs.res5",
             "fpn_inner_res4_5_sum_lateral": "backbone.lateral_convs.res4",
             "fpn_inner_res3_3_sum_lateral": "backbone.lateral_convs.res3",
             "fpn_res5_2_sum": "backbone.output_convs.res5", "fpn_res4_5_sum": "backbone.output_convs.res4",
             "fpn_res3_3_sum": "backbone.output_convs.res3", "fpn_6": "backbone.extra_convs.p6",
             "fpn_7": "backbone.extra_convs.p7", "retnet_cls_pred_fpn3": "head.cls_pred",
             "retnet_bbox_pred_fpn3": "head.box_pred"}
    for i in range(4):
        names[f"retnet_cls_conv_n{i}_fpn3"] = f"head.cls_tower.{i}"
        names[f"retnet_bbox_conv_n{i}_fpn3"] = f"head.box_tower.{i}"
    for blob, ours in names.items():
        blobs[blob + "_w"], blobs[blob + "_b"] = sd[ours + ".weight"], sd[ours + ".bias"]
    path = _write_pickle(tmp_path / "retinanet.pkl", {"blobs": blobs})
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == []
    _assert_same_state(model, reference)


def test_detectron_imagenet_backbone_initializes_training_and_lists_the_rest(
        mask_r50_fpn, tmp_path, caplog):
    cfg, reference = mask_r50_fpn
    blobs = detectron_blobs(reference, with_heads=False)
    blobs["pred_w"] = np.zeros((1000, 2048), np.float32)  # the ImageNet classifier (fc1000)
    blobs["pred_b"] = np.zeros((1000,), np.float32)
    path = _write_pickle(tmp_path / "R-50.pkl", blobs)  # MSRA files hold the blobs directly
    model = build_model(cfg)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("rpn.")}
    with caplog.at_level(logging.WARNING):
        report = load_weights(model, path, for_training=True)
    assert report.unused == ["pred_b", "pred_w"]
    assert all(not k.startswith("backbone.bottom_up.") for k in report.missing)
    assert "rpn.head.conv.weight" in report.missing and "backbone.lateral_convs.res5.weight" in report.missing
    _assert_same_state(model, reference, skip=("backbone.lateral", "backbone.output", "rpn.",
                                               "roi_heads.", "mask_heads."))
    for key, value in heads_before.items():
        assert torch.equal(model.state_dict()[key], value), key
    warning = caplog.text
    assert "pred_w" in warning and "kept their initialization" in warning and "rpn.head.conv.weight" in warning
    # As inference weights the same file is an error naming what is missing.
    with pytest.raises(CheckpointError, match=r"missing from the file.*rpn\.head\.conv\.weight"):
        load_weights(build_model(cfg), path)


def test_class_count_mismatch_skips_predictors_for_fine_tuning_only(
        mask_r50_fpn, reference_dir, tmp_path, caplog):
    cfg, reference = mask_r50_fpn
    path = _write_pickle(tmp_path / "model_final.pkl", {"blobs": detectron_blobs(reference)})
    cfg3 = _mask_config(reference_dir, "MODEL.NUM_CLASSES", "3")
    model = build_model(cfg3)
    with caplog.at_level(logging.WARNING):
        report = load_weights(model, path, for_training=True)
    skipped = {key for key, *_ in report.skipped}
    assert skipped == {"roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias",
                       "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias",
                       "mask_heads.predictor.logits.weight", "mask_heads.predictor.logits.bias"}
    assert report.missing == [] and report.mis_shaped == []
    assert "cls_score_w: [5, 64] vs [3, 64]" in caplog.text
    _assert_same_state(model, reference, skip=("roi_heads.predictor.", "mask_heads.predictor."))
    with pytest.raises(CheckpointError, match=r"cls_score_w: \[5, 64\] vs \[3, 64\]"):
        load_weights(build_model(cfg3), path)


def test_other_mis_shaped_tensors_are_an_error_even_for_training(mask_r50_fpn, reference_dir, tmp_path):
    _, reference = mask_r50_fpn
    path = _write_pickle(tmp_path / "model_final.pkl", {"blobs": detectron_blobs(reference)})
    other = _mask_config(reference_dir, "FAST_RCNN.MLP_HEAD_DIM", "48")
    with pytest.raises(CheckpointError, match=r"of another shape.*roi_heads\.box_head\.fc6\.weight <- fc6_w"):
        load_weights(build_model(other), path, for_training=True)


def test_detectron_c4_and_mask_res5_follow_the_shared_initialization_rule(reference_dir, tmp_path):
    # v0up's own res5 is '_[mask]_res5_*'; absent from the file it falls back to 'res5_*', as
    # Detectron's initialize_gpu_from_weights_file does for '_[xyz]_' blobs.
    cfg = _config(reference_dir, "e2e_mask_rcnn_R-50-C4_1x.yaml", *NARROW, "MODEL.NUM_CLASSES", "3",
                  "MRCNN.ROI_MASK_HEAD", "mask_rcnn_heads.mask_rcnn_fcn_head_v0up")
    reference = _randomized(build_model(cfg))
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    blobs = {}
    for i in range(3):
        for branch in ("branch2a", "branch2b", "branch2c") + (("branch1",) if i == 0 else ()):
            ours = f"roi_heads.box_head.res5.{i}.{branch}"
            blobs[f"res5_{i}_{branch}_w"] = sd[ours + ".weight"]
            blobs[f"res5_{i}_{branch}_bn_s"] = sd[ours + ".norm.weight"]
            blobs[f"res5_{i}_{branch}_bn_b"] = sd[ours + ".norm.bias"]
    path = _write_pickle(tmp_path / "res5.pkl", blobs)
    model = build_model(cfg)
    report = load_weights(model, path, for_training=True)
    assert report.unused == []
    state = model.state_dict()
    for i in range(3):
        key = f"res5.{i}.branch2b.weight"
        assert torch.equal(state["roi_heads.box_head." + key], reference.state_dict()["roi_heads.box_head." + key])
        assert torch.equal(state["mask_heads.head." + key], reference.state_dict()["roi_heads.box_head." + key])


# ---- detectron2 -----------------------------------------------------------------------------
def detectron2_state(model):
    """detectron2's names and class layout for an R-50-FPN Mask or Keypoint R-CNN (its
    GeneralizedRCNN, FPN, StandardRPNHead, FastRCNNConvFCHead, FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead, KRCNNConvDeconvUpsampleHead): background is the last cls_score
    row and has no bbox_pred rows or mask channel."""
    sd = model.state_dict()
    out = {}
    body = "backbone.bottom_up."
    for suffix in ("weight", "norm.weight", "norm.bias"):
        out[f"{body}stem.conv1.{suffix}"] = sd[f"{body}stem.conv1.{suffix}"]
    for stage, count in R50_BLOCKS.items():
        for i in range(count):
            for ours, theirs in (("branch2a", "conv1"), ("branch2b", "conv2"), ("branch2c", "conv3"),
                                 ("branch1", "shortcut")):
                if ours == "branch1" and i > 0:
                    continue
                for suffix in ("weight", "norm.weight", "norm.bias"):
                    out[f"{body}res{stage}.{i}.{theirs}.{suffix}"] = sd[f"{body}res{stage}.{i}.{ours}.{suffix}"]
    names = {f"backbone.fpn_lateral{s}": f"backbone.lateral_convs.res{s}" for s in R50_BLOCKS}
    names.update({f"backbone.fpn_output{s}": f"backbone.output_convs.res{s}" for s in R50_BLOCKS})
    names.update({
        "proposal_generator.rpn_head.conv": "rpn.head.conv",
        "proposal_generator.rpn_head.objectness_logits": "rpn.head.cls_logits",
        "proposal_generator.rpn_head.anchor_deltas": "rpn.head.bbox_pred",
        "roi_heads.box_head.fc1": "roi_heads.box_head.fc6", "roi_heads.box_head.fc2": "roi_heads.box_head.fc7",
    })
    if "mask_heads.head.upsample.weight" in sd:
        names.update({f"roi_heads.mask_head.mask_fcn{n}": f"mask_heads.head.convs.{2 * (n - 1)}"
                      for n in range(1, 5)})
        names["roi_heads.mask_head.deconv"] = "mask_heads.head.upsample"
    if "keypoint_heads.predictor.score.weight" in sd:
        names.update({f"roi_heads.keypoint_head.conv_fcn{n}": f"keypoint_heads.head.convs.{2 * (n - 1)}"
                      for n in range(1, 9)})
        names["roi_heads.keypoint_head.score_lowres"] = "keypoint_heads.predictor.score"
    for theirs, ours in names.items():
        out[theirs + ".weight"], out[theirs + ".bias"] = sd[ours + ".weight"], sd[ours + ".bias"]
    for suffix in ("weight", "bias"):
        cls = sd[f"roi_heads.predictor.cls_score.{suffix}"]
        out[f"roi_heads.box_predictor.cls_score.{suffix}"] = torch.cat([cls[1:], cls[:1]])
        out[f"roi_heads.box_predictor.bbox_pred.{suffix}"] = sd[f"roi_heads.predictor.bbox_pred.{suffix}"][4:]
        if f"mask_heads.predictor.logits.{suffix}" in sd:
            out[f"roi_heads.mask_head.predictor.{suffix}"] = sd[f"mask_heads.predictor.logits.{suffix}"][1:]
    out["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    out["pixel_std"] = torch.ones(3, 1, 1)
    return out


@pytest.mark.parametrize("suffix", ["pkl", "pth"])
def test_detectron2_checkpoint_loads_with_background_moved_first(mask_r50_fpn, tmp_path, suffix):
    cfg, reference = mask_r50_fpn
    with torch.no_grad():  # detectron2 has no background rows; they come back as zeros
        reference.roi_heads.predictor.bbox_pred.weight[:4] = 0
        reference.roi_heads.predictor.bbox_pred.bias[:4] = 0
        reference.mask_heads.predictor.logits.weight[:1] = 0
        reference.mask_heads.predictor.logits.bias[:1] = 0
    state = detectron2_state(reference)
    if suffix == "pkl":  # detectron2's model zoo: numpy arrays under "model"
        path = _write_pickle(tmp_path / "model_final_f10217.pkl", {
            "model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"})
    else:
        path = tmp_path / "model_final.pth"
        torch.save({"model": state, "iteration": 90000}, path)
    assert read_weights_file(path).format == DETECTRON2
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == []
    assert report.ignored == ["pixel_mean", "pixel_std"]
    _assert_same_state(model, reference)


def test_inference_warns_when_the_box_convention_differs_from_the_weights(
        mask_r50_fpn, tmp_path, caplog):
    cfg, reference = mask_r50_fpn  # a Detectron config: BBOX_LEGACY_PLUS_ONE True by default
    path = tmp_path / "model_final.pth"
    torch.save({"model": detectron2_state(reference)}, path)
    with caplog.at_level(logging.WARNING):
        load_model_for_inference(cfg, str(path), torch.device("cpu"))
    assert "detectron2 weights were trained with MODEL.BBOX_LEGACY_PLUS_ONE False" in caplog.text
    plain = cfg.clone()
    plain.MODEL.BBOX_LEGACY_PLUS_ONE = False
    assert not warn_on_box_convention_mismatch(plain, DETECTRON2)
    assert warn_on_box_convention_mismatch(plain, DETECTRON)
    assert not warn_on_box_convention_mismatch(cfg, DETECTRON)
    assert not warn_on_box_convention_mismatch(cfg, OURS)  # our checkpoints carry no convention


# ---- torchvision ----------------------------------------------------------------------------
def _randomize_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _resnet_stages(net, x):
    """torchvision ResNet: the outputs of layer1..layer4 (our res2..res5)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outputs = {}
    for index in range(1, 5):
        x = getattr(net, f"layer{index}")(x)
        outputs[f"res{index + 1}"] = x
    return outputs


@pytest.mark.parametrize("arch,overrides", [
    ("resnet50", []),
    ("resnext50_32x4d", ["RESNETS.NUM_GROUPS", "32", "RESNETS.WIDTH_PER_GROUP", "4"]),
])
def test_torchvision_imagenet_backbone_matches_torchvision_forward(reference_dir, tmp_path, arch, overrides):
    # Reference: torchvision's own ResNet / ResNeXt forward (BatchNorm in eval mode) on the
    # same input; ours runs the folded frozen BN. STRIDE_1X1 False is torchvision's layout.
    torch.manual_seed(0)
    net = _randomize_batchnorm(getattr(torchvision.models, arch)())
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    assert read_weights_file(path).format == TORCHVISION_IMAGENET
    cfg = _config(reference_dir, "e2e_faster_rcnn_R-50-FPN_1x.yaml", "MODEL.NUM_CLASSES", "3",
                  "RESNETS.STRIDE_1X1", "False", *overrides)
    model = build_model(cfg).eval()
    report = load_weights(model, path, for_training=True)
    assert report.unused == ["fc.bias", "fc.weight"] and report.mis_shaped == []
    assert all(not k.startswith("backbone.bottom_up.") for k in report.missing)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        theirs = _resnet_stages(net, x)
    for stage in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(ours[stage], theirs[stage], rtol=1e-4, atol=1e-4 * theirs[stage].abs().max().item())


def test_torchvision_imagenet_res5_goes_to_the_c4_box_head(reference_dir, tmp_path):
    torch.manual_seed(0)
    net = _randomize_batchnorm(torchvision.models.resnet50())
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)
    cfg = _config(reference_dir, "e2e_faster_rcnn_R-50-C4_1x.yaml", "MODEL.NUM_CLASSES", "3",
                  "RESNETS.STRIDE_1X1", "False")
    model = build_model(cfg).eval()
    load_weights(model, path, for_training=True)
    x = torch.randn(2, 1024, 14, 14, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.roi_heads.box_head.res5(x), net.layer4(x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("legacy_names", [False, True])
def test_torchvision_maskrcnn_state_dict_loads_completely(tmp_path, repo_root, legacy_names):
    # torchvision >= 0.13 names Conv2dNormActivation blocks (rpn.head.conv.0.0, inner_blocks.0.0,
    # mask_head.0.0); its published COCO weights still use the older names (rpn.head.conv,
    # inner_blocks.0, mask_head.mask_fcn1). Both load.
    torch.manual_seed(0)
    net = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = net.state_dict()
    if legacy_names:
        renamed = {}
        for key, value in state.items():
            key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
            for blocks in ("inner_blocks", "layer_blocks"):
                for i in range(4):
                    key = key.replace(f"fpn.{blocks}.{i}.0.", f"fpn.{blocks}.{i}.")
            for i in range(4):
                key = key.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
            renamed[key] = value
        state = renamed
    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    assert read_weights_file(path).format == TORCHVISION
    cfg = load_config(repo_root / "configs/torchvision/maskrcnn_resnet50_fpn.yaml")
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    assert torch.equal(model.rpn.head.conv.weight, net.rpn.head.conv[0][0].weight)
    assert torch.equal(model.mask_heads.head.convs[6].weight, net.roi_heads.mask_head[3][0].weight)
    assert torch.equal(model.backbone.lateral_convs["res2"].weight, net.backbone.fpn.inner_blocks[0][0].weight)


def test_torchvision_keypointrcnn_state_dict_loads_completely(tmp_path, repo_root):
    torch.manual_seed(0)
    net = torchvision.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "keypointrcnn_resnet50_fpn_coco.pth"
    torch.save(net.state_dict(), path)
    model = build_model(load_config(repo_root / "configs/torchvision/keypointrcnn_resnet50_fpn.yaml"))
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    assert torch.equal(model.keypoint_heads.head.convs[14].weight, net.roi_heads.keypoint_head[14].weight)
    assert torch.equal(model.keypoint_heads.predictor.score.weight,
                       net.roi_heads.keypoint_predictor.kps_score_lowres.weight)


def test_torchvision_retinanet_state_dict_loads_without_its_background_logits(tmp_path, repo_root):
    # torchvision scores 91 classes per anchor, class 0 (background) never trained; ours the 90
    # others, in torchvision's anchor order (RETINANET.RATIO_MAJOR_ANCHORS).
    torch.manual_seed(0)
    net = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "retinanet_resnet50_fpn_coco.pth"
    torch.save(net.state_dict(), path)
    model = build_model(load_config(repo_root / "configs/torchvision/retinanet_resnet50_fpn.yaml"))
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    theirs = net.head.classification_head.cls_logits.weight.view(9, 91, 256, 3, 3)
    assert torch.equal(model.head.cls_pred.weight.view(9, 90, 256, 3, 3), theirs[:, 1:])
    assert torch.equal(model.backbone.extra_convs["p7"].weight, net.backbone.fpn.extra_blocks.p7.weight)
    assert torch.equal(model.head.box_tower[3].weight, net.head.regression_head.conv[3][0].weight)


def test_batchnorm_weights_do_not_load_into_group_norm(tmp_path, repo_root):
    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    cfg = load_config(repo_root / "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml")  # GN
    report = load_weights(build_model(cfg), path, for_training=True)
    assert "backbone.bottom_up.stem.conv1.norm.weight" in report.missing
    assert "bn1.running_var" in report.unused
    assert "backbone.bottom_up.stem.conv1.weight" in report.loaded


# ---- our own checkpoints, errors ------------------------------------------------------------
def test_own_checkpoint_is_strict_at_inference(mask_r50_fpn, tmp_path):
    cfg, reference = mask_r50_fpn
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, reference, iteration=3)
    model = build_model(cfg)
    assert load_weights(model, path).format == OURS
    _assert_same_state(model, reference)
    state = torch.load(path, weights_only=False)
    state["model"]["roi_heads.extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"taken by no layer.*roi_heads\.extra\.weight"):
        load_weights(build_model(cfg), path)


def test_unreadable_and_unknown_files_name_the_file(tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(3)}})[:20])
    with pytest.raises(CheckpointError, match="truncated.pkl' cannot be read"):
        read_weights_file(truncated)
    unknown = _write_pickle(tmp_path / "unknown.pkl", {"something": 1, "else": [2]})
    with pytest.raises(CheckpointError, match=r"unknown.pkl' is of no format.*'something'"):
        read_weights_file(unknown)
    with pytest.raises(CheckpointError, match="missing.pth' does not exist"):
        load_weights(torch.nn.Linear(1, 1), tmp_path / "missing.pth")


# ---- URLs ----------------------------------------------------------------------------------
@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_weights_are_downloaded_once_into_the_cache(mask_r50_fpn, http_server, tmp_path):
    cfg, reference = mask_r50_fpn
    root, base = http_server
    (root / "zoo").mkdir()
    save_checkpoint(root / "zoo" / "model_final.pth", reference)
    url = f"{base}/zoo/model_final.pth"
    cache = tmp_path / "cache"
    model = build_model(cfg)
    load_weights(model, url, cache_dir=cache)
    cached = cache_path_for(url, cache)
    assert cached.is_file() and cached.parent.parent.name == f"127.0.0.1:{base.rsplit(':', 1)[1]}"
    _assert_same_state(model, reference)
    (root / "zoo" / "model_final.pth").unlink()  # served no more: the cache answers
    assert cached_path(url, cache) == cached


def test_offline_url_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ImageNetPretrained/MSRA/R-50.pkl"
    expected = tmp_path / f"127.0.0.1:{port}" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    with pytest.raises(CheckpointError, match=f"cannot download '{url}'.*put it at '{expected}'"):
        load_weights(torch.nn.Linear(1, 1), url, cache_dir=tmp_path)


def test_download_with_a_wrong_hash_in_its_name_is_rejected(http_server, tmp_path):
    root, base = http_server
    (root / "resnet50-0123abcd.pth").write_bytes(b"not the file the name promises")
    with pytest.raises(DownloadError, match="SHA-256 prefix 0123abcd"):
        cached_path(f"{base}/resnet50-0123abcd.pth", tmp_path / "cache")
    assert not cache_path_for(f"{base}/resnet50-0123abcd.pth", tmp_path / "cache").exists()


def detectron2_retinanet_state(model, num_convs=4):
    """detectron2's names for an R-50-FPN RetinaNet (its RetinaNet, FPN with LastLevelP6P7 and
    RetinaNetHead), or an R-18 one (basic blocks: conv1, conv2, shortcut): with GroupNorm each
    tower layer is conv, GN, ReLU, so conv i is cls_subnet.{3i} and its norm cls_subnet.{3i + 1};
    without it conv, ReLU (cls_subnet.{2i}). FPN convs with GN have a norm and no bias."""
    sd = model.state_dict()
    out = {}
    body = "backbone.bottom_up."
    for key, value in sd.items():
        if key.startswith("backbone.bottom_up."):
            theirs = key
            for ours, name in (("branch2a", "conv1"), ("branch2b", "conv2"), ("branch2c", "conv3"),
                               ("branch1", "shortcut")):
                theirs = theirs.replace(f".{ours}.", f".{name}.")
            out[theirs] = value
    names = {f"backbone.fpn_lateral{s}": f"backbone.lateral_convs.res{s}" for s in (3, 4, 5)}
    names.update({f"backbone.fpn_output{s}": f"backbone.output_convs.res{s}" for s in (3, 4, 5)})
    names.update({"backbone.top_block.p6": "backbone.extra_convs.p6",
                  "backbone.top_block.p7": "backbone.extra_convs.p7",
                  "head.cls_score": "head.cls_pred", "head.bbox_pred": "head.box_pred"})
    with_norm = "head.cls_tower.0.norm.weight" in sd
    for i in range(num_convs):
        for theirs, ours in (("cls_subnet", "cls_tower"), ("bbox_subnet", "box_tower")):
            names[f"head.{theirs}.{(3 if with_norm else 2) * i}"] = f"head.{ours}.{i}"
            if with_norm:
                for suffix in ("weight", "bias"):
                    out[f"head.{theirs}.{3 * i + 1}.{suffix}"] = sd[f"head.{ours}.{i}.norm.{suffix}"]
    for theirs, ours in names.items():
        out[theirs + ".weight"] = sd[ours + ".weight"]
        fpn_gn = theirs.startswith("backbone.fpn_") and f"{ours}.norm.weight" in sd
        for suffix in ("norm.weight", "norm.bias") if fpn_gn else ("bias",):
            out[f"{theirs}.{suffix}"] = sd[f"{ours}.{suffix}"]
    assert not any(k.startswith(body) and (".branch" in k) for k in out)
    return out


@pytest.mark.parametrize("gn", [False, True])
def test_detectron2_retinanet_loads_every_tensor(reference_dir, tmp_path, gn):
    # detectron2's GN towers keep their conv bias (RETINANET.TOWER_CONV_BIAS); 6 classes as in
    # a detectron2 RetinaNet trained on shapes (no background row: sigmoid classes).
    switches = ["RETINANET.USE_GN", "True", "RETINANET.TOWER_CONV_BIAS", "True"] if gn else []
    cfg = _config(reference_dir, "retinanet_R-50-FPN_1x.yaml", *NARROW, "MODEL.NUM_CLASSES", "7",
                  *switches)
    reference = _randomized(build_model(cfg))
    assert "head.cls_tower.0.bias" in reference.state_dict()
    path = tmp_path / "model_final.pth"
    torch.save({"model": detectron2_retinanet_state(reference), "iteration": 720}, path)
    assert read_weights_file(path).format == DETECTRON2
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    _assert_same_state(model, reference)


def test_gn_tower_without_its_conv_bias_leaves_detectron2_biases_unused(reference_dir, tmp_path,
                                                                        caplog):
    gn = [*NARROW, "MODEL.NUM_CLASSES", "7", "RETINANET.USE_GN", "True"]
    with_bias = _config(reference_dir, "retinanet_R-50-FPN_1x.yaml", *gn,
                        "RETINANET.TOWER_CONV_BIAS", "True")
    path = tmp_path / "model_final.pth"
    torch.save({"model": detectron2_retinanet_state(_randomized(build_model(with_bias)))}, path)
    without = _config(reference_dir, "retinanet_R-50-FPN_1x.yaml", *gn)
    report = load_weights(build_model(without), path, for_training=True)
    assert report.missing == []
    assert report.unused == sorted(f"head.{tower}.{3 * i}.bias" for tower in ("bbox_subnet", "cls_subnet")
                                   for i in range(4))
    assert "set RETINANET.TOWER_CONV_BIAS True" in caplog.text


def detectron2_c4_state(model):
    """detectron2's names for an R-50-C4 Faster R-CNN (ResNet under backbone., res5 under
    roi_heads.res5 in its Res5ROIHeads, StandardRPNHead on res4); background last, as above."""
    blocks = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "shortcut"}
    out = {}
    for key, value in model.state_dict().items():
        theirs = key.replace("roi_heads.box_head.res5.", "roi_heads.res5.")
        for ours, name in blocks.items():
            theirs = theirs.replace(f".{ours}.", f".{name}.")
        theirs = theirs.replace("rpn.head.conv.", "proposal_generator.rpn_head.conv.")
        theirs = theirs.replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        theirs = theirs.replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        if key.startswith("roi_heads.predictor.cls_score."):
            theirs, value = key.replace("roi_heads.predictor.", "roi_heads.box_predictor."), torch.cat(
                [value[1:], value[:1]])
        elif key.startswith("roi_heads.predictor.bbox_pred."):
            theirs, value = key.replace("roi_heads.predictor.", "roi_heads.box_predictor."), value[4:]
        out[theirs] = value
    return out


@pytest.mark.parametrize("config,state", [
    ("configs/detectron2/mask_rcnn_R_50_FPN_1x.yaml", detectron2_state),
    ("configs/detectron2/mask_rcnn_R_50_FPN_noaug_1x.yaml", detectron2_state),
    ("configs/detectron2/keypoint_rcnn_R_50_FPN_1x.yaml", detectron2_state),
    ("configs/detectron2/faster_rcnn_R_50_C4_1x.yaml", detectron2_c4_state),
    ("configs/detectron2/retinanet_R_50_FPN_1x.yaml", detectron2_retinanet_state),
    ("configs/detectron2/retinanet_R_18_GN_FPN_shapes.yaml", detectron2_retinanet_state),
])
def test_detectron2_configs_take_detectron2_checkpoints_whole(repo_root, tmp_path, config, state):
    """The configs/detectron2 family builds the network detectron2's checkpoints describe:
    every tensor of a detectron2-named state dict lands, none is left over."""
    classes = "2" if "keypoint" in config else "5"
    narrow = NARROW_BASIC_BLOCKS if "R_18" in config else NARROW
    cfg = load_config(repo_root / config, ["MODEL.BODY_PRECISION", "float32", *narrow,
                                           "MODEL.NUM_CLASSES", classes, "TRAIN.WEIGHTS", ""])
    reference = _randomized(build_model(cfg))
    with torch.no_grad():  # detectron2 has no background rows; they come back as zeros
        if cfg.MODEL.TYPE == "generalized_rcnn":
            reference.roi_heads.predictor.bbox_pred.weight[:4] = 0
            reference.roi_heads.predictor.bbox_pred.bias[:4] = 0
        if cfg.MODEL.MASK_ON:
            reference.mask_heads.predictor.logits.weight[:1] = 0
            reference.mask_heads.predictor.logits.bias[:1] = 0
    path = tmp_path / "model_final.pth"
    torch.save({"model": state(reference)}, path)
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.missing == [] and report.unused == [] and report.mis_shaped == []
    _assert_same_state(model, reference)


FOREIGN_CONVENTION_CONFIGS = sorted(
    str(path.relative_to(REPO_ROOT)) for family in ("detectron2", "torchvision")
    for path in (REPO_ROOT / "configs" / family).glob("*.yaml"))


@pytest.mark.parametrize("config", FOREIGN_CONVENTION_CONFIGS)
def test_foreign_convention_configs_compute_in_float32_on_any_cpu(repo_root, monkeypatch, config):
    """configs/detectron2 and configs/torchvision reproduce what those frameworks compute, in
    float32. 'auto' would pick bfloat16 on a CPU with native bf16 (AMX, AVX512-BF16), and a
    detectron2 RetinaNet's detections then moved: 2% of them by more than a pixel."""
    monkeypatch.setattr(precision, "native_cpu_bfloat16", lambda: True)
    assert precision.body_autocast_dtype("auto", "cpu") == torch.bfloat16
    cfg = load_config(repo_root / config)
    assert precision.body_autocast_dtype(cfg.MODEL.BODY_PRECISION, "cpu") is None
    assert precision.body_autocast_dtype(cfg.MODEL.HEAD_PRECISION, "cpu") is None
