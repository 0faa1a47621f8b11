"""VGG16 conv5 body and fc6/fc7 RoI head.

Reference: torchvision's VGG16 feature extractor (torchvision.models.vgg.make_layers(cfgs["D"]))
without its last max-pool (Detectron has no pool5), given the same weights; for the head, the
fc6 -> ReLU -> fc7 -> ReLU composition written out with torch.nn.functional.
"""
import pytest
import torch
from torch.nn import functional as F
from torchvision.models import vgg

from detectron_lib.config import load_config
from detectron_lib.modeling.backbone.build import build_backbone
from detectron_lib.modeling.backbone.layers import detectron_blob_names
from detectron_lib.modeling.backbone.norms import GROUP_NORM, NormSpec
from detectron_lib.modeling.backbone.vgg import VGG16Body, VGG16RoIHead


def test_vgg16_body_matches_torchvision_features_without_pool5():
    torch.manual_seed(0)
    tv_features = vgg.make_layers(vgg.cfgs["D"])[:-1].eval()  # drop pool5
    body = VGG16Body()
    tv_convs = [m for m in tv_features if isinstance(m, torch.nn.Conv2d)]
    our_convs = [conv for block in body.blocks for conv in block]
    assert len(tv_convs) == len(our_convs) == 13
    with torch.no_grad():
        for tv_conv, our_conv in zip(tv_convs, our_convs):
            tv_conv.bias.normal_(0.0, 0.1)
            our_conv.weight.copy_(tv_conv.weight)
            our_conv.bias.copy_(tv_conv.bias)
        images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        ours = body(images)["conv5_3"]
        expected = tv_features(images)
    assert ours.shape == (1, 512, 4, 4)  # stride 16
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert body.out_channels == {"conv5_3": 512} and body.strides == {"conv5_3": 16}


def test_vgg16_freezes_conv1_and_conv2_as_detectron():
    """Detectron's StopGradient at pool2: conv1_* and conv2_* never train."""
    body = VGG16Body()
    frozen = {name for name, p in body.named_parameters() if not p.requires_grad}
    blobs = detectron_blob_names(body)
    assert {blobs[name] for name in frozen} == {
        f"conv{b}_{i}_{kind}" for b in (1, 2) for i in (1, 2) for kind in ("w", "b")
    }


@pytest.mark.parametrize("body_name", ["VGG16.add_VGG16_conv5_body",
                                       "VGG16.add_VGG16_gn_conv5_body"])
@pytest.mark.parametrize("freeze_at", [0, 2, 4])
def test_vgg16_bodies_freeze_the_conv_blocks_up_to_train_freeze_at(body_name, freeze_at):
    cfg = load_config(None, ["MODEL.CONV_BODY", body_name, "TRAIN.FREEZE_AT", str(freeze_at)])
    body = build_backbone(cfg)
    frozen_blocks = [all(not p.requires_grad for p in block.parameters()) for block in body.blocks]
    assert frozen_blocks == [index < freeze_at for index in range(5)]


def test_vgg16_roi_head_is_fc6_fc7_with_relu():
    head = VGG16RoIHead(in_channels=512)
    assert (head.fc6.in_features, head.fc6.out_features) == (512 * 7 * 7, 4096)
    assert head.out_dim == 4096
    assert detectron_blob_names(head) == {"fc6.weight": "fc6_w", "fc6.bias": "fc6_b",
                                          "fc7.weight": "fc7_w", "fc7.bias": "fc7_b"}
    rois = torch.randn(2, 512, 7, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = F.relu(rois.flatten(1) @ head.fc6.weight.T + head.fc6.bias)
        expected = F.relu(hidden @ head.fc7.weight.T + head.fc7.bias)
        torch.testing.assert_close(head(rois), expected)


def test_vgg16_gn_body_matches_torchvision_vgg16_bn_layout_with_group_norm():
    # torchvision's VGG16-BN features (conv -> BN -> ReLU) with every BatchNorm swapped for
    # the GroupNorm our body puts after its bias-free convs.
    torch.manual_seed(0)
    tv_features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)[:-1]
    for index, layer in enumerate(tv_features):
        if isinstance(layer, torch.nn.BatchNorm2d):
            tv_features[index] = torch.nn.GroupNorm(32, layer.num_features)
    body = VGG16Body(norm=NormSpec(GROUP_NORM, gn_num_groups=32))
    tv_convs = [m for m in tv_features if isinstance(m, torch.nn.Conv2d)]
    tv_norms = [m for m in tv_features if isinstance(m, torch.nn.GroupNorm)]
    our_convs = [conv for block in body.blocks for conv in block]
    with torch.no_grad():
        for tv_conv, tv_norm, our_conv in zip(tv_convs, tv_norms, our_convs, strict=True):
            assert our_conv.bias is None
            tv_conv.bias.zero_()
            tv_norm.weight.uniform_(0.5, 1.5)
            tv_norm.bias.normal_(0.0, 0.1)
            our_conv.weight.copy_(tv_conv.weight)
            our_conv.norm.weight.copy_(tv_norm.weight)
            our_conv.norm.bias.copy_(tv_norm.bias)
        images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(body(images)["conv5_3"], tv_features(images), rtol=1e-4, atol=1e-4)
    blobs = detectron_blob_names(body)
    assert blobs["blocks.0.conv1_1.norm.weight"] == "conv1_1_gn_s"
