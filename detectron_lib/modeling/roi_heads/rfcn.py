"""R-FCN (Dai et al., 2016; Detectron's rfcn_heads.add_rfcn_outputs, MODEL.TYPE rfcn).

The whole per-RoI computation is shared over the image: two 1x1 convs on the backbone's last
map give position-sensitive score maps, G x G groups of (K+1) class maps and of 4 x (K+1)
(or 4 x 2, class-agnostic) box maps, G = RFCN.PS_GRID_SIZE. Position-sensitive RoI pooling
fills bin (i, j) of an RoI from group (i, j) only, and averaging the G x G bins ("voting")
gives the RoI's class logits and box deltas. Sampling, losses and post-processing are Fast
R-CNN's (roi_heads/fast_rcnn.py).

Channel layout (R-FCN's PSROIPool, torchvision's ps_roi_*): output channel c of bin (i, j)
reads map channel (c * G + i) * G + j.
"""
from torch import nn

from detectron_lib import ops
from detectron_lib.modeling.init import init_layer_
from detectron_lib.modeling.roi_heads.fast_rcnn import BoxROIHeads, box_roi_head_options


class RFCNPredictor(nn.Module):
    """Position-sensitive score maps, PS-RoI pooling and average voting.

    in_channels: channels of the feature map; num_classes: K+1 with background; grid_size: G;
    spatial_scale: 1 / the map's stride. method: 'RoIPoolF' pools bin means (Detectron's
    PSRoIPool), 'RoIAlign' bilinear samples (``sampling_ratio`` per bin side, <= 0 adaptive).
    Convs are filled as Detectron's: Gaussian std 0.01, zero bias.

    forward(feature (N, C, H, W), boxes_per_image [(Ri, 4)] in input pixels) ->
    (cls_logits (R, K+1), box_deltas (R, 4(K+1)) or (R, 8) class-agnostic).
    """

    def __init__(self, in_channels, num_classes, grid_size, spatial_scale,
                 cls_agnostic_bbox_reg=False, method="RoIPoolF", sampling_ratio=0):
        super().__init__()
        if method not in ("RoIPoolF", "RoIAlign"):
            raise ValueError(f"method must be RoIPoolF or RoIAlign, got '{method}'")
        num_reg_classes = 2 if cls_agnostic_bbox_reg else num_classes
        self.conv_cls = nn.Conv2d(in_channels, num_classes * grid_size ** 2, 1)
        self.conv_bbox_pred = nn.Conv2d(in_channels, 4 * num_reg_classes * grid_size ** 2, 1)
        for conv in (self.conv_cls, self.conv_bbox_pred):
            init_layer_(conv, "GaussianFill", std=0.01)
        self.grid_size = grid_size
        self.spatial_scale = spatial_scale
        self.method = method
        self.sampling_ratio = sampling_ratio

    def ps_pool(self, score_maps, rois):
        """(R, C_out, G, G) position-sensitive bins of ``score_maps`` (N, C_out * G * G, H, W)."""
        if self.method == "RoIPoolF":
            return ops.ps_roi_pool(score_maps, rois, self.grid_size, self.spatial_scale)
        return ops.ps_roi_align(score_maps, rois, self.grid_size, self.spatial_scale,
                                self.sampling_ratio)

    def forward(self, feature, boxes_per_image):
        rois = ops.boxes_to_rois([b.tensor for b in boxes_per_image], feature.dtype)
        cls_logits = self.ps_pool(self.conv_cls(feature), rois).mean(dim=(2, 3))
        box_deltas = self.ps_pool(self.conv_bbox_pred(feature), rois).mean(dim=(2, 3))
        return cls_logits, box_deltas


class RFCNROIHeads(BoxROIHeads):
    """Fast R-CNN's RoI sampling, losses and post-processing around an RFCNPredictor on the
    feature map ``in_feature``; there is no RoI pooler or box head (``box_head`` is None).

    options: BoxROIHeads' keyword arguments (RoI sampling, box coder, post-processing).
    """

    def __init__(self, predictor, in_feature, **options):
        super().__init__(None, None, predictor, [in_feature], **options)

    def predict(self, features, boxes_per_image):
        return self.predictor(features[self.in_features[0]], boxes_per_image)


def build_rfcn_roi_heads(cfg, backbone):
    """R-FCN heads on the backbone's last map: RFCN.PS_GRID_SIZE, MODEL.NUM_CLASSES and
    CLS_AGNOSTIC_BBOX_REG; FAST_RCNN.ROI_XFORM_METHOD picks PS-RoIPool (RoIPoolF, Detectron's)
    or PS-RoIAlign (RoIAlign, with ROI_XFORM_SAMPLING_RATIO)."""
    in_feature = list(backbone.out_channels)[-1]
    options = box_roi_head_options(cfg)
    predictor = RFCNPredictor(
        backbone.out_channels[in_feature], cfg.MODEL.NUM_CLASSES, cfg.RFCN.PS_GRID_SIZE,
        1.0 / backbone.strides[in_feature], cfg.MODEL.CLS_AGNOSTIC_BBOX_REG,
        method=cfg.FAST_RCNN.ROI_XFORM_METHOD, sampling_ratio=cfg.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO)
    return RFCNROIHeads(predictor, in_feature, **options)
