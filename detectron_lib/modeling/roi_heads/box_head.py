"""Box-head feature extractors on pooled RoI features (Detectron's fast_rcnn_heads).

- ``MLPHead``: fast_rcnn_heads.add_roi_2mlp_head, two fully connected layers (FPN baselines).
- ``ConvFCHead``: add_roi_Xconv1fc_head / add_roi_Xconv1fc_gn_head, a stack of 3x3 convs
  (optionally GroupNorm) then one fully connected layer.

Each maps (R, C, S, S) pooled features to (R, out_dim) and exposes ``out_dim``; each runs in
MODEL.HEAD_PRECISION (``precision``) and returns float32 for the predictor.
"""
import torch.nn.functional as F
from torch import nn

from detectron_lib.modeling.backbone.build import group_norm_spec
from detectron_lib.modeling.backbone.precision import run_in_precision
from detectron_lib.modeling.init import msra_fill_, xavier_fill_


class MLPHead(nn.Module):
    """flatten -> fc6 -> ReLU -> fc7 -> ReLU (Caffe2's default XavierFill weights, zero bias)."""

    def __init__(self, in_channels, resolution, hidden_dim, precision="float32"):
        super().__init__()
        self.precision = precision
        self.fc6 = nn.Linear(in_channels * resolution * resolution, hidden_dim)
        self.fc7 = nn.Linear(hidden_dim, hidden_dim)
        for fc in (self.fc6, self.fc7):
            xavier_fill_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.out_dim = hidden_dim

    def forward(self, x):
        return run_in_precision(self.precision, self._layers, x)

    def _layers(self, x):
        x = F.relu(self.fc6(x.flatten(1)))
        return F.relu(self.fc7(x))


class ConvFCHead(nn.Module):
    """``num_convs`` x (3x3 conv -> [GroupNorm] -> ReLU), flatten, fc6 -> ReLU.

    norm_factory: None for plain convs with bias, or ``channels -> nn.Module`` (GroupNorm);
    convs before a norm carry no bias, as in Detectron's ConvGN.
    """

    def __init__(self, in_channels, resolution, num_convs, conv_dim, hidden_dim, norm_factory=None,
                 precision="float32"):
        super().__init__()
        self.precision = precision
        layers = []
        for i in range(num_convs):
            conv = nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1,
                             bias=norm_factory is None)
            msra_fill_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            if norm_factory is not None:
                layers.append(norm_factory(conv_dim))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.fc6 = nn.Linear(conv_dim * resolution * resolution, hidden_dim)
        xavier_fill_(self.fc6.weight)
        nn.init.zeros_(self.fc6.bias)
        self.out_dim = hidden_dim

    def forward(self, x):
        return run_in_precision(self.precision, self._layers, x)

    def _layers(self, x):
        return F.relu(self.fc6(self.convs(x).flatten(1)))


def mlp_head_from_config(cfg, in_channels):
    return MLPHead(in_channels, cfg.FAST_RCNN.ROI_XFORM_RESOLUTION, cfg.FAST_RCNN.MLP_HEAD_DIM,
                   precision=cfg.MODEL.HEAD_PRECISION)


def conv_fc_head_from_config(cfg, in_channels):
    f = cfg.FAST_RCNN
    return ConvFCHead(in_channels, f.ROI_XFORM_RESOLUTION, f.NUM_STACKED_CONVS, f.CONV_HEAD_DIM,
                      f.MLP_HEAD_DIM, precision=cfg.MODEL.HEAD_PRECISION)


def conv_fc_gn_head_from_config(cfg, in_channels):
    f = cfg.FAST_RCNN
    return ConvFCHead(in_channels, f.ROI_XFORM_RESOLUTION, f.NUM_STACKED_CONVS, f.CONV_HEAD_DIM,
                      f.MLP_HEAD_DIM, norm_factory=group_norm_spec(cfg),
                      precision=cfg.MODEL.HEAD_PRECISION)
