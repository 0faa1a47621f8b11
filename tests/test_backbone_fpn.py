"""FPN on ResNet bodies.

Reference: torchvision.ops.FeaturePyramidNetwork with LastLevelMaxPool (P6 = max-pool k=1 s=2 of
P5, Detectron's RPN / R-CNN P6) and with LastLevelP6P7(2048, 256) (P6 = conv 3x3/2 on C5, P7 =
conv on ReLU(P6), Detectron's RetinaNet levels), given the same weights and body features.
"""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.fpn import FPN
from detectron_lib.modeling.backbone.layers import detectron_blob_names
from detectron_lib.modeling.backbone.norms import NormSpec
from detectron_lib.modeling.backbone.resnet import RESNET_BLOCK_COUNTS, ResNetBody

R50_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
R50_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def r50_body(min_level=2, **kwargs):
    stages = tuple(f"res{level}" for level in range(min_level, 6))
    return ResNetBody(RESNET_BLOCK_COUNTS[50], out_features=stages, **kwargs)


def random_body_features(stages, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(1, R50_CHANNELS[name], size // R50_STRIDES[name],
                           size // R50_STRIDES[name], generator=generator))
        for name in stages
    )


def copy_torchvision_fpn_into_ours(tv_fpn, ours, stages):
    """torchvision inner_blocks[i] / layer_blocks[i] (finest first) -> our lateral / output
    convs; also gives torchvision's zero biases random values so that they count."""
    with torch.no_grad():
        for index, name in enumerate(stages):
            for tv_block, our_conv in ((tv_fpn.inner_blocks[index], ours.lateral_convs[name]),
                                       (tv_fpn.layer_blocks[index], ours.output_convs[name])):
                tv_conv = tv_block[0]
                tv_conv.bias.normal_(0.0, 0.1)
                our_conv.weight.copy_(tv_conv.weight)
                our_conv.bias.copy_(tv_conv.bias)
        if isinstance(tv_fpn.extra_blocks, LastLevelP6P7):
            for name in ("p6", "p7"):
                tv_conv = getattr(tv_fpn.extra_blocks, name)
                tv_conv.bias.normal_(0.0, 0.1)
                ours.extra_convs[name].weight.copy_(tv_conv.weight)
                ours.extra_convs[name].bias.copy_(tv_conv.bias)


def test_p2_to_p6_match_torchvision_fpn_with_last_level_max_pool():
    """RPN / R-CNN pyramid (levels 2..6, P6 by subsampling P5)."""
    stages = ("res2", "res3", "res4", "res5")
    ours = FPN(r50_body(), min_level=2, max_level=6, out_channels=256)
    torch.manual_seed(0)
    tv_fpn = FeaturePyramidNetwork([R50_CHANNELS[s] for s in stages], 256,
                                   extra_blocks=LastLevelMaxPool())
    copy_torchvision_fpn_into_ours(tv_fpn, ours, stages)
    features = random_body_features(stages)
    with torch.no_grad():
        pyramid = ours.pyramid(features)
        expected = list(tv_fpn(features).values())  # res2..res5 then "pool"
    assert list(pyramid) == ["p2", "p3", "p4", "p5", "p6"]
    for ours_level, tv_level in zip(pyramid.values(), expected, strict=True):
        torch.testing.assert_close(ours_level, tv_level, rtol=1e-5, atol=1e-5)


def test_p3_to_p7_match_torchvision_fpn_with_p6p7_on_c5():
    """RetinaNet pyramid (levels 3..7, EXTRA_CONV_LEVELS: P6 from C5, P7 from ReLU(P6))."""
    stages = ("res3", "res4", "res5")
    ours = FPN(r50_body(min_level=3), min_level=3, max_level=7, extra_conv_levels=True)
    torch.manual_seed(0)
    tv_fpn = FeaturePyramidNetwork([R50_CHANNELS[s] for s in stages], 256,
                                   extra_blocks=LastLevelP6P7(2048, 256))
    copy_torchvision_fpn_into_ours(tv_fpn, ours, stages)
    features = random_body_features(stages, size=128)
    with torch.no_grad():
        pyramid = ours.pyramid(features)
        expected = list(tv_fpn(features).values())  # res3..res5, p6, p7
    assert list(pyramid) == ["p3", "p4", "p5", "p6", "p7"]
    for ours_level, tv_level in zip(pyramid.values(), expected, strict=True):
        torch.testing.assert_close(ours_level, tv_level, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("min_level, max_level, extra, expected_strides", [
    (2, 6, False, {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),
    (2, 5, False, {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),
    (3, 7, True, {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}),
])
def test_fpn_on_image_strides_and_channels(min_level, max_level, extra, expected_strides):
    """End to end from a 1x3x128x128 image: declared strides / channels match the tensors."""
    body = ResNetBody(RESNET_BLOCK_COUNTS[18], block_type="basic",
                      out_features=tuple(f"res{k}" for k in range(min_level, 6)))
    fpn = FPN(body, min_level=min_level, max_level=max_level, extra_conv_levels=extra)
    assert fpn.strides == expected_strides
    assert fpn.out_channels == {name: 256 for name in expected_strides}
    with torch.no_grad():
        pyramid = fpn(torch.randn(1, 3, 128, 128))
    assert list(pyramid) == list(expected_strides)
    for name, tensor in pyramid.items():
        side = 128 // expected_strides[name]
        assert tensor.shape == (1, 256, side, side), name


def test_zero_init_lateral_zeroes_only_the_laterals():
    """FPN.ZERO_INIT_LATERAL: lateral 1x1 convs of res2..res4 start at 0; res5's does not."""
    fpn = FPN(r50_body(), zero_init_lateral=True)
    for name in ("res2", "res3", "res4"):
        assert torch.count_nonzero(fpn.lateral_convs[name].weight) == 0
    assert torch.count_nonzero(fpn.lateral_convs["res5"].weight) > 0


def test_xavier_fill_and_zero_bias_of_fpn_convs():
    """Detectron fills FPN convs with XavierFill (|w| <= sqrt(3 / fan_in)) and zero biases."""
    fpn = FPN(r50_body())
    conv = fpn.output_convs["res3"]
    bound = (3.0 / (256 * 3 * 3)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0


def test_fpn_use_gn_places_group_norm_as_detectron():
    """FPN.USE_GN: GN after every lateral and 3x3 FPN conv (no conv bias), none on P6/P7."""
    gn = NormSpec("GN")
    fpn = FPN(r50_body(min_level=3, norm=gn, freeze_at=0), min_level=3, max_level=7,
              extra_conv_levels=True, norm=gn)
    for convs in (fpn.lateral_convs, fpn.output_convs):
        for conv in convs.values():
            assert isinstance(conv.norm, nn.GroupNorm) and conv.bias is None
    for conv in fpn.extra_convs.values():
        assert conv.norm is None and conv.bias is not None
    fpn_blobs = {key: blob for key, blob in detectron_blob_names(fpn).items()
                 if not key.startswith("bottom_up")}
    assert fpn_blobs["lateral_convs.res5.norm.weight"] == "fpn_inner_res5_2_sum_gn_s"
    assert fpn_blobs["lateral_convs.res4.norm.bias"] == "fpn_inner_res4_5_sum_lateral_gn_b"
    assert fpn_blobs["output_convs.res3.norm.weight"] == "fpn_res3_3_sum_gn_s"
    assert fpn_blobs["extra_convs.p7.bias"] == "fpn_7_b"
    assert len(fpn_blobs) == 3 * 3 + 3 * 3 + 2 * 2  # (w, gn_s, gn_b) x 6 convs + (w, b) x 2
    with torch.no_grad():
        assert fpn(torch.randn(1, 3, 128, 128))["p7"].shape == (1, 256, 1, 1)


def test_detectron_blob_names_of_fpn_without_gn():
    names = detectron_blob_names(FPN(r50_body()))
    assert names["lateral_convs.res5.weight"] == "fpn_inner_res5_2_sum_w"
    assert names["lateral_convs.res2.bias"] == "fpn_inner_res2_2_sum_lateral_b"
    assert names["output_convs.res4.weight"] == "fpn_res4_5_sum_w"
    assert names["bottom_up.res3.3.branch2c.norm.weight"] == "res3_3_branch2c_bn_s"


def test_levels_above_p6_need_extra_conv_levels():
    with pytest.raises(ConfigError, match="EXTRA_CONV_LEVELS"):
        FPN(r50_body(), min_level=2, max_level=7, extra_conv_levels=False)
