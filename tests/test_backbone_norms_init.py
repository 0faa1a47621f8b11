"""Norm layers (FrozenBN / AffineChannel, GroupNorm groups, trainable BN) and Caffe2 weight fills.

References: torch.nn.BatchNorm2d in eval mode for FrozenBatchNorm2d; Detectron's get_group_gn
rule with hand-computed group counts; Caffe2's filler definitions (XavierFill bound
sqrt(3 / fan_in), MSRAFill std sqrt(2 / fan_out)) with hand-computed numbers.
"""
import math

import pytest
import torch
from torch import nn

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.layers import Conv2dNorm
from detectron_lib.modeling.backbone.norms import (
    FrozenBatchNorm2d,
    NormSpec,
    fold_frozen_batchnorm_,
    get_group_gn,
    get_norm,
)
from detectron_lib.modeling.init import fill_, init_layer_, msra_fill_, xavier_fill_


def random_batchnorm(channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return bn.eval()


def test_frozen_bn_loaded_from_bn_state_equals_bn_in_eval_mode():
    """Loading a BN state dict folds the statistics: same output as BatchNorm2d.eval()."""
    bn = random_batchnorm(16)
    frozen = FrozenBatchNorm2d(16)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-6, atol=1e-6)
    assert set(frozen.state_dict()) == {"weight", "bias"}


def test_frozen_bn_is_an_affine_channel_without_statistics_updates():
    """y = x * scale + bias (Detectron's AffineChannel), identical in train and eval mode."""
    frozen = FrozenBatchNorm2d(3)
    with torch.no_grad():
        frozen.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
        frozen.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    x = torch.ones(1, 3, 2, 2)
    expected = torch.tensor([1.0, 3.0, -0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(frozen.train()(x), expected)
    torch.testing.assert_close(frozen.eval()(x), expected)
    # Caffe2's AffineChannel (is_learnable unset in Detectron) trains neither scale nor bias
    assert [name for name, _ in frozen.named_parameters()] == []
    assert [name for name, _ in frozen.named_buffers()] == ["weight", "bias"]


@pytest.mark.parametrize("bias", [False, True])
def test_conv_with_frozen_bn_trains_as_conv_then_affine(bias):
    """Conv2dNorm applies its frozen BN as scaled conv weights and a bias; output and the
    gradients of the conv weights and input equal conv then x * scale + shift
    (reference: F.conv2d and the affine written out)."""
    torch.manual_seed(0)
    layer = Conv2dNorm(8, 16, 3, padding=1, bias=bias, norm="FrozenBN")
    layer.norm.load_state_dict(random_batchnorm(16).state_dict())
    if bias:
        nn.init.normal_(layer.bias)
    layer.double()  # float64: the two orders of rounding agree to 1e-10
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    weight_ref = layer.weight.detach().clone().requires_grad_(True)
    conv = torch.nn.functional.conv2d(x_ref, weight_ref, layer.bias, padding=1)
    reference = conv * layer.norm.weight.view(1, -1, 1, 1) + layer.norm.bias.view(1, -1, 1, 1)
    grad = torch.randn_like(reference)
    layer.train()(x).backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(layer(x), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, weight_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    assert {name for name, _ in layer.named_parameters()} == ({"weight", "bias"} if bias else {"weight"})


def test_frozen_bn_loads_a_detectron_style_scale_and_bias_directly():
    """A checkpoint with only the folded scale / bias (Detectron's *_bn_s / *_bn_b) loads as is."""
    frozen = FrozenBatchNorm2d(2)
    frozen.load_state_dict({"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(frozen.weight.detach(), torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize("bias", [False, True])
def test_folding_frozen_bn_into_its_conv_keeps_the_output(bias):
    """conv -> frozen BN equals the folded conv alone (reference: the unfolded layer); the
    norm is gone and GroupNorm layers are left as they are."""
    torch.manual_seed(0)
    layers = nn.Sequential(Conv2dNorm(8, 16, 3, padding=1, bias=bias, norm="FrozenBN"),
                           Conv2dNorm(16, 16, 1, norm=NormSpec("GN", gn_num_groups=4)))
    layers[0].norm.load_state_dict(random_batchnorm(16).state_dict())
    x = torch.randn(2, 8, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = layers(x)
        assert fold_frozen_batchnorm_(layers) == 1
        torch.testing.assert_close(layers(x), expected, rtol=1e-5, atol=1e-5)
    assert layers[0].norm is None and layers[0].bias is not None
    assert isinstance(layers[1].norm, nn.GroupNorm)


@pytest.mark.parametrize("dim, dim_per_group, num_groups, expected", [
    (256, -1, 32, 32),   # Detectron default: 32 groups
    (64, -1, 32, 32),
    (256, 16, -1, 16),   # DIM_PER_GP 16 -> 256 / 16 groups
    (64, 16, -1, 4),
])
def test_get_group_gn_follows_detectron(dim, dim_per_group, num_groups, expected):
    assert get_group_gn(dim, dim_per_group, num_groups) == expected


@pytest.mark.parametrize("dim, dim_per_group, num_groups, message", [
    (256, 16, 32, "exactly one"),
    (256, -1, -1, "exactly one"),
    (100, -1, 32, "NUM_GROUPS=32 does not divide"),
    (100, 16, -1, "DIM_PER_GP=16 does not divide"),
])
def test_get_group_gn_rejects_bad_settings(dim, dim_per_group, num_groups, message):
    with pytest.raises(ConfigError, match=message):
        get_group_gn(dim, dim_per_group, num_groups)


def test_get_norm_kinds():
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    assert isinstance(get_norm("AffineChannel", 8), FrozenBatchNorm2d)
    assert isinstance(get_norm("BN", 8), nn.BatchNorm2d)
    gn = get_norm("GN", 64, gn_dim_per_group=16, gn_num_groups=-1, gn_eps=1e-3)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4 and gn.eps == 1e-3
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert NormSpec("GN", gn_num_groups=8)(64).num_groups == 8
    with pytest.raises(ConfigError, match="unknown norm 'LayerNorm'"):
        get_norm("LayerNorm", 8)


def test_xavier_fill_is_caffe2_uniform_with_fan_in():
    """Caffe2 XavierFill: U(-a, a), a = sqrt(3 / fan_in); fan_in of a (64, 32, 3, 3) conv = 288."""
    torch.manual_seed(0)
    weight = xavier_fill_(torch.empty(64, 32, 3, 3))
    bound = math.sqrt(3.0 / 288)
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.99 * bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.03)


def test_msra_fill_is_caffe2_gaussian_with_fan_out():
    """Caffe2 MSRAFill: N(0, 2 / fan_out); fan_out of a (256, 64, 3, 3) conv = 256 * 9 = 2304."""
    torch.manual_seed(0)
    weight = msra_fill_(torch.empty(256, 64, 3, 3))
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / 2304), rel=0.02)
    assert weight.mean().item() == pytest.approx(0.0, abs=2e-3)


def test_gaussian_and_constant_fills_by_config_name():
    torch.manual_seed(0)
    layer = init_layer_(nn.Conv2d(256, 256, 3), "GaussianFill", std=0.01, bias=0.5)
    assert layer.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(layer.bias == 0.5)
    assert torch.all(fill_(torch.empty(3, 3), "ConstantFill", value=2.0) == 2.0)
    with pytest.raises(ConfigError, match="unknown weight fill 'HeFill'"):
        fill_(torch.empty(3, 3), "HeFill")
