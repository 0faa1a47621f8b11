"""Normalization layers of the backbones: frozen BN (AffineChannel), GroupNorm, trainable BN.

Detectron fine-tunes ImageNet models whose BatchNorm layers were folded into an
``AffineChannel`` op (``y = x * scale + bias``, per channel). Nothing of it trains: Caffe2's
AffineChannel gives its scale and bias no gradient unless ``is_learnable`` is set, which
Detectron never sets, so they are constants at every depth (like detectron2's and
torchvision's FrozenBatchNorm2d). ``FrozenBatchNorm2d`` is that op. GroupNorm follows
Detectron's GROUP_NORM.* keys; trainable BatchNorm is offered for models trained from scratch
on CPU-sized data.

Norm kinds accepted by ``get_norm``:
  "FrozenBN" (alias "AffineChannel"), "GN", "BN", and "" / None for no norm.
"""
from dataclasses import dataclass

import torch
from torch import nn

from detectron_lib.errors import ConfigError

FROZEN_BN = "FrozenBN"
GROUP_NORM = "GN"
BATCH_NORM = "BN"
_ALIASES = {"AffineChannel": FROZEN_BN, "": "", None: ""}
NORM_KINDS = (FROZEN_BN, GROUP_NORM, BATCH_NORM, "")


class FrozenBatchNorm2d(nn.Module):
    """Detectron's AffineChannel: ``y = x * weight + bias`` per channel, no statistics.

    x: (N, C, H, W). ``weight`` (the blob ``*_bn_s``) and ``bias`` (``*_bn_b``) are buffers:
    saved and loaded with the state dict, never trained.

    Loading a BatchNorm state dict (with ``running_mean`` / ``running_var``) folds the statistics
    in: ``weight = gamma / sqrt(var + eps)``, ``bias = beta - mean * weight``, so the layer then
    computes what the BatchNorm computed in eval mode.
    """

    def __init__(self, num_channels, eps=1e-5):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        mean_key, var_key = prefix + "running_mean", prefix + "running_var"
        if mean_key in state_dict and var_key in state_dict:
            mean = state_dict.pop(mean_key)
            var = state_dict.pop(var_key)
            state_dict.pop(prefix + "num_batches_tracked", None)
            gamma = state_dict.get(prefix + "weight", torch.ones_like(mean))
            beta = state_dict.get(prefix + "bias", torch.zeros_like(mean))
            scale = gamma / torch.sqrt(var + self.eps)
            state_dict[prefix + "weight"] = scale
            state_dict[prefix + "bias"] = beta - mean * scale
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def folded_into(self, weight, bias):
        """A conv (``weight`` (C, ...), ``bias`` (C,) or None) followed by this layer, as one
        conv's (weight, bias): ``weight * scale`` per output channel, ``bias * scale + shift``."""
        shift = self.bias if bias is None else bias * self.weight + self.bias
        return weight * self.weight.view(-1, 1, 1, 1).to(weight.dtype), shift

    def extra_repr(self):
        return f"{self.num_channels}, eps={self.eps}"


@torch.no_grad()
def fold_frozen_batchnorm_(module):
    """Fold every frozen BN (AffineChannel) that a convolution applies as its ``norm`` (the
    Conv2dNorm layers of the backbones) into that convolution: ``weight * scale`` per output
    channel, bias ``bias * scale + shift``; the norm is removed. For inference: one op per
    layer instead of three (conv, mul, add). The state dict changes (convs gain a bias, norms
    vanish), so fold after loading weights and never save the folded model as a checkpoint.
    Returns the number of layers folded.
    """
    folded = 0
    for layer in module.modules():
        norm = getattr(layer, "norm", None)
        if not isinstance(layer, nn.Conv2d) or not isinstance(norm, FrozenBatchNorm2d):
            continue
        weight, bias = norm.folded_into(layer.weight, layer.bias)
        layer.weight.copy_(weight)
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
        layer.norm = None
        folded += 1
    return folded


def get_group_gn(dim, dim_per_group=-1, num_groups=32):
    """Number of GroupNorm groups for ``dim`` channels, as Detectron's get_group_gn.

    Exactly one of GROUP_NORM.DIM_PER_GP (channels per group) and GROUP_NORM.NUM_GROUPS must be
    set (the other -1), and it must divide ``dim``.
    """
    if (dim_per_group == -1) == (num_groups == -1):
        raise ConfigError(
            "GROUP_NORM: set exactly one of DIM_PER_GP and NUM_GROUPS (the other to -1); "
            f"got DIM_PER_GP={dim_per_group}, NUM_GROUPS={num_groups}"
        )
    if dim_per_group > 0:
        if dim % dim_per_group:
            raise ConfigError(
                f"GROUP_NORM.DIM_PER_GP={dim_per_group} does not divide a layer of {dim} channels"
            )
        return dim // dim_per_group
    if num_groups <= 0 or dim % num_groups:
        raise ConfigError(
            f"GROUP_NORM.NUM_GROUPS={num_groups} does not divide a layer of {dim} channels"
        )
    return num_groups


def canonical_norm_kind(kind):
    """The canonical spelling of a norm kind; ConfigError for an unknown one."""
    kind = _ALIASES.get(kind, kind)
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm '{kind}'; use one of FrozenBN, GN, BN or ''")
    return kind


def get_norm(kind, channels, gn_dim_per_group=-1, gn_num_groups=32, gn_eps=1e-5, bn_eps=1e-5):
    """A norm layer of ``kind`` for ``channels`` channels, or None for kind "" / None.

    GN takes its group count from get_group_gn(channels, gn_dim_per_group, gn_num_groups) and
    epsilon ``gn_eps`` (GROUP_NORM.EPSILON); BN / FrozenBN use ``bn_eps`` (that of the
    checkpoint whose statistics are loaded; 1e-5 for torchvision's and Caffe2's).
    """
    kind = canonical_norm_kind(kind)
    if kind == FROZEN_BN:
        return FrozenBatchNorm2d(channels, eps=bn_eps)
    if kind == BATCH_NORM:
        return nn.BatchNorm2d(channels, eps=bn_eps)
    if kind == GROUP_NORM:
        groups = get_group_gn(channels, gn_dim_per_group, gn_num_groups)
        return nn.GroupNorm(groups, channels, eps=gn_eps)
    return None


@dataclass(frozen=True)
class NormSpec:
    """A norm kind plus its GroupNorm settings; calling it with a channel count makes a layer.

    Lets constructors take one ``norm`` argument instead of four.
    """

    kind: str = FROZEN_BN
    gn_dim_per_group: int = -1
    gn_num_groups: int = 32
    gn_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "kind", canonical_norm_kind(self.kind))

    @classmethod
    def of(cls, norm):
        """``norm`` as a NormSpec: a NormSpec passes through, a kind string gets defaults."""
        return norm if isinstance(norm, NormSpec) else cls(kind=norm)

    def __call__(self, channels):
        return get_norm(
            self.kind,
            channels,
            gn_dim_per_group=self.gn_dim_per_group,
            gn_num_groups=self.gn_num_groups,
            gn_eps=self.gn_eps,
        )

    @property
    def detectron_suffix(self):
        """Suffix Detectron gives the norm's blobs after the conv name: '_bn' or '_gn'."""
        return {FROZEN_BN: "_bn", BATCH_NORM: "_bn", GROUP_NORM: "_gn"}.get(self.kind, "")
