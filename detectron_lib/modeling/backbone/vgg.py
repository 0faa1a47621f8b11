"""VGG16 conv5 body and its fc6/fc7 RoI head, as Detectron's modeling/VGG16.py.

Body: conv1_1..conv5_3 (3x3, pad 1, bias, ReLU after each), 2x2/2 max-pools after conv1_2,
conv2_2, conv3_3 and conv4_3; no pool5, so the output "conv5_3" has stride 16 and 512 channels.
Detectron stops gradients at pool2, so conv1_* and conv2_* never train. This project adds a
GroupNorm variant (a norm after every conv, which then has no bias) for training from scratch.
Head: fc6 (512*7*7 -> 4096) + ReLU, fc7 (4096 -> 4096) + ReLU on 7x7 pooled RoI features.
"""
from collections import OrderedDict

from torch import nn
from torch.nn import functional as F

from detectron_lib import ops
from detectron_lib.modeling.backbone.layers import FC, Conv2dNorm, freeze_
from detectron_lib.modeling.backbone.precision import run_in_precision

# (block index, number of convs, output channels)
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_FROZEN_BLOCKS = 2
VGG16_ROI_RESOLUTION = 7


class VGG16Body(nn.Module):
    """VGG16 up to conv5_3 (stride 16, 512 channels).

    ``frozen_blocks``: conv blocks 1..frozen_blocks get requires_grad False (Detectron: 2).
    ``norm``: "" (Detectron's VGG16: convs with bias) or a GroupNorm NormSpec after every conv.
    forward(images (N, 3, H, W)) -> OrderedDict {"conv5_3": (N, 512, ~H/16, ~W/16)}, with
    ``out_channels`` and ``strides`` dicts keyed "conv5_3".
    """

    def __init__(self, frozen_blocks=VGG16_FROZEN_BLOCKS, weight_fill="XavierFill", norm=""):
        super().__init__()
        self.blocks = nn.ModuleList()
        in_channels = 3
        for block, num_convs, channels in VGG16_BLOCKS:
            convs = nn.Sequential()
            for index in range(1, num_convs + 1):
                convs.add_module(f"conv{block}_{index}", Conv2dNorm(
                    in_channels, channels, 3, padding=1, norm=norm, weight_fill=weight_fill,
                    detectron_name=f"conv{block}_{index}",
                ))
                in_channels = channels
            self.blocks.append(convs)
        for convs in self.blocks[:frozen_blocks]:
            freeze_(convs)
        self.out_channels = {"conv5_3": in_channels}
        self.strides = {"conv5_3": 16}

    def forward(self, images):
        x = images
        for index, convs in enumerate(self.blocks):
            for conv in convs:
                x = F.relu(conv(x))
            if index < len(self.blocks) - 1:
                x = ops.max_pool2d(x, kernel_size=2, stride=2)
        return OrderedDict(conv5_3=x)


class VGG16RoIHead(nn.Module):
    """fc6 + ReLU + fc7 + ReLU on RoI features pooled to 7x7: add_VGG16_roi_fc_head.

    forward(x (R, in_channels, 7, 7)) -> (R, 4096), float32. fc6/fc7 are the ImageNet VGG16's
    own layers and run in the body's MODEL.BODY_PRECISION (``precision``); fc6 (25088 x 4096)
    is the head's main cost.
    """

    def __init__(self, in_channels=512, hidden_dim=4096, resolution=VGG16_ROI_RESOLUTION,
                 weight_fill="XavierFill", precision="float32"):
        super().__init__()
        self.resolution = resolution
        self.precision = precision
        self.fc6 = FC(in_channels * resolution * resolution, hidden_dim, weight_fill, "fc6")
        self.fc7 = FC(hidden_dim, hidden_dim, weight_fill, "fc7")
        self.out_dim = hidden_dim

    def forward(self, x):
        return run_in_precision(self.precision, self._layers, x)

    def _layers(self, x):
        x = F.relu(self.fc6(x.flatten(1)))
        return F.relu(self.fc7(x))
