"""Parity with torchvision: its fasterrcnn_resnet50_fpn and maskrcnn_resnet50_fpn with seeded
random weights, imported into ours with configs/torchvision/*.yaml, give the same detections
on the same photo: boxes within 0.01 px, the same labels, scores within 1e-4, masks with
IoU > 0.99.

Reference: torchvision's own models (weights=None, weights_backbone=None), fed the RGB photo
in [0, 1] as torchvision expects; ours is fed the same photo as uint8 BGR through the
Predictor, so pixel order, means and stds, weight import, anchors, RPN, RoIAlign, box coding,
post-processing and mask pasting are all compared. The photo is 256 x 320 at TEST.SCALE 256,
so neither side resizes it (their resampling differs: PIL vs. F.interpolate). Batch-norm
statistics are calibrated on the photo (one training-mode pass), so activations are well
scaled and scores spread out instead of saturating at 1.0 with near-ties in every rank.
"""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from detectron_lib.config import load_config
from detectron_lib.inference.predictor import Predictor

HEIGHT, WIDTH = 256, 320
PHOTO = "17790319373_bd19b24cfc_k.jpg"


def _photo_rgb(reference_dir):
    image = Image.open(reference_dir / "demo_images" / PHOTO).convert("RGB")
    return np.asarray(image.resize((WIDTH, HEIGHT), Image.BILINEAR))


def _torchvision_model(name, rgb):
    """torchvision's model with seeded random weights, BN statistics calibrated on ``rgb``,
    and thresholds that keep 100 detections."""
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, min_size=HEIGHT, max_size=WIDTH,
        box_score_thresh=0.0, box_detections_per_img=100)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics := the photo's
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    model.backbone.body.train()
    with torch.no_grad():
        model.backbone.body(model.transform([image])[0].tensors)
    return model.eval(), image


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn"])
def test_same_detections_as_torchvision(reference_dir, repo_root, tmp_path, name):
    torch.set_num_threads(1)
    rgb = _photo_rgb(reference_dir)
    reference_model, image = _torchvision_model(name, rgb)
    weights = tmp_path / f"{name}.pth"
    torch.save(reference_model.state_dict(), weights)
    cfg = load_config(repo_root / "configs" / "torchvision" / f"{name}.yaml", [
        "TEST.SCALE", str(HEIGHT), "TEST.MAX_SIZE", str(WIDTH), "TEST.SCORE_THRESH", "0.0",
        "DEVICE", "cpu", "MODEL.BODY_PRECISION", "float32"])
    with torch.no_grad():
        (expected,) = reference_model([image])
    ours = Predictor(cfg, weights)(np.ascontiguousarray(rgb[:, :, ::-1]))

    assert len(expected["boxes"]) == 100 and len(ours) == 100
    torch.testing.assert_close(ours.boxes, expected["boxes"], rtol=0, atol=0.01)
    assert torch.equal(ours.classes, expected["labels"])
    torch.testing.assert_close(ours.scores, expected["scores"], rtol=0, atol=1e-4)
    if name.startswith("maskrcnn"):
        reference_masks = expected["masks"][:, 0] > cfg.MRCNN.THRESH_BINARIZE
        inter = (ours.masks & reference_masks).flatten(1).sum(1)
        union = (ours.masks | reference_masks).flatten(1).sum(1)
        assert (union > 0).all()
        iou = inter.float() / union.float()
        assert iou.min() > 0.99, iou.min()
