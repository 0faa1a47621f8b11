"""Conv / fc layers that know their Detectron blob names, and the name-mapping rule.

Every weight layer of the backbones carries the name Detectron gave it (``detectron_name``),
so a Detectron checkpoint maps onto our state dict by one rule (``detectron_blob_names``):

    <path>.weight       -> <detectron_name>_w
    <path>.bias         -> <detectron_name>_b
    <path>.norm.weight  -> <norm_name>_s        norm_name = <detectron_name>_bn  (FrozenBN / BN)
    <path>.norm.bias    -> <norm_name>_b                    <detectron_name>_gn  (GN)

with one irregular case kept from Detectron: the BN stem's norm is ``res_conv1_bn`` (its GN
stem's is ``conv1_gn``). Examples: ``res2.0.branch2a.weight -> res2_0_branch2a_w``,
``res2.0.branch2a.norm.weight -> res2_0_branch2a_bn_s``,
``lateral_convs.res5.weight -> fpn_inner_res5_2_sum_w`` (keys are relative to the module
passed in). Trainable BN's running statistics have no Detectron blob and are not mapped.
"""
from torch import nn

from detectron_lib import ops
from detectron_lib.modeling.backbone.norms import FrozenBatchNorm2d, NormSpec
from detectron_lib.modeling.init import init_layer_, init_norm_


class Conv2dNorm(nn.Conv2d):
    """nn.Conv2d followed by an optional norm layer (``self.norm``), named as in Detectron.

    Detectron's ConvAffine / ConvGN / Conv: the conv has no bias when a norm follows (the norm's
    shift replaces it), unless ``bias`` says otherwise. Weights are filled with ``weight_fill``
    (modeling.init names), the bias with 0, the norm with scale 1 / shift 0.

    x: (N, in_channels, H, W) -> (N, out_channels, H', W'); no activation.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=None,
        norm="",
        weight_fill="XavierFill",
        detectron_name="",
        detectron_norm_name="",
    ):
        norm = NormSpec.of(norm)
        if bias is None:
            bias = not norm.kind
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm(out_channels)
        self.detectron_name = detectron_name
        self.detectron_norm_name = detectron_norm_name or (
            detectron_name + norm.detectron_suffix if self.norm is not None else ""
        )
        init_layer_(self, weight_fill)
        if self.norm is not None:
            init_norm_(self.norm)

    def forward(self, x):
        if isinstance(self.norm, FrozenBatchNorm2d):
            # conv then constant per-channel affine = one conv with scaled weights and a bias:
            # no pass over the output map for the affine, forward or backward.
            return self._conv_forward(x, *self.norm.folded_into(self.weight, self.bias))
        x = self._conv_forward(x, self.weight, self.bias)
        return self.norm(x) if self.norm is not None else x


class FC(nn.Linear):
    """nn.Linear with Detectron's default fill (XavierFill weight, zero bias) and blob name.

    x: (N, in_features) -> (N, out_features).
    """

    def __init__(self, in_features, out_features, weight_fill="XavierFill", detectron_name=""):
        super().__init__(in_features, out_features)
        self.detectron_name = detectron_name
        init_layer_(self, weight_fill)


def detectron_blob_names(module):
    """Map each parameter of ``module`` (state-dict key) to its Detectron blob name.

    Returns {state_dict_key: blob_name} for every layer with a ``detectron_name``; see the module
    docstring for the rule. A checkpoint importer inverts this to load Detectron .pkl weights.
    """
    names = {}
    for path, layer in module.named_modules():
        blob = getattr(layer, "detectron_name", "")
        if not blob:
            continue
        prefix = path + "." if path else ""
        names[prefix + "weight"] = blob + "_w"
        if layer.bias is not None:
            names[prefix + "bias"] = blob + "_b"
        norm = getattr(layer, "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            names[prefix + "norm.weight"] = layer.detectron_norm_name + "_s"
            names[prefix + "norm.bias"] = layer.detectron_norm_name + "_b"
    return names


def max_pool_3x3_s2(x):
    """F.max_pool2d(x, 3, stride=2, padding=1) for the ResNet stem: ops.max_pool2d.

    Same outputs and gradients bit for bit. On the CPU it is a compiled kernel, with or
    without autograd: 10x faster than PyTorch's NCHW max-pool forward (5.2 vs 51 ms for a
    4x64x128x192 bfloat16 map on one thread; forward + backward 8.7 vs 55 ms).
    """
    return ops.max_pool2d(x, 3, stride=2, padding=1)


def freeze_(module):
    """Stop training every parameter of ``module`` (requires_grad False); returns it."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def set_batchnorm_eval(module):
    """Put the trainable BatchNorm layers inside ``module`` in eval mode (statistics frozen)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
