"""ResNet / ResNeXt bodies and the res5 RoI head.

Reference: torchvision.models.resnet50 / resnet18 / resnext50_32x4d / resnet101 (randomly
initialized, seeded, with randomized BN statistics) loaded into our bodies through the name
mapping below; their layer1..layer4 outputs must equal our res2..res5 outputs. torchvision puts
the stride on the 3x3 conv, i.e. Detectron's RESNETS.STRIDE_1X1 False.
"""
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.layers import detectron_blob_names, max_pool_3x3_s2
from detectron_lib.modeling.backbone.norms import FrozenBatchNorm2d, NormSpec
from detectron_lib.modeling.backbone.precision import reuse_weight_casts, run_in_precision
from detectron_lib.modeling.backbone.resnet import (
    BASIC,
    RESNET_BLOCK_COUNTS,
    ResNetBody,
    ResNetRoIHead,
)

ALL_STAGES = ("res2", "res3", "res4", "res5")
_TV_LAYER_NAMES = {
    "conv1": "branch2a", "bn1": "branch2a.norm",
    "conv2": "branch2b", "bn2": "branch2b.norm",
    "conv3": "branch2c", "bn3": "branch2c.norm",
    "downsample.0": "branch1", "downsample.1": "branch1.norm",
}


def torchvision_to_ours(tv_state):
    """Rename a torchvision ResNet state dict to our ResNetBody keys (fc dropped).

    conv1 / bn1 -> stem.conv1 / stem.conv1.norm; layer<k>.<i>.<conv|bn><j> ->
    res<k+1>.<i>.branch2<a|b|c>[.norm]; layer<k>.<i>.downsample.<0|1> ->
    res<k+1>.<i>.branch1[.norm].
    """
    ours = {}
    for key, value in tv_state.items():
        if key.startswith("fc."):
            continue
        stem = re.match(r"(conv1|bn1)\.(\w+)$", key)
        if stem:
            target = "stem.conv1." if stem[1] == "conv1" else "stem.conv1.norm."
            ours[target + stem[2]] = value
            continue
        block = re.match(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(\w+)$", key)
        assert block, key
        stage, index, layer, param = block.groups()
        ours[f"res{int(stage) + 1}.{index}.{_TV_LAYER_NAMES[layer]}.{param}"] = value
    return ours


def randomize_bn_(model, generator):
    """Give every BatchNorm of ``model`` non-trivial affine parameters and statistics."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)


def torchvision_stage_outputs(tv_model, images):
    """layer1..layer4 outputs of a torchvision ResNet, named res2..res5."""
    x = tv_model.maxpool(tv_model.relu(tv_model.bn1(tv_model.conv1(images))))
    outputs = {}
    for stage, layer in zip(ALL_STAGES, (tv_model.layer1, tv_model.layer2, tv_model.layer3,
                                         tv_model.layer4)):
        x = layer(x)
        outputs[stage] = x
    return outputs


def seeded_torchvision(factory):
    torch.manual_seed(0)
    model = factory()
    randomize_bn_(model, torch.Generator().manual_seed(1))
    return model


def assert_stage_outputs_match(ours, reference):
    assert list(ours) == list(ALL_STAGES)
    for stage in ALL_STAGES:
        scale = reference[stage].abs().max().item()
        torch.testing.assert_close(ours[stage], reference[stage], rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m, s=stage: f"{s}: {m}")


@pytest.mark.parametrize(
    "factory, block_counts, block_type, num_groups, width_per_group",
    [
        (models.resnet50, RESNET_BLOCK_COUNTS[50], "bottleneck", 1, 64),
        (models.resnet18, RESNET_BLOCK_COUNTS[18], BASIC, 1, 64),
        (models.resnext50_32x4d, RESNET_BLOCK_COUNTS[50], "bottleneck", 32, 4),
    ],
    ids=["resnet50", "resnet18", "resnext50_32x4d"],
)
def test_frozen_bn_body_matches_torchvision_eval(factory, block_counts, block_type, num_groups,
                                                 width_per_group):
    """FrozenBN (AffineChannel) body loaded from torchvision BN weights == torchvision in eval."""
    tv_model = seeded_torchvision(factory).eval()
    body = ResNetBody(block_counts, block_type=block_type, num_groups=num_groups,
                      width_per_group=width_per_group, stride_in_1x1=False, norm="FrozenBN",
                      out_features=ALL_STAGES)
    body.load_state_dict(torchvision_to_ours(tv_model.state_dict()), strict=True)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_stage_outputs_match(body(images), torchvision_stage_outputs(tv_model, images))


def test_trainable_bn_body_matches_torchvision_in_train_mode():
    """Trainable BN: same batch statistics and outputs as torchvision resnet50 in train mode."""
    tv_model = seeded_torchvision(models.resnet50).train()
    body = ResNetBody(RESNET_BLOCK_COUNTS[50], stride_in_1x1=False, norm="BN", freeze_at=0,
                      out_features=ALL_STAGES).train()
    body.load_state_dict(torchvision_to_ours(tv_model.state_dict()), strict=True)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_stage_outputs_match(body(images), torchvision_stage_outputs(tv_model, images))
    torch.testing.assert_close(body.res4[5].branch2c.norm.running_mean,
                               tv_model.layer3[5].bn3.running_mean)


@pytest.mark.parametrize("depth, factory", [(50, models.resnet50), (101, models.resnet101)])
def test_parameter_count_equals_torchvision_minus_fc(depth, factory):
    """Conv5 body tensors (conv weights; frozen BN scale and shift, which are buffers) ==
    torchvision resnet<depth> parameters without the fc layer."""
    tv_count = sum(p.numel() for name, p in factory().named_parameters()
                   if not name.startswith("fc."))
    body = ResNetBody(RESNET_BLOCK_COUNTS[depth])
    assert sum(t.numel() for t in body.state_dict().values()) == tv_count
    frozen_bn = sum(t.numel() for name, t in body.named_buffers())
    assert sum(p.numel() for p in body.parameters()) == tv_count - frozen_bn > 0


def test_resnet152_and_resnext101_construct_with_detectron_widths():
    """R-152 (3-8-36-3) and X-101-64x4d build; hand-computed block and channel counts."""
    r152 = ResNetBody(RESNET_BLOCK_COUNTS[152], out_features=ALL_STAGES)
    assert [len(getattr(r152, s)) for s in ALL_STAGES] == [3, 8, 36, 3]
    x101 = ResNetBody(RESNET_BLOCK_COUNTS[101], num_groups=64, width_per_group=4)
    # res2 bottleneck width = 64 groups * 4 = 256; res5 = 256 * 8 = 2048, grouped 3x3 conv
    assert x101.res2[0].branch2b.out_channels == 256
    assert x101.res5[0].branch2b.out_channels == 2048
    assert x101.res5[0].branch2b.groups == 64
    assert x101.out_channels == {"res5": 2048}


@pytest.mark.parametrize(
    "block_counts, block_type, dilation, expected_channels, expected_strides",
    [
        ((3, 4, 6), "bottleneck", 1, {"res4": 1024}, {"res4": 16}),               # R-50-C4
        ((2, 2, 2), BASIC, 1, {"res4": 256}, {"res4": 16}),                       # R-18-C4
        ((3, 4, 6, 3), "bottleneck", 1, {"res5": 2048}, {"res5": 32}),            # R-50 conv5
        ((3, 4, 6, 3), "bottleneck", 2, {"res5": 2048}, {"res5": 16}),            # dilated res5
        ((2, 2, 2, 2), BASIC, 1, {"res5": 512}, {"res5": 32}),                    # R-18 conv5
    ],
)
def test_body_output_channels_and_strides(block_counts, block_type, dilation, expected_channels,
                                          expected_strides):
    """Declared out_channels / strides match the tensors a 1x3x64x64 image produces."""
    body = ResNetBody(block_counts, block_type=block_type, res5_dilation=dilation)
    assert body.out_channels == expected_channels
    assert body.strides == expected_strides
    with torch.no_grad():
        features = body(torch.zeros(1, 3, 64, 64))
    for name, tensor in features.items():
        assert tensor.shape == (1, expected_channels[name], 64 // expected_strides[name],
                                64 // expected_strides[name])


def test_stride_1x1_places_the_stride_as_msra():
    """STRIDE_1X1 True: stride on branch2a (MSRA); False: on branch2b (Caffe2 / torchvision)."""
    msra = ResNetBody((3, 4, 6), stride_in_1x1=True)
    torch_style = ResNetBody((3, 4, 6), stride_in_1x1=False)
    assert (msra.res3[0].branch2a.stride, msra.res3[0].branch2b.stride) == ((2, 2), (1, 1))
    assert (torch_style.res3[0].branch2a.stride, torch_style.res3[0].branch2b.stride) == (
        (1, 1), (2, 2))
    assert msra.res3[0].branch1.stride == (2, 2)
    assert msra.res2[0].branch2a.stride == (1, 1)  # res2 follows the max-pool: no stride


@pytest.mark.parametrize("freeze_at, frozen_prefixes", [
    (0, ()),
    (2, ("stem.", "res2.")),
    (4, ("stem.", "res2.", "res3.", "res4.")),
])
def test_freeze_at_freezes_exactly_stem_and_stages(freeze_at, frozen_prefixes):
    """TRAIN.FREEZE_AT=k: stem and res2..res<k> have requires_grad False, nothing else."""
    body = ResNetBody((3, 4, 6, 3), norm="BN", freeze_at=freeze_at)
    for name, param in body.named_parameters():
        assert param.requires_grad == (not name.startswith(frozen_prefixes)), name


def test_frozen_stages_keep_bn_statistics_in_train_mode():
    """With trainable BN, .train() leaves frozen stages' BN in eval mode (stats not updated)."""
    body = ResNetBody((3, 4, 6), norm="BN", freeze_at=2).train()
    assert not body.stem.conv1.norm.training
    assert not body.res2[0].branch2a.norm.training
    assert body.res3[0].branch2a.norm.training
    before = body.res2[0].branch2a.norm.running_mean.clone()
    body(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(body.res2[0].branch2a.norm.running_mean, before)


def test_freeze_at_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="TRAIN.FREEZE_AT=5"):
        ResNetBody((3, 4, 6), freeze_at=5)  # a conv4 body has no res5


def test_basic_blocks_reject_resnext_groups():
    with pytest.raises(ConfigError, match="RESNETS.NUM_GROUPS"):
        ResNetBody((2, 2, 2), block_type=BASIC, num_groups=32, width_per_group=4)


def test_group_norm_body_has_gn_where_detectron_puts_it():
    """GN stem, GN in every bottleneck conv and every shortcut (basic_gn_* functions).

    Hand count for R-50: 1 (stem) + 3 x 16 blocks + 4 shortcuts = 53 GroupNorm layers.
    """
    gn = NormSpec("GN", gn_dim_per_group=-1, gn_num_groups=32, gn_eps=1e-5)
    body = ResNetBody(RESNET_BLOCK_COUNTS[50], norm=gn, freeze_at=0)
    group_norms = [m for m in body.modules() if isinstance(m, nn.GroupNorm)]
    assert len(group_norms) == 53
    assert all(m.num_groups == 32 for m in group_norms)
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in body.modules())
    blobs = set(detectron_blob_names(body).values())
    assert {"conv1_w", "conv1_gn_s", "conv1_gn_b", "res2_0_branch1_gn_s",
            "res2_0_branch2a_gn_s", "res5_2_branch2c_gn_b"} <= blobs
    assert not any(b.endswith("_bn_s") for b in blobs)
    assert all(m.bias is None for m in body.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert body(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 2048, 2, 2)


def test_mixed_stem_shortcut_and_block_norms():
    """STEM_FUNC / SHORTCUT_FUNC choose norms independently of TRANS_FUNC."""
    body = ResNetBody((3, 4, 6), norm=NormSpec("GN"), stem_norm="FrozenBN",
                      shortcut_norm="FrozenBN")
    assert isinstance(body.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(body.res3[0].branch1.norm, FrozenBatchNorm2d)
    assert isinstance(body.res3[0].branch2a.norm, nn.GroupNorm)


def test_detectron_blob_names_of_bn_body():
    """Detectron's blob names for an R-50 conv4 body (AffineChannel stem is res_conv1_bn)."""
    names = detectron_blob_names(ResNetBody((3, 4, 6)))
    assert names["stem.conv1.weight"] == "conv1_w"
    assert names["stem.conv1.norm.weight"] == "res_conv1_bn_s"
    assert names["res2.0.branch1.norm.bias"] == "res2_0_branch1_bn_b"
    assert names["res4.5.branch2c.weight"] == "res4_5_branch2c_w"
    assert len(names) == len(ResNetBody((3, 4, 6)).state_dict())   # every tensor has a blob


@pytest.mark.parametrize("resolution, first_stride", [(14, 2), (7, 1)])
def test_roi_head_res5_then_average_pool(resolution, first_stride):
    """res5 on pooled RoIs, stride ROI_XFORM_RESOLUTION // 7, then the 7x7 map is averaged.

    Reference: torchvision resnet50's layer4 with the same weights (for stride 1 its first
    block's 3x3 conv and downsample conv are set to stride 1), followed by a mean over H, W.
    """
    tv_model = seeded_torchvision(models.resnet50).eval()
    tv_layer4 = tv_model.layer4
    tv_layer4[0].conv2.stride = (first_stride, first_stride)
    tv_layer4[0].downsample[0].stride = (first_stride, first_stride)
    head = ResNetRoIHead(in_channels=1024, first_stride=first_stride, stride_in_1x1=False)
    head.res5.load_state_dict({k[len("res5."):]: v for k, v in
                               torchvision_to_ours(tv_model.state_dict()).items()
                               if k.startswith("res5.")})
    rois = torch.randn(3, 1024, resolution, resolution, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pooled = head(rois)
        feature_map = head.res5(rois)
        expected = tv_layer4(rois).mean(dim=(2, 3))
    assert head.out_dim == 2048
    assert feature_map.shape == (3, 2048, 7, 7)
    assert pooled.shape == (3, 2048)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_basic_roi_head_channels():
    """ResNet-18 C4: res5 of basic blocks maps 256-channel RoI features to 512 channels."""
    head = ResNetRoIHead(in_channels=256, num_blocks=2, block_type=BASIC, first_stride=2)
    with torch.no_grad():
        assert head(torch.randn(2, 256, 14, 14)).shape == (2, 512)
    assert head.out_dim == 512


def test_roi_head_runs_res5_in_body_precision():
    """With MODEL.BODY_PRECISION bfloat16 the res5 convolutions run in bfloat16 (most of a C4
    model's compute), the pooled output comes back float32, close to the float32 head's."""
    torch.manual_seed(0)
    head = ResNetRoIHead(in_channels=64, num_blocks=1, block_type=BASIC, first_stride=2)
    head_bf16 = ResNetRoIHead(in_channels=64, num_blocks=1, block_type=BASIC, first_stride=2,
                              precision="bfloat16")
    head_bf16.load_state_dict(head.state_dict())
    autocast_dtypes = []
    head_bf16.res5.register_forward_pre_hook(lambda module, inputs: autocast_dtypes.append(
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
    rois = torch.randn(3, 64, 14, 14)
    with torch.no_grad():
        expected, pooled = head(rois), head_bf16(rois)
    assert autocast_dtypes == [torch.bfloat16]
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, rtol=0.05, atol=0.05 * expected.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("height,width", [(16, 24), (15, 9), (1, 2)])
def test_stem_max_pool_is_max_pool2d(dtype, height, width):
    """The stem's 3x3/2 max-pool (the compiled kernel on the CPU) equals F.max_pool2d bit for
    bit (odd, even and tiny sizes, negative values at the padded border), gradients too."""
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    assert torch.equal(max_pool_3x3_s2(x), expected)
    x.requires_grad_(True)
    max_pool_3x3_s2(x).sum().backward()
    expected_grad = torch.autograd.grad(F.max_pool2d(x, 3, 2, 1).sum(), x)[0]
    assert torch.equal(x.grad, expected_grad)


def test_reuse_weight_casts_casts_each_weight_once_with_the_same_results():
    """Inside reuse_weight_casts, a bfloat16 layer's weight and bias are cast on the first
    forward pass only (profiled: aten::_to_copy calls); the outputs do not change."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)

    def forward_and_casts():
        with torch.profiler.profile() as prof:
            out = run_in_precision("bfloat16", layer, x)
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return out, casts

    with torch.no_grad():
        plain, plain_casts = forward_and_casts()
        with reuse_weight_casts("cpu"):
            first, first_casts = forward_and_casts()
            second, second_casts = forward_and_casts()
    assert first_casts == plain_casts
    assert second_casts == plain_casts - 2          # weight and bias come from the cache
    assert torch.equal(first, plain) and torch.equal(second, plain)
