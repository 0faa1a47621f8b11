"""Weight fills with Caffe2's definitions, under the names Detectron's configs use.

Detectron's configs name initializers by their Caffe2 operator (``MRCNN.CONV_INIT: MSRAFill``,
``KRCNN.CONV_INIT: GaussianFill``); its model code picks ``XavierFill`` for FPN and for any conv
or fc that names no initializer (Caffe2's default), ``GaussianFill`` with a given std for RPN
and box predictors, and ``ConstantFill`` for biases and zero-initialized layers.

Caffe2's definitions differ from the PyTorch functions of the same name:

- ``XavierFill``: uniform in ``[-a, a]`` with ``a = sqrt(3 / fan_in)``, ``fan_in = numel /
  shape[0]`` (so variance ``1 / fan_in``; PyTorch's ``xavier_uniform_`` averages fan in and out).
- ``MSRAFill``: normal with mean 0 and ``std = sqrt(2 / fan_out)``, ``fan_out = numel /
  shape[1]`` (PyTorch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``).
- ``GaussianFill``: normal with mean 0 and the given ``std``.
- ``ConstantFill``: every entry equal to ``value``.
"""
import math

import torch
from torch import nn

from detectron_lib.errors import ConfigError

WEIGHT_FILLS = ("XavierFill", "MSRAFill", "GaussianFill", "ConstantFill")


def _fan_in(tensor):
    return tensor.numel() // tensor.shape[0]


def _fan_out(tensor):
    if tensor.dim() < 2:
        raise ValueError(f"MSRAFill needs a tensor of >= 2 dims, got shape {tuple(tensor.shape)}")
    return tensor.numel() // tensor.shape[1]


@torch.no_grad()
def xavier_fill_(tensor):
    """Caffe2 XavierFill in place: U(-sqrt(3 / fan_in), sqrt(3 / fan_in))."""
    bound = math.sqrt(3.0 / _fan_in(tensor))
    return tensor.uniform_(-bound, bound)


@torch.no_grad()
def msra_fill_(tensor):
    """Caffe2 MSRAFill in place: N(0, 2 / fan_out), fan_out = out_channels * kernel area."""
    return tensor.normal_(0.0, math.sqrt(2.0 / _fan_out(tensor)))


@torch.no_grad()
def gaussian_fill_(tensor, std):
    """Caffe2 GaussianFill in place: N(0, std^2)."""
    return tensor.normal_(0.0, std)


@torch.no_grad()
def constant_fill_(tensor, value=0.0):
    """Caffe2 ConstantFill in place."""
    return tensor.fill_(value)


def fill_(tensor, fill, std=0.01, value=0.0):
    """Apply the fill named ``fill`` (one of WEIGHT_FILLS) to ``tensor`` in place.

    ``std`` is used by GaussianFill, ``value`` by ConstantFill. An unknown name is a
    ConfigError, since fill names come from config keys such as MRCNN.CONV_INIT.
    """
    if fill == "XavierFill":
        return xavier_fill_(tensor)
    if fill == "MSRAFill":
        return msra_fill_(tensor)
    if fill == "GaussianFill":
        return gaussian_fill_(tensor, std)
    if fill == "ConstantFill":
        return constant_fill_(tensor, value)
    raise ConfigError(f"unknown weight fill '{fill}'; use one of {', '.join(WEIGHT_FILLS)}")


def init_layer_(layer, fill="XavierFill", std=0.01, bias=0.0):
    """Fill a conv / linear layer's weight with ``fill`` and its bias (if any) with ``bias``.

    layer: an nn.Conv2d, nn.ConvTranspose2d or nn.Linear (anything with .weight / .bias).
    """
    fill_(layer.weight, fill, std=std)
    if getattr(layer, "bias", None) is not None:
        constant_fill_(layer.bias, bias)
    return layer


def init_norm_(norm):
    """Identity start for a norm layer: scale 1, shift 0 (Detectron's AffineChannel / GN init)."""
    if isinstance(norm, nn.Module) and getattr(norm, "weight", None) is not None:
        constant_fill_(norm.weight, 1.0)
        constant_fill_(norm.bias, 0.0)
    return norm
