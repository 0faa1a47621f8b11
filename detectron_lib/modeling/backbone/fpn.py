"""Feature Pyramid Network on a ResNet conv5 body, as Detectron's FPN.add_fpn.

For the backbone stages res<min_level>..res5 (coarsest first):
  inner_5 = lateral 1x1 conv of C5                                  Detectron: fpn_inner_res5_2_sum
  inner_k = lateral 1x1 conv of C_k + nearest 2x upsampling of inner_(k+1)
                                                       lateral conv: fpn_inner_res4_5_sum_lateral
  P_k     = 3x3 conv of inner_k                                     Detectron: fpn_res4_5_sum
Levels above P5:
  - without EXTRA_CONV_LEVELS and max level 6 (RPN / R-CNN): P6 = max-pool (kernel 1,
    stride 2) of P5, i.e. P5 subsampled.
  - with EXTRA_CONV_LEVELS (RetinaNet): P6 = conv 3x3/2 on C5 (the raw res5 output; on P5
    with EXTRA_CONV_LEVELS_ON_P5, as torchvision's RetinaNet), P7 = conv 3x3/2 on ReLU(P6),
    ...                                                             Detectron: fpn_6, fpn_7
All FPN convs are XavierFill with zero bias; laterals are zero-filled with ZERO_INIT_LATERAL.
With FPN.USE_GN the lateral and 3x3 convs get GroupNorm and lose their bias (Detectron's
ConvGN); the extra P6/P7 convs never have a norm.
"""
from collections import OrderedDict

from torch import nn
from torch.nn import functional as F

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.layers import Conv2dNorm
from detectron_lib.modeling.init import constant_fill_

LOWEST_BACKBONE_LEVEL = 2
HIGHEST_BACKBONE_LEVEL = 5


class FPN(nn.Module):
    """FPN levels P<min_level>..P<max_level> on top of a ResNetBody (``bottom_up``).

    Args:
      bottom_up: a ResNetBody returning res<min_level>..res5 (``out_features``).
      min_level, max_level: pyramid levels (Detectron's get_min_max_levels of FPN.RPN_* /
        FPN.ROI_*: 2 and 6 for RPN + R-CNN, 3 and 7 for RetinaNet).
      out_channels: FPN.DIM.
      extra_conv_levels: FPN.EXTRA_CONV_LEVELS (P6+ by stride-2 convs instead of P6 by pooling).
      extra_convs_on_p5: FPN.EXTRA_CONV_LEVELS_ON_P5 (the first of them reads P5, not C5).
      zero_init_lateral: FPN.ZERO_INIT_LATERAL.
      norm: "" or a GN NormSpec (FPN.USE_GN with GROUP_NORM.*).
      finest_only: return only the finest level (Detectron's *_P2only bodies).

    forward(images (N, 3, H, W)) -> OrderedDict {"p2": (N, DIM, H/4, W/4), ..., "p6": ...},
    finest level first, with ``out_channels`` and ``strides`` dicts keyed the same way.
    """

    def __init__(self, bottom_up, min_level=2, max_level=6, out_channels=256,
                 extra_conv_levels=False, zero_init_lateral=False, norm="", finest_only=False,
                 extra_convs_on_p5=False):
        super().__init__()
        if not LOWEST_BACKBONE_LEVEL <= min_level <= HIGHEST_BACKBONE_LEVEL:
            raise ConfigError(f"FPN min level {min_level} must lie in 2..5 (FPN.*_MIN_LEVEL)")
        if max_level > HIGHEST_BACKBONE_LEVEL + 1 and not extra_conv_levels:
            raise ConfigError(
                f"FPN max level {max_level} needs FPN.EXTRA_CONV_LEVELS: True (levels above P6 "
                "are built by stride-2 convs)"
            )
        self.bottom_up = bottom_up
        self.in_features = [f"res{level}" for level in range(HIGHEST_BACKBONE_LEVEL,
                                                             min_level - 1, -1)]
        missing = [name for name in self.in_features if name not in bottom_up.out_channels]
        if missing:
            raise ValueError(f"FPN needs body outputs {missing}; the body gives "
                             f"{list(bottom_up.out_channels)}")
        stage_blobs = bottom_up.detectron_stage_blobs
        top = self.in_features[0]
        self.lateral_convs = nn.ModuleDict()
        self.output_convs = nn.ModuleDict()
        for name in self.in_features:
            inner_blob = f"fpn_inner_{stage_blobs[name]}"
            lateral = Conv2dNorm(
                bottom_up.out_channels[name], out_channels, 1, norm=norm,
                detectron_name=inner_blob if name == top else inner_blob + "_lateral",
            )
            if zero_init_lateral and name != top:
                constant_fill_(lateral.weight, 0.0)
            self.lateral_convs[name] = lateral
            self.output_convs[name] = Conv2dNorm(
                out_channels, out_channels, 3, padding=1, norm=norm,
                detectron_name=f"fpn_{stage_blobs[name]}",
            )
        self.pool_p6 = not extra_conv_levels and max_level == HIGHEST_BACKBONE_LEVEL + 1
        self.extra_convs = nn.ModuleDict()
        self.extra_convs_on_p5 = extra_convs_on_p5
        if extra_conv_levels:
            in_channels = out_channels if extra_convs_on_p5 else bottom_up.out_channels[top]
            for level in range(HIGHEST_BACKBONE_LEVEL + 1, max_level + 1):
                self.extra_convs[f"p{level}"] = Conv2dNorm(
                    in_channels, out_channels, 3, stride=2, padding=1,
                    detectron_name=f"fpn_{level}",
                )
                in_channels = out_channels
        levels = range(min_level, max(max_level, HIGHEST_BACKBONE_LEVEL) + 1)
        self.out_features = [f"p{level}" for level in levels][: 1 if finest_only else None]
        self.out_channels = {name: out_channels for name in self.out_features}
        self.strides = {name: 2 ** int(name[1:]) for name in self.out_features}

    def forward(self, images):
        return self.pyramid(self.bottom_up(images))

    def pyramid(self, features):
        """FPN levels from body outputs {"res2": (N, C2, H2, W2), ...}; see the class docstring."""
        top = self.in_features[0]
        inner = self.lateral_convs[top](features[top])
        outputs = {f"p{top[3:]}": self.output_convs[top](inner)}
        for name in self.in_features[1:]:
            lateral = self.lateral_convs[name](features[name])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outputs[f"p{name[3:]}"] = self.output_convs[name](inner)
        if self.pool_p6:
            outputs["p6"] = F.max_pool2d(outputs["p5"], kernel_size=1, stride=2)
        x = outputs["p5"] if self.extra_convs_on_p5 else features[top]
        for index, (name, conv) in enumerate(self.extra_convs.items()):
            x = conv(x if index == 0 else F.relu(x))
            outputs[name] = x
        return OrderedDict((name, outputs[name]) for name in self.out_features)
