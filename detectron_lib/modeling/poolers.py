"""RoI feature extraction over one or several feature levels (Detectron's RoIFeatureTransform).

With FPN, each RoI is pooled from the level that matches its scale: level
``floor(4 + log2(sqrt(area) / 224))`` clamped to [ROI_MIN_LEVEL, ROI_MAX_LEVEL] (FPN paper,
Eq. 1; Detectron's map_rois_to_fpn_levels with ROI_CANONICAL_LEVEL / ROI_CANONICAL_SCALE).
"""
import math

import torch
from torch import nn

from detectron_lib import ops
from detectron_lib.errors import ConfigError


def feature_level_names(min_level, max_level, backbone_out_channels):
    """["p<min_level>", ..., "p<max_level>"], checked against the backbone's maps."""
    names = [f"p{level}" for level in range(min_level, max_level + 1)]
    missing = [n for n in names if n not in backbone_out_channels]
    if missing:
        raise ConfigError(f"the backbone provides {list(backbone_out_channels)}, not {missing}; "
                          "check the FPN.*_MIN_LEVEL / *_MAX_LEVEL keys")
    return names


def roi_feature_names(cfg, backbone_out_channels):
    """Names of the maps RoI heads pool from: the FPN levels ROI_MIN_LEVEL..ROI_MAX_LEVEL
    (FPN.FPN_ON and FPN.MULTILEVEL_ROIS), else the backbone's last map."""
    if cfg.FPN.FPN_ON and cfg.FPN.MULTILEVEL_ROIS:
        return feature_level_names(cfg.FPN.ROI_MIN_LEVEL, cfg.FPN.ROI_MAX_LEVEL,
                                   backbone_out_channels)
    return [list(backbone_out_channels)[-1]]


def assign_fpn_levels(boxes, min_level, max_level, canonical_level=4, canonical_scale=224):
    """(N,) int64 FPN level of each box (Boxes (N, 4)), its scale the square root of its area
    in the boxes' convention."""
    scale = boxes.area().clamp(min=0).sqrt()
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_scale + 1e-6))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class RoIPooler(nn.Module):
    """Pools fixed-size features for RoIs from a list of maps with the given strides.

    method: 'RoIAlign' or 'RoIPoolF' (MODEL.ROI_XFORM_METHOD names). aligned: False is
    Detectron's RoIAlign, True the half-pixel-corrected one of detectron2 / torchvision.
    """

    def __init__(self, output_size, strides, sampling_ratio=0, method="RoIAlign", aligned=False,
                 canonical_level=4, canonical_scale=224):
        super().__init__()
        if method not in ("RoIAlign", "RoIPoolF"):
            raise ValueError(f"ROI_XFORM_METHOD must be RoIAlign or RoIPoolF, got '{method}'")
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.scales = [1.0 / s for s in strides]
        self.levels = [int(round(math.log2(s))) for s in strides]
        self.sampling_ratio = sampling_ratio
        self.method = method
        self.aligned = aligned
        self.canonical_level = canonical_level
        self.canonical_scale = canonical_scale

    def _pool(self, feature, rois, scale):
        if self.method == "RoIPoolF":
            return ops.roi_pool(feature, rois, self.output_size, scale)
        return ops.roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features, boxes_per_image):
        """features: [(N, C, H, W)] in stride order. boxes_per_image: [Boxes (Ni, 4)], whose
        areas in their convention assign FPN levels.

        Returns (sum Ni, C, out_h, out_w), rows in the order of the concatenated boxes.
        """
        rois = ops.boxes_to_rois([b.tensor for b in boxes_per_image], features[0].dtype)
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = assign_fpn_levels(boxes_per_image[0].like(rois[:, 1:]), self.levels[0],
                                   self.levels[-1], self.canonical_level, self.canonical_scale)
        levels -= self.levels[0]
        if self.method == "RoIAlign":
            return ops.multilevel_roi_align(features, rois, levels, self.output_size, self.scales,
                                            self.sampling_ratio, self.aligned)
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for index, (feature, scale) in enumerate(zip(features, self.scales)):
            members = torch.nonzero(levels == index).flatten()
            if members.numel():
                out = out.index_copy(0, members, self._pool(feature, rois[members], scale))
        return out


def roi_pooler_from_config(cfg, head_cfg, strides, resolution=None):
    """RoIPooler from a head's ROI_XFORM_* keys (cfg.FAST_RCNN, cfg.MRCNN or cfg.KRCNN), the FPN
    canonical level / scale and the MODEL box switches; ``resolution`` overrides the head's."""
    return RoIPooler(
        resolution or head_cfg.ROI_XFORM_RESOLUTION,
        strides,
        sampling_ratio=head_cfg.ROI_XFORM_SAMPLING_RATIO,
        method=head_cfg.ROI_XFORM_METHOD,
        aligned=cfg.MODEL.ROI_ALIGN_ALIGNED,
        canonical_level=cfg.FPN.ROI_CANONICAL_LEVEL,
        canonical_scale=cfg.FPN.ROI_CANONICAL_SCALE,
    )
