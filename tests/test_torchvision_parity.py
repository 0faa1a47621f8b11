"""Parity with torchvision: its fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn,
keypointrcnn_resnet50_fpn and retinanet_resnet50_fpn with seeded random weights, imported into
ours with configs/torchvision/*.yaml, give the same 100 detections on the same photo: boxes
within 0.01 px, the same labels, scores within 1e-4, mask probabilities (per cell and pasted
into the image) within the noise of the mask logits, keypoints within 0.01 px.

Reference: torchvision's own models (weights=None, weights_backbone=None), fed the RGB photo
in [0, 1] as torchvision expects; ours is fed the same photo as uint8 BGR through the
Predictor, so pixel order, means and stds, weight import, anchors, RPN, RoIAlign, box coding,
post-processing, mask pasting and keypoint decoding are all compared. The photo is 256 x 320
(256 x 384 for RetinaNet) at TEST.SCALE 256, so neither side resizes it (their resampling
differs: PIL vs. F.interpolate). Batch-norm statistics are calibrated on the photo (one
training-mode pass), so activations are well scaled and scores spread out instead of
saturating at 1.0.

The sizes are multiples of the coarsest stride (64; 128 for RetinaNet's P7) because
torchvision places the anchors of a level at multiples of (padded image size // feature map
size), not of the level's stride: for an 800 x 1088 input its P6 anchors sit 61 px apart
vertically instead of 64. That is a torchvision bug (the anchors drift away from the feature
cells that predict them); ours keeps 2**level.

Float noise (the two sides sum convolutions in different orders; ~1e-6 in scores) decides
between exact near-ties, so detections are paired by label and box rather than by rank, and
a keypoint is compared where its heatmap maximum beats the runner-up by more than that noise.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron_lib.config import load_config
from detectron_lib.inference.predictor import Predictor
from detectron_lib.ops.masks import paste_masks_legacy
from torchvision_reference import pair_detections, photo_rgb, torchvision_model

# heatmap logits of the two sides differ by ~1e-3; a maximum this much clearer is unambiguous
KEYPOINT_MARGIN = 0.05
# Mask logits agree within this fraction of their largest magnitude (at most 2.6e-4 measured
# on an Intel Xeon, natively and with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2: float32
# sums in another order through some 60 layers)
MASK_LOGIT_RTOL = 1e-3
# float32 rounding of the bilinear weights in pasting
PASTE_ROUNDING = 1e-6


def _clear_maxima(heatmaps, boxes):
    """(N, K) bool: keypoints whose maximum in the box-sized (bicubic) heatmap beats the
    runner-up by KEYPOINT_MARGIN, as torchvision's heatmaps_to_keypoints resizes them."""
    clear = torch.zeros(heatmaps.shape[:2], dtype=torch.bool)
    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1).ceil().to(torch.int64).tolist()
    for i, (width, height) in enumerate(sizes):
        resized = F.interpolate(heatmaps[i][:, None], size=(height, width), mode="bicubic",
                                align_corners=False).flatten(1)
        top2 = resized.topk(2, dim=1).values
        clear[i] = top2[:, 0] - top2[:, 1] > KEYPOINT_MARGIN
    return clear


def _assert_same_mask_probabilities(expected, ours, pairs, logits, height, width):
    """Our mask probabilities, per cell and pasted into the image, are torchvision's within
    the float noise of its mask logits.

    Random weights put many mask logits near 0, where noise of ~1e-4 of the logits' scale
    (another CPU sums the convolutions in another order) flips pixels across the 0.5
    threshold, so binary masks would compare that noise, not the computation. Probabilities
    move at most a quarter as much as logits (sigmoid's slope), and pasting resamples them
    bilinearly, a convex combination, which cannot widen a difference; both sides are pasted
    into torchvision's boxes, since ours (within 0.01 px) may round to other whole pixels.
    """
    logits = logits[torch.arange(len(pairs)), expected["labels"]]  # (N, M, M) of each label
    tolerance = MASK_LOGIT_RTOL * logits.abs().max() / 4
    cell_probs = ours.mask_probs[pairs]
    assert (cell_probs - logits.sigmoid()).abs().max() <= tolerance
    pasted = paste_masks_legacy(cell_probs, expected["boxes"], height, width)
    difference = (pasted - expected["masks"][:, 0]).abs().max()
    assert difference <= tolerance + PASTE_ROUNDING, (difference, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("name,height,width", [
    ("fasterrcnn_resnet50_fpn", 256, 320), ("maskrcnn_resnet50_fpn", 256, 320),
    ("keypointrcnn_resnet50_fpn", 256, 320), ("retinanet_resnet50_fpn", 256, 384),
])
def test_same_detections_as_torchvision(reference_dir, repo_root, tmp_path, name, height, width):
    torch.set_num_threads(1)
    rgb = photo_rgb(reference_dir, height, width)
    reference_model, image = torchvision_model(name, rgb)
    weights = tmp_path / f"{name}.pth"
    torch.save(reference_model.state_dict(), weights)
    cfg = load_config(repo_root / "configs" / "torchvision" / f"{name}.yaml", [
        "TEST.SCALE", str(height), "TEST.MAX_SIZE", str(width), "TEST.SCORE_THRESH", "0.0",
        "RETINANET.INFERENCE_TH", "0.0", "TEST.DETECTIONS_PER_IM", "100", "DEVICE", "cpu",
        "MODEL.BODY_PRECISION", "float32"])
    heatmaps, mask_logits = [], []
    if name.startswith("keypointrcnn"):
        reference_model.roi_heads.keypoint_predictor.register_forward_hook(
            lambda module, inputs, output: heatmaps.append(output))
    if name.startswith("maskrcnn"):
        reference_model.roi_heads.mask_predictor.register_forward_hook(
            lambda module, inputs, output: mask_logits.append(output))
    with torch.no_grad():
        (expected,) = reference_model([image])
    ours = Predictor(cfg, weights)(np.ascontiguousarray(rgb[:, :, ::-1]))

    assert len(expected["boxes"]) == 100 and len(ours) == 100
    pairs = pair_detections(expected, ours)
    torch.testing.assert_close(ours.scores[pairs], expected["scores"], rtol=0, atol=1e-4)
    if name.startswith("maskrcnn"):
        _assert_same_mask_probabilities(expected, ours, pairs, mask_logits[0], height, width)
    if name.startswith("keypointrcnn"):
        keypoints = ours.keypoints[pairs]
        clear = _clear_maxima(heatmaps[0], expected["boxes"])
        assert clear.float().mean() > 0.5  # most keypoints are compared
        xy_error = (keypoints[:, :, :2] - expected["keypoints"][:, :, :2]).abs().amax(dim=2)
        assert xy_error[clear].max() <= 0.01
        torch.testing.assert_close(keypoints[:, :, 2], expected["keypoints_scores"], rtol=0, atol=1e-2)
