"""torchvision's detection models as references: seeded random weights with batch-norm
statistics calibrated on a photo, and the pairing of their detections with ours.

Shared by tests/test_torchvision_parity.py and benchmarks/bench_mask_rcnn.py (which puts
this directory on its import path).
"""
import numpy as np
import torch
import torchvision
from PIL import Image

PHOTO = "17790319373_bd19b24cfc_k.jpg"


def photo_rgb(reference_dir, height, width, name=PHOTO):
    """A demo photo resized (PIL bilinear) to (height, width, 3) uint8 RGB."""
    image = Image.open(reference_dir / "demo_images" / name).convert("RGB")
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def rgb_to_tensor(rgb):
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1], as torchvision's models take it."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255


def torchvision_model(name, rgb, min_size=None, max_size=None):
    """torchvision's model ``name`` with seeded random weights, BN statistics calibrated on
    ``rgb`` (H, W, 3) uint8, and thresholds that keep 100 detections; in eval mode.

    min_size / max_size default to rgb's height / width, so the model does not resize it.
    Returns (model, rgb as a (3, H, W) tensor in [0, 1]).
    """
    torch.manual_seed(0)
    height, width = rgb.shape[:2]
    sizes = dict(min_size=min_size or height, max_size=max_size or width)
    if name.startswith("retinanet"):
        model = torchvision.models.detection.retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, score_thresh=0.0, detections_per_img=100,
            **sizes)
        with torch.no_grad():  # the background logit of every anchor, as trained: never wins
            model.head.classification_head.cls_logits.bias.view(9, 91)[:, 0] = -20.0
    else:
        model = getattr(torchvision.models.detection, name)(
            weights=None, weights_backbone=None, box_score_thresh=0.0,
            box_detections_per_img=100, **sizes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics := the photo's
    image = rgb_to_tensor(rgb)
    model.backbone.body.train()
    with torch.no_grad():
        model.backbone.body(model.transform([image])[0].tensors)
    return model.eval(), image


def pair_detections(expected, ours):
    """Index into ``ours`` (Instances) of each of torchvision's ``expected`` detections: the
    same label and a box within 0.01 px, one to one. Asserts that every one has a partner."""
    order, matched = match_detections(expected, ours)
    assert matched.all()
    assert len(set(order.tolist())) == len(order)  # one to one
    return order


def match_detections(expected, ours, tolerance=0.01):
    """(order, matched): for each expected detection the index of the nearest of ours with the
    same label (max coordinate distance), and whether that one lies within ``tolerance`` px."""
    distance = (expected["boxes"][:, None] - ours.boxes.tensor[None]).abs().amax(dim=2)
    distance[expected["labels"][:, None] != ours.classes[None]] = float("inf")
    if distance.shape[1] == 0:
        return (torch.zeros(len(distance), dtype=torch.int64),
                torch.zeros(len(distance), dtype=torch.bool))
    order = distance.argmin(dim=1)
    return order, distance[torch.arange(len(order)), order] <= tolerance
