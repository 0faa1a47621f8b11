"""ResNet and ResNeXt bodies (conv4 / conv5) and the res5 RoI head, with Detectron's structure.

Structure (Detectron's modeling/ResNet.py):
  stem   conv1 7x7/2 (no bias) -> norm -> ReLU -> max-pool 3x3/2 pad 1        stride 4, 64 ch
  res2   n2 blocks, stride 1                                                 stride 4
  res3   n3 blocks, first block stride 2                                     stride 8
  res4   n4 blocks, first block stride 2                                     stride 16
  res5   n5 blocks, first block stride 2 (1 with RES5_DILATION > 1)          stride 32 / dilation
Block counts: R-50 3-4-6-3, R-101 3-4-23-3, R-152 3-8-36-3; R-18 2-2-2-2 and R-34 3-4-6-3 use
basic blocks (two 3x3 convs), which Detectron did not have.

Bottleneck block ``res<s>_<i>``: branch2a 1x1 -> branch2b 3x3 (NUM_GROUPS groups, dilation) ->
branch2c 1x1, each with a norm, ReLU after a and b; the shortcut ``branch1`` (1x1 conv + norm)
exists when the channel count changes; sum, then ReLU. Bottleneck width of stage k (2..5) is
NUM_GROUPS * WIDTH_PER_GROUP * 2^(k-2), output 256 * 2^(k-2). STRIDE_1X1 puts the stride on
branch2a (MSRA's original ResNet) instead of branch2b (Caffe2 / Torch / torchvision models).

Module names follow Detectron's blobs (``res2.0.branch2a`` is ``res2_0_branch2a``); see
layers.detectron_blob_names for the full rule.
"""
from collections import OrderedDict

from torch import nn
from torch.nn import functional as F

from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.layers import (
    Conv2dNorm,
    freeze_,
    max_pool_3x3_s2,
    set_batchnorm_eval,
)
from detectron_lib.modeling.backbone.norms import BATCH_NORM, FROZEN_BN, NormSpec
from detectron_lib.modeling.backbone.precision import run_in_precision

BOTTLENECK = "bottleneck"
BASIC = "basic"

# depth -> (blocks in res2, res3, res4, res5)
RESNET_BLOCK_COUNTS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
RESNET_BLOCK_TYPE = {18: BASIC, 34: BASIC, 50: BOTTLENECK, 101: BOTTLENECK, 152: BOTTLENECK}
STEM_CHANNELS = 64


class ResNetStem(nn.Module):
    """conv1 7x7/2 + norm + ReLU + max-pool 3x3/2 (pad 1): basic_bn_stem / basic_gn_stem.

    x: (N, 3, H, W) -> (N, 64, ~H/4, ~W/4).
    """

    def __init__(self, in_channels=3, out_channels=STEM_CHANNELS, norm=FROZEN_BN,
                 weight_fill="XavierFill"):
        super().__init__()
        norm = NormSpec.of(norm)
        # Detectron's BN stem names its AffineChannel "res_conv1_bn"; the GN stem "conv1_gn".
        norm_name = "res_conv1_bn" if norm.kind in (FROZEN_BN, BATCH_NORM) else ""
        self.conv1 = Conv2dNorm(
            in_channels, out_channels, 7, stride=2, padding=3, norm=norm,
            weight_fill=weight_fill, detectron_name="conv1", detectron_norm_name=norm_name,
        )
        self.out_channels = out_channels
        self.stride = 4

    def forward(self, x):
        return max_pool_3x3_s2(F.relu(self.conv1(x)))


def _shortcut(in_channels, out_channels, stride, norm, weight_fill, prefix):
    """Detectron's basic_bn_shortcut / basic_gn_shortcut: 1x1 conv + norm when shapes change."""
    if in_channels == out_channels and stride == 1:
        return None
    return Conv2dNorm(
        in_channels, out_channels, 1, stride=stride, norm=norm, weight_fill=weight_fill,
        detectron_name=prefix + "_branch1",
    )


class BottleneckBlock(nn.Module):
    """Detectron's bottleneck_transformation (bottleneck_gn_transformation with GN) + shortcut.

    x: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    ``num_groups`` > 1 makes it a ResNeXt block (grouped 3x3 conv of ``bottleneck_channels``).
    """

    def __init__(self, in_channels, out_channels, bottleneck_channels, stride=1, dilation=1,
                 num_groups=1, stride_in_1x1=True, norm=FROZEN_BN, shortcut_norm=None,
                 weight_fill="XavierFill", prefix=""):
        super().__init__()
        norm = NormSpec.of(norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.branch2a = Conv2dNorm(
            in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm,
            weight_fill=weight_fill, detectron_name=prefix + "_branch2a",
        )
        self.branch2b = Conv2dNorm(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
            dilation=dilation, groups=num_groups, norm=norm, weight_fill=weight_fill,
            detectron_name=prefix + "_branch2b",
        )
        self.branch2c = Conv2dNorm(
            bottleneck_channels, out_channels, 1, norm=norm, weight_fill=weight_fill,
            detectron_name=prefix + "_branch2c",
        )
        self.branch1 = _shortcut(
            in_channels, out_channels, stride, norm if shortcut_norm is None else shortcut_norm,
            weight_fill, prefix,
        )

    def forward(self, x):
        out = F.relu(self.branch2a(x))
        out = F.relu(self.branch2b(out))
        out = self.branch2c(out)
        shortcut = x if self.branch1 is None else self.branch1(x)
        return F.relu(out + shortcut)


class BasicBlock(nn.Module):
    """Two 3x3 convs with norms (ResNet-18/34's block) + shortcut; stride on the first conv.

    x: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels, out_channels, stride=1, dilation=1, norm=FROZEN_BN,
                 shortcut_norm=None, weight_fill="XavierFill", prefix=""):
        super().__init__()
        self.branch2a = Conv2dNorm(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
            norm=norm, weight_fill=weight_fill, detectron_name=prefix + "_branch2a",
        )
        self.branch2b = Conv2dNorm(
            out_channels, out_channels, 3, padding=dilation, dilation=dilation, norm=norm,
            weight_fill=weight_fill, detectron_name=prefix + "_branch2b",
        )
        self.branch1 = _shortcut(
            in_channels, out_channels, stride, norm if shortcut_norm is None else shortcut_norm,
            weight_fill, prefix,
        )

    def forward(self, x):
        out = F.relu(self.branch2a(x))
        out = self.branch2b(out)
        shortcut = x if self.branch1 is None else self.branch1(x)
        return F.relu(out + shortcut)


def stage_channels(block_type, stage, num_groups=1, width_per_group=64):
    """(output channels, bottleneck channels) of stage ``stage`` (2..5) for a block type."""
    scale = 2 ** (stage - 2)
    if block_type == BOTTLENECK:
        return 256 * scale, num_groups * width_per_group * scale
    if block_type == BASIC:
        return STEM_CHANNELS * scale, STEM_CHANNELS * scale
    raise ValueError(f"unknown block type '{block_type}'")


def make_stage(block_type, num_blocks, stage, in_channels, first_stride, dilation=1,
               num_groups=1, width_per_group=64, stride_in_1x1=True, norm=FROZEN_BN,
               shortcut_norm=None, weight_fill="XavierFill"):
    """Stage ``res<stage>``: ``num_blocks`` blocks, the first with stride ``first_stride``.

    Returns (nn.Sequential of blocks named "0", "1", ..., output channels).
    """
    if block_type == BASIC and (num_groups != 1 or width_per_group != 64):
        raise ConfigError(
            "basic (ResNet-18/34) blocks have no groups: RESNETS.NUM_GROUPS must be 1 and "
            f"RESNETS.WIDTH_PER_GROUP 64, got {num_groups} and {width_per_group}"
        )
    out_channels, bottleneck_channels = stage_channels(
        block_type, stage, num_groups, width_per_group
    )
    blocks = []
    for index in range(num_blocks):
        common = dict(
            stride=first_stride if index == 0 else 1, dilation=dilation, norm=norm,
            shortcut_norm=shortcut_norm, weight_fill=weight_fill, prefix=f"res{stage}_{index}",
        )
        if block_type == BOTTLENECK:
            block = BottleneckBlock(
                in_channels, out_channels, bottleneck_channels, num_groups=num_groups,
                stride_in_1x1=stride_in_1x1, **common,
            )
        else:
            block = BasicBlock(in_channels, out_channels, **common)
        blocks.append(block)
        in_channels = out_channels
    return nn.Sequential(*blocks), out_channels


class ResNetBody(nn.Module):
    """ResNet / ResNeXt body from the image to res4 (conv4 body) or res5 (conv5 body).

    Args:
      block_counts: blocks in res2, res3, res4[, res5] (3 entries: conv4 body, 4: conv5 body).
      block_type: "bottleneck" (R-50 and deeper, ResNeXt) or "basic" (R-18/34).
      num_groups, width_per_group: RESNETS.NUM_GROUPS / WIDTH_PER_GROUP (ResNeXt 32x8d: 32, 8).
      stride_in_1x1: RESNETS.STRIDE_1X1.
      res5_dilation: RESNETS.RES5_DILATION; res5 then keeps stride 16.
      norm, stem_norm, shortcut_norm: NormSpec or kind for blocks, stem and shortcuts
        (stem / shortcut default to ``norm``); Detectron's TRANS_FUNC / STEM_FUNC /
        SHORTCUT_FUNC choose these.
      freeze_at: TRAIN.FREEZE_AT; stem (1) and res2..res<freeze_at> get requires_grad False
        and their trainable BN layers stay in eval mode. 0 freezes nothing; 2 (Detectron's
        default) freezes stem + res2.
      out_features: stage names to return, e.g. ("res2", "res3", "res4", "res5") for FPN;
        default the last stage only.
      weight_fill: conv weight fill (Detectron's convs name none, so Caffe2's XavierFill).

    forward(images (N, 3, H, W)) -> OrderedDict {stage name: (N, out_channels[name], H/s, W/s)}
    with ``out_channels`` and ``strides`` dicts keyed by the same names.
    """

    def __init__(self, block_counts, block_type=BOTTLENECK, num_groups=1, width_per_group=64,
                 stride_in_1x1=True, res5_dilation=1, norm=FROZEN_BN, stem_norm=None,
                 shortcut_norm=None, freeze_at=2, out_features=None, weight_fill="XavierFill"):
        super().__init__()
        if len(block_counts) not in (3, 4):
            raise ValueError(f"block_counts needs 3 (conv4) or 4 (conv5) entries: {block_counts}")
        if res5_dilation not in (1, 2):
            raise ConfigError(f"RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
        num_stages = len(block_counts)
        if not 0 <= freeze_at <= num_stages + 1:
            raise ConfigError(
                f"TRAIN.FREEZE_AT={freeze_at} is out of range for a body ending at "
                f"res{num_stages + 1}; use 0 (nothing frozen) to {num_stages + 1}"
            )
        self.stem = ResNetStem(norm=norm if stem_norm is None else stem_norm,
                               weight_fill=weight_fill)
        self.stage_names = []
        self.out_channels = {}
        self.strides = {}
        self.block_counts = tuple(block_counts)
        in_channels, stride = self.stem.out_channels, self.stem.stride
        for stage, num_blocks in enumerate(block_counts, start=2):
            dilation = res5_dilation if stage == 5 else 1
            first_stride = 1 if stage == 2 or dilation > 1 else 2
            layers, in_channels = make_stage(
                block_type, num_blocks, stage, in_channels, first_stride, dilation=dilation,
                num_groups=num_groups, width_per_group=width_per_group,
                stride_in_1x1=stride_in_1x1, norm=norm, shortcut_norm=shortcut_norm,
                weight_fill=weight_fill,
            )
            name = f"res{stage}"
            self.add_module(name, layers)
            stride *= first_stride
            self.stage_names.append(name)
            self.out_channels[name] = in_channels
            self.strides[name] = stride
        self.out_features = tuple(out_features or self.stage_names[-1:])
        unknown = set(self.out_features) - set(self.stage_names)
        if unknown:
            raise ValueError(f"out_features {sorted(unknown)} not in {self.stage_names}")
        self.out_channels = {name: self.out_channels[name] for name in self.out_features}
        self.strides = {name: self.strides[name] for name in self.out_features}
        self.freeze_at = freeze_at
        for module in self.frozen_modules():
            freeze_(module)

    @property
    def detectron_stage_blobs(self):
        """{stage name: Detectron's output blob of the stage}, e.g. {"res5": "res5_2_sum"}."""
        return {
            name: f"{name}_{count - 1}_sum"
            for name, count in zip(self.stage_names, self.block_counts)
        }

    def frozen_modules(self):
        """The stem and stages frozen by ``freeze_at``, in order."""
        modules = [self.stem] + [getattr(self, name) for name in self.stage_names]
        return modules[: self.freeze_at]

    def train(self, mode=True):
        super().train(mode)
        for module in self.frozen_modules():
            set_batchnorm_eval(module)
        return self

    def forward(self, images):
        x = self.stem(images)
        features = OrderedDict()
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                features[name] = x
        return features


class ResNetRoIHead(nn.Module):
    """res5 applied to pooled RoI features, then average pooling: add_ResNet_roi_conv5_head.

    Detectron pools RoIs from res4 at FAST_RCNN.ROI_XFORM_RESOLUTION and gives the first res5
    block stride ROI_XFORM_RESOLUTION // 7 (14 -> 2, so res5 sees 7x7); the 7x7 map is then
    average-pooled. RoI pooling itself happens before this module.

    forward(x (R, in_channels, S, S)) -> (R, out_dim), float32; ``self.res5(x)`` gives the
    (R, out_dim, S', S') map before pooling (Detectron's ``res5_2_sum``, which a C4 mask head
    may share). res5 is the body's last stage and runs in its MODEL.BODY_PRECISION
    (``precision``), which pays most here: on C4 models it is most of the compute.
    """

    def __init__(self, in_channels=1024, num_blocks=3, block_type=BOTTLENECK, first_stride=2,
                 num_groups=1, width_per_group=64, stride_in_1x1=True, norm=FROZEN_BN,
                 shortcut_norm=None, weight_fill="XavierFill", precision="float32"):
        super().__init__()
        self.precision = precision
        self.res5, self.out_dim = make_stage(
            block_type, num_blocks, 5, in_channels, first_stride, num_groups=num_groups,
            width_per_group=width_per_group, stride_in_1x1=stride_in_1x1, norm=norm,
            shortcut_norm=shortcut_norm, weight_fill=weight_fill,
        )

    def forward(self, x):
        return run_in_precision(self.precision, self.res5, x).mean(dim=(2, 3))
