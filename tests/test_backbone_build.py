"""Config -> backbone builders under Detectron's names.

References: Detectron's original configs (shared/reference/detectron_configs) and the
structure its ResNet.py / FPN.py / VGG16.py build for them: feature names, strides and
channels written out by hand, RetinaNet's P3-P7 from FPN.RPN_MIN/MAX_LEVEL, GN placement for
the GN baselines, ResNeXt widths from NUM_GROUPS x WIDTH_PER_GROUP, FREEZE_AT 0 for scratch.
"""
import pytest
import torch
from torch import nn

from detectron_lib.config import get_default_cfg, load_config
from detectron_lib.config.names import CONV_BODY, RESNET_STEM_FUNC, RESNET_TRANS_FUNC
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone import build_backbone, build_roi_box_head
from detectron_lib.modeling.backbone.fpn import FPN
from detectron_lib.modeling.backbone.norms import FrozenBatchNorm2d
from detectron_lib.modeling.backbone.resnet import ResNetBody, ResNetRoIHead
from detectron_lib.modeling.backbone.vgg import VGG16Body

FPN_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
RETINANET_STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def detectron_config(reference_dir, name):
    return load_config(reference_dir / "detectron_configs" / name)


def config_with(**flat):
    """Default config with KEY=value overrides given as KEY__SUB=value."""
    cfg = get_default_cfg()
    for key, value in flat.items():
        node = cfg
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("config_name, body_type, strides", [
    ("12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml", FPN, FPN_STRIDES),
    ("12_2017_baselines/retinanet_R-50-FPN_1x.yaml", FPN, RETINANET_STRIDES),
    ("12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml", ResNetBody, {"res4": 16}),
])
def test_detectron_configs_build_the_expected_bodies(reference_dir, config_name, body_type,
                                                     strides):
    backbone = build_backbone(detectron_config(reference_dir, config_name))
    assert isinstance(backbone, body_type)
    assert backbone.strides == strides


def test_retinanet_p6_is_a_conv_on_c5(reference_dir):
    """RetinaNet (EXTRA_CONV_LEVELS): P6 conv takes res5's 2048 channels, stride 2."""
    fpn = build_backbone(detectron_config(reference_dir,
                                          "12_2017_baselines/retinanet_R-50-FPN_1x.yaml"))
    assert fpn.extra_convs["p6"].in_channels == 2048
    assert fpn.extra_convs["p7"].in_channels == 256
    assert list(fpn.lateral_convs) == ["res5", "res4", "res3"]


def test_scratch_gn_baseline_uses_gn_everywhere_and_freezes_nothing(reference_dir):
    fpn = build_backbone(detectron_config(
        reference_dir, "04_2018_gn_baselines/scratch_e2e_mask_rcnn_R-50-FPN_3x_gn.yaml"))
    body = fpn.bottom_up
    assert isinstance(body.stem.conv1.norm, nn.GroupNorm)
    assert isinstance(body.res3[0].branch1.norm, nn.GroupNorm)
    assert isinstance(body.res4[2].branch2b.norm, nn.GroupNorm)
    assert isinstance(fpn.output_convs["res2"].norm, nn.GroupNorm)
    assert all(p.requires_grad for p in fpn.parameters())  # TRAIN.FREEZE_AT: 0
    assert body.res2[0].branch2a.stride == (1, 1) and body.res3[0].branch2b.stride == (2, 2)


def test_resnext_config_widths(reference_dir):
    """X-101-64x4d: res2 bottleneck 64 x 4 = 256 channels in 64 groups; 23 res4 blocks."""
    fpn = build_backbone(detectron_config(
        reference_dir, "12_2017_baselines/e2e_mask_rcnn_X-101-64x4d-FPN_1x.yaml"))
    body = fpn.bottom_up
    assert body.res2[0].branch2b.out_channels == 256 and body.res2[0].branch2b.groups == 64
    assert len(body.res4) == 23
    assert isinstance(body.res2[0].branch2a.norm, FrozenBatchNorm2d)
    assert not body.res2[0].branch2a.weight.requires_grad  # FREEZE_AT 2
    assert body.res3[0].branch2a.weight.requires_grad


def test_c4_roi_head_from_config(reference_dir):
    """R-50-C4: res5 head on 14x14 RoIs, first stride 14 // 7 = 2, 3 blocks, 2048-d output."""
    cfg = detectron_config(reference_dir, "12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml")
    head = build_roi_box_head(cfg, in_channels=1024)
    assert isinstance(head, ResNetRoIHead) and len(head.res5) == 3
    with torch.no_grad():
        assert head(torch.randn(2, 1024, 14, 14)).shape == (2, head.out_dim) == (2, 2048)


def test_resnet18_cpu_baselines():
    """Our CPU-sized bodies: ResNet-18 C4 (res4, 256 channels) and R-18-FPN; basic blocks."""
    c4 = build_backbone(config_with(MODEL__CONV_BODY="ResNet.add_ResNet18_conv4_body",
                                    RESNETS__TRANS_FUNC="basic_transformation"))
    assert c4.out_channels == {"res4": 256} and c4.strides == {"res4": 16}
    cfg = config_with(MODEL__CONV_BODY="FPN.add_fpn_ResNet18_conv5_body",
                      RESNETS__TRANS_FUNC="basic_gn_transformation",
                      RESNETS__STEM_FUNC="basic_gn_stem",
                      RESNETS__SHORTCUT_FUNC="basic_gn_shortcut",
                      FPN__MULTILEVEL_RPN=True, FPN__MULTILEVEL_ROIS=True, FPN__USE_GN=True,
                      TRAIN__FREEZE_AT=0)
    fpn = build_backbone(cfg)
    assert fpn.strides == FPN_STRIDES
    with torch.no_grad():
        pyramid = fpn(torch.randn(1, 3, 64, 64))
    assert {name: t.shape[-1] for name, t in pyramid.items()} == {
        "p2": 16, "p3": 8, "p4": 4, "p5": 2, "p6": 1}
    head = build_roi_box_head(
        config_with(MODEL__CONV_BODY="ResNet.add_ResNet18_conv4_body",
                    RESNETS__TRANS_FUNC="basic_trainable_bn_transformation",
                    FAST_RCNN__ROI_BOX_HEAD="ResNet.add_ResNet_roi_conv5_head"),
        in_channels=256)
    assert len(head.res5) == 2 and head.out_dim == 512  # R-18's res5 has 2 blocks
    assert isinstance(head.res5[0].branch2a.norm, nn.BatchNorm2d)


def test_vgg16_from_config():
    cfg = config_with(MODEL__CONV_BODY="VGG16.add_VGG16_conv5_body",
                      FAST_RCNN__ROI_BOX_HEAD="VGG16.add_VGG16_roi_fc_head")
    assert isinstance(build_backbone(cfg), VGG16Body)
    assert build_roi_box_head(cfg, in_channels=512).out_dim == 4096


def test_bottleneck_trans_func_on_resnet18_is_a_config_error():
    cfg = config_with(MODEL__CONV_BODY="ResNet.add_ResNet18_conv4_body")  # default bottleneck
    with pytest.raises(ConfigError, match="RESNETS.TRANS_FUNC 'bottleneck_transformation'"):
        build_backbone(cfg)


def test_detectron_function_names_are_registered():
    for name in ("FPN.add_fpn_ResNet50_conv5_body", "FPN.add_fpn_ResNet101_conv5_body",
                 "FPN.add_fpn_ResNet152_conv5_body", "ResNet.add_ResNet50_conv4_body",
                 "ResNet.add_ResNet101_conv4_body", "ResNet.add_ResNet50_conv5_body",
                 "VGG16.add_VGG16_conv5_body", "FPN.add_fpn_ResNet18_conv5_body",
                 "FPN.add_fpn_ResNet34_conv5_body", "ResNet.add_ResNet18_conv4_body"):
        assert name in CONV_BODY, name
    assert "ResNet.bottleneck_gn_transformation" in RESNET_TRANS_FUNC
    assert "basic_transformation" in RESNET_TRANS_FUNC
    assert "basic_gn_stem" in RESNET_STEM_FUNC


def test_p2only_body_returns_the_finest_level():
    fpn = build_backbone(config_with(MODEL__CONV_BODY="FPN.add_fpn_ResNet50_conv5_P2only_body",
                                     FPN__MULTILEVEL_RPN=True, FPN__MULTILEVEL_ROIS=True))
    assert fpn.strides == {"p2": 4}
    with torch.no_grad():
        assert list(fpn(torch.randn(1, 3, 64, 64))) == ["p2"]
