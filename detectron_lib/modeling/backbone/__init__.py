"""Backbones (ResNet / ResNeXt / VGG16 bodies, FPN), their RoI body heads and norms.

config/names.py maps Detectron's MODEL.CONV_BODY, FAST_RCNN.ROI_BOX_HEAD and RESNETS.*_FUNC
names to the builders of build.py.
"""
from detectron_lib.modeling.backbone.build import (
    body_features,
    build_backbone,
    build_roi_box_head,
    fpn_levels_from_config,
)
from detectron_lib.modeling.backbone.fpn import FPN
from detectron_lib.modeling.backbone.layers import FC, Conv2dNorm, detectron_blob_names
from detectron_lib.modeling.backbone.norms import (
    FrozenBatchNorm2d,
    NormSpec,
    get_group_gn,
    get_norm,
)
from detectron_lib.modeling.backbone.precision import (
    body_autocast_dtype,
    body_precision,
    run_in_precision,
)
from detectron_lib.modeling.backbone.resnet import ResNetBody, ResNetRoIHead
from detectron_lib.modeling.backbone.vgg import VGG16Body, VGG16RoIHead

__all__ = [
    "FC",
    "FPN",
    "Conv2dNorm",
    "FrozenBatchNorm2d",
    "NormSpec",
    "ResNetBody",
    "ResNetRoIHead",
    "VGG16Body",
    "VGG16RoIHead",
    "body_autocast_dtype",
    "body_features",
    "body_precision",
    "run_in_precision",
    "build_backbone",
    "build_roi_box_head",
    "detectron_blob_names",
    "fpn_levels_from_config",
    "get_group_gn",
    "get_norm",
]
