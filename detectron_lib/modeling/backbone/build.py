"""Config -> backbone and RoI body head: the builders config/names.py names.

``build_backbone(cfg)`` resolves MODEL.CONV_BODY (e.g. "FPN.add_fpn_ResNet50_conv5_body") and
``build_roi_box_head(cfg, in_channels)`` resolves FAST_RCNN.ROI_BOX_HEAD through the registries
of detectron_lib.config.names. The ResNet pieces are chosen as in Detectron's ResNet.py:

  RESNETS.TRANS_FUNC     block type and its norm   bottleneck_transformation (FrozenBN),
                                                   bottleneck_gn_transformation (GN),
                                                   basic_transformation / basic_gn_transformation
                                                   (ResNet-18/34), and *_trainable_bn_* (BN)
  RESNETS.STEM_FUNC      stem norm                 basic_bn_stem, basic_gn_stem,
                                                   basic_trainable_bn_stem
  RESNETS.SHORTCUT_FUNC  shortcut norm             basic_bn_shortcut, basic_gn_shortcut,
                                                   basic_trainable_bn_shortcut
with RESNETS.NUM_GROUPS / WIDTH_PER_GROUP / STRIDE_1X1 / RES5_DILATION, GROUP_NORM.* for GN,
TRAIN.FREEZE_AT, and FPN.* (levels as Detectron's get_min_max_levels, DIM, EXTRA_CONV_LEVELS,
ZERO_INIT_LATERAL, USE_GN).
"""
import re

from detectron_lib.config.names import (
    CONV_BODY,
    RESNET_SHORTCUT_FUNC,
    RESNET_STEM_FUNC,
    RESNET_TRANS_FUNC,
    ROI_BOX_HEAD,
)
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone.fpn import FPN, HIGHEST_BACKBONE_LEVEL, LOWEST_BACKBONE_LEVEL
from detectron_lib.modeling.backbone.norms import BATCH_NORM, FROZEN_BN, GROUP_NORM, NormSpec
from detectron_lib.modeling.backbone.precision import body_layout, body_precision
from detectron_lib.modeling.backbone.resnet import (
    BASIC,
    BOTTLENECK,
    RESNET_BLOCK_COUNTS,
    RESNET_BLOCK_TYPE,
    ResNetBody,
    ResNetRoIHead,
)
from detectron_lib.modeling.backbone.vgg import VGG16Body, VGG16RoIHead

# Detectron's res5 RoI head stacks 3 blocks (R-50 / R-101); R-18's res5 has 2.
DEFAULT_ROI_HEAD_BLOCKS = 3
# The depth in a ResNet MODEL.CONV_BODY name: ResNet.add_ResNet50_conv4_body, FPN.add_fpn_ResNet18_conv5[_P2only]_body
_RESNET_BODY_DEPTH = re.compile(r"ResNet(\d+)_conv[45]_")


def group_norm_spec(cfg):
    """NormSpec for GroupNorm with GROUP_NORM.DIM_PER_GP / NUM_GROUPS / EPSILON."""
    return NormSpec(
        GROUP_NORM,
        gn_dim_per_group=cfg.GROUP_NORM.DIM_PER_GP,
        gn_num_groups=cfg.GROUP_NORM.NUM_GROUPS,
        gn_eps=cfg.GROUP_NORM.EPSILON,
    )


# ---- RESNETS.TRANS_FUNC: cfg -> (block type, norm) ------------------------------------------
def bottleneck_transformation(cfg):
    return BOTTLENECK, NormSpec(FROZEN_BN)


def bottleneck_gn_transformation(cfg):
    return BOTTLENECK, group_norm_spec(cfg)


def bottleneck_trainable_bn_transformation(cfg):
    return BOTTLENECK, NormSpec(BATCH_NORM)


def basic_transformation(cfg):
    return BASIC, NormSpec(FROZEN_BN)


def basic_gn_transformation(cfg):
    return BASIC, group_norm_spec(cfg)


def basic_trainable_bn_transformation(cfg):
    return BASIC, NormSpec(BATCH_NORM)


# ---- RESNETS.STEM_FUNC / SHORTCUT_FUNC: cfg -> norm ------------------------------------------
def frozen_bn_norm(cfg):
    return NormSpec(FROZEN_BN)


def gn_norm(cfg):
    return group_norm_spec(cfg)


def trainable_bn_norm(cfg):
    return NormSpec(BATCH_NORM)


def resnet_depth(conv_body):
    """Depth of the ResNet a MODEL.CONV_BODY name builds (``FPN.add_fpn_ResNet18_conv5_body``:
    18), or None for a body of another kind."""
    match = _RESNET_BODY_DEPTH.search(conv_body)
    return int(match[1]) if match else None


def roi_res5_blocks(cfg):
    """(depth, block count) of the res5 stage a C4 RoI head (box or mask) adds to the conv4
    body of MODEL.CONV_BODY; (None, DEFAULT_ROI_HEAD_BLOCKS) on any other body."""
    depth = resnet_depth(cfg.MODEL.CONV_BODY) if "_conv4_" in cfg.MODEL.CONV_BODY else None
    return depth, RESNET_BLOCK_COUNTS[depth][3] if depth else DEFAULT_ROI_HEAD_BLOCKS


def resnet_block_options(cfg, depth):
    """Keyword arguments shared by ResNetBody and ResNetRoIHead, read from RESNETS.*."""
    block_type, norm = RESNET_TRANS_FUNC.get(cfg.RESNETS.TRANS_FUNC)(cfg)
    if depth is not None and block_type != RESNET_BLOCK_TYPE[depth]:
        wanted = "basic_transformation" if RESNET_BLOCK_TYPE[depth] == BASIC else (
            "bottleneck_transformation")
        raise ConfigError(
            f"RESNETS.TRANS_FUNC '{cfg.RESNETS.TRANS_FUNC}' builds {block_type} blocks, but "
            f"ResNet-{depth} is made of {RESNET_BLOCK_TYPE[depth]} blocks; use {wanted} "
            "(or its _gn / _trainable_bn variant)"
        )
    return dict(
        block_type=block_type,
        num_groups=cfg.RESNETS.NUM_GROUPS,
        width_per_group=cfg.RESNETS.WIDTH_PER_GROUP,
        stride_in_1x1=cfg.RESNETS.STRIDE_1X1,
        norm=norm,
        shortcut_norm=RESNET_SHORTCUT_FUNC.get(cfg.RESNETS.SHORTCUT_FUNC)(cfg),
    )


def resnet_body_from_config(cfg, depth, num_stages, out_features=None, freeze_at=None):
    """ResNet-<depth> body through res<num_stages + 1> (3: conv4 body, 4: conv5 body);
    ``freeze_at`` overrides TRAIN.FREEZE_AT."""
    return ResNetBody(
        RESNET_BLOCK_COUNTS[depth][:num_stages],
        res5_dilation=cfg.RESNETS.RES5_DILATION,
        stem_norm=RESNET_STEM_FUNC.get(cfg.RESNETS.STEM_FUNC)(cfg),
        freeze_at=cfg.TRAIN.FREEZE_AT if freeze_at is None else freeze_at,
        out_features=out_features,
        **resnet_block_options(cfg, depth),
    )


def fpn_levels_from_config(cfg):
    """(min_level, max_level) of the pyramid, as Detectron's FPN.get_min_max_levels."""
    min_level, max_level = LOWEST_BACKBONE_LEVEL, HIGHEST_BACKBONE_LEVEL
    rpn, rois = cfg.FPN.MULTILEVEL_RPN, cfg.FPN.MULTILEVEL_ROIS
    if rpn and not rois:
        min_level, max_level = cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL
    elif rois and not rpn:
        min_level, max_level = cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL
    elif rpn and rois:
        min_level = min(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.ROI_MIN_LEVEL)
        max_level = max(cfg.FPN.RPN_MAX_LEVEL, cfg.FPN.ROI_MAX_LEVEL)
    return min_level, max_level


def fpn_from_config(cfg, depth, finest_only=False):
    """FPN on a ResNet-<depth> conv5 body."""
    min_level, max_level = fpn_levels_from_config(cfg)
    stages = tuple(f"res{level}" for level in range(min_level, HIGHEST_BACKBONE_LEVEL + 1))
    body = resnet_body_from_config(cfg, depth, 4, out_features=stages)
    return FPN(
        body,
        min_level=min_level,
        max_level=max_level,
        out_channels=cfg.FPN.DIM,
        extra_conv_levels=cfg.FPN.EXTRA_CONV_LEVELS,
        extra_convs_on_p5=cfg.FPN.EXTRA_CONV_LEVELS_ON_P5,
        zero_init_lateral=cfg.FPN.ZERO_INIT_LATERAL,
        norm=group_norm_spec(cfg) if cfg.FPN.USE_GN else "",
        finest_only=finest_only,
    )


def vgg16_body_from_config(cfg, freeze_at=None):
    """VGG16 conv5 body; conv blocks 1..TRAIN.FREEZE_AT are frozen (the default 2 is Detectron's
    gradient stop at pool2); ``freeze_at`` overrides TRAIN.FREEZE_AT."""
    return VGG16Body(frozen_blocks=cfg.TRAIN.FREEZE_AT if freeze_at is None else freeze_at)


def vgg16_gn_body_from_config(cfg, freeze_at=None):
    """VGG16 conv5 body with GroupNorm (GROUP_NORM.*) after every conv (this project's); conv
    blocks 1..TRAIN.FREEZE_AT (or ``freeze_at``) are frozen."""
    return VGG16Body(frozen_blocks=cfg.TRAIN.FREEZE_AT if freeze_at is None else freeze_at,
                     norm=group_norm_spec(cfg))


def resnet_roi_head_from_config(cfg, in_channels):
    """res5 head on RoIs pooled at FAST_RCNN.ROI_XFORM_RESOLUTION (first stride = it // 7).

    The block count follows the conv4 body named by MODEL.CONV_BODY (2 for ResNet-18,
    Detectron's 3 otherwise); it runs in MODEL.BODY_PRECISION like the body.
    """
    resolution = cfg.FAST_RCNN.ROI_XFORM_RESOLUTION
    if resolution < 7:
        raise ConfigError(
            f"FAST_RCNN.ROI_XFORM_RESOLUTION={resolution}: the res5 RoI head needs >= 7 "
            "(its first block strides by resolution // 7 before 7x7 average pooling)"
        )
    depth, num_blocks = roi_res5_blocks(cfg)
    return ResNetRoIHead(
        in_channels=in_channels,
        num_blocks=num_blocks,
        first_stride=resolution // 7,
        precision=cfg.MODEL.BODY_PRECISION,
        **resnet_block_options(cfg, depth),
    )


def vgg16_roi_head_from_config(cfg, in_channels):
    """fc6/fc7 head, in MODEL.BODY_PRECISION like the body; Detectron pools its RoIs at 7x7
    whatever ROI_XFORM_RESOLUTION says."""
    return VGG16RoIHead(in_channels=in_channels, precision=cfg.MODEL.BODY_PRECISION)


def body_features(backbone, images, precision):
    """Feature maps of ``images`` (N, 3, H, W), the body run in the MODEL.BODY_PRECISION
    ``precision``; the maps come back in float32 for the heads, box coding and losses."""
    with body_precision(precision, images.device.type):
        features = backbone(body_layout(images, backbone))
    return type(features)((name, f.float()) for name, f in features.items())


def build_backbone(cfg):
    """The body named by MODEL.CONV_BODY: an nn.Module returning an ordered dict of feature
    maps, with ``out_channels`` and ``strides`` dicts keyed by the same names."""
    return CONV_BODY.get(cfg.MODEL.CONV_BODY)(cfg)


def build_roi_box_head(cfg, in_channels):
    """The RoI box head named by FAST_RCNN.ROI_BOX_HEAD, on pooled features of ``in_channels``.

    Returns an nn.Module mapping (R, in_channels, S, S) to (R, head.out_dim).
    """
    return ROI_BOX_HEAD.get(cfg.FAST_RCNN.ROI_BOX_HEAD)(cfg, in_channels)
