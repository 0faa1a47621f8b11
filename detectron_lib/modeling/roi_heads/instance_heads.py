"""The kinds of RoI head that run on a generalized R-CNN's boxes (masks, keypoints, ...).

A kind registers its builder with the model attribute that holds it and the config switch
that turns it on:

    @register_instance_head("mask_heads", "MODEL.MASK_ON")
    def build_mask_roi_heads(cfg, backbone_out_channels, backbone_strides, box_head=None): ...

``build_generalized_rcnn`` builds every kind whose switch is on, in registration order (the
import order of ``modeling/roi_heads/__init__.py``), and the model runs them in that order.
A head's ``forward(features, instances, targets=None, scales=None)`` returns (instances,
losses): in training ``instances`` are the box head's sampled RoIs and ``targets`` the ground
truth; in inference they are the detections in resized-image pixels, ``scales`` the resize
factors, and the head returns copies with its fields added.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceHeadKind:
    attribute: str   # the model attribute holding the head, e.g. "mask_heads"
    switch: str      # the config key turning it on, e.g. "MODEL.MASK_ON"
    build: object    # build(cfg, backbone_out_channels, backbone_strides, box_head) -> module

    def enabled(self, cfg):
        node = cfg
        for part in self.switch.split("."):
            node = getattr(node, part)
        return bool(node)


INSTANCE_HEADS = []


def register_instance_head(attribute, switch):
    """Decorator registering an instance-head builder (see the module docstring)."""
    def decorator(build):
        if any(kind.attribute == attribute for kind in INSTANCE_HEADS):
            raise ValueError(f"an instance head is already registered as '{attribute}'")
        INSTANCE_HEADS.append(InstanceHeadKind(attribute, switch, build))
        return build
    return decorator
