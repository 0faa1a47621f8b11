"""The detector's image contract (modeling/image_io.DetectorIO) against hand-computed cases:
resizing originals to the test scale, padding to the stride, leaving an unchanged image
alone, and mapping boxes and masks back to the original image."""
import torch

from detectron_lib.modeling.image_io import DetectorIO
from detectron_lib.structures.boxes import Boxes
from detectron_lib.structures.instances import Instances


def test_originals_are_resized_normalized_and_padded():
    io = DetectorIO((10.0, 20.0, 30.0), test_scale=40, test_max_size=1000, size_divisibility=32)
    image = torch.full((3, 20, 40), 50, dtype=torch.uint8)
    batch, sizes, scales, original_sizes = io.prepare([image])
    assert scales == [2.0] and sizes == [(40, 80)] and original_sizes == [(20, 40)]
    assert batch.shape == (1, 3, 64, 96)                    # 40 x 80 padded to multiples of 32
    assert batch[0, :, 0, 0].tolist() == [40.0, 30.0, 20.0]  # 50 minus the BGR means
    assert batch[0, :, 40:].abs().sum() == 0 and batch[0, :, :, 80:].abs().sum() == 0


def test_resized_images_keep_their_scales():
    io = DetectorIO((0.0, 0.0, 0.0), test_scale=40)
    image = torch.zeros((3, 30, 50), dtype=torch.uint8)
    batch, sizes, scales, original_sizes = io.prepare([image], scales=[0.5])
    assert sizes == [(30, 50)] and scales == [0.5] and original_sizes is None


def test_an_image_at_its_test_size_is_not_requantized():
    io = DetectorIO((0.0, 0.0, 0.0), test_scale=20, test_max_size=1000)
    image = torch.full((3, 20, 30), 127.6)
    resized, scale = io.resize(image)
    assert scale == 1.0 and resized is image
    larger, scale = io.resize(image, target_size=40)
    assert scale == 2.0 and larger.dtype == torch.uint8 and larger.shape == (3, 40, 60)
    assert larger[0, 10, 10] == 128                          # rounded, not truncated


def test_results_come_back_in_original_pixels_with_pasted_masks():
    io = DetectorIO((0.0, 0.0, 0.0), mask_thresh=0.5)
    detections = Instances((40, 80), boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]])),
                           mask_probs=torch.ones(1, 14, 14))
    (result,) = io.postprocess([detections], [2.0], [(20, 40)])
    assert result.boxes.tensor.tolist() == [[0.0, 0.0, 5.0, 5.0]]
    assert result.masks.shape == (1, 20, 40)
    assert result.masks[0, :5, :5].all() and result.masks.sum() == 25
    (unknown,) = io.postprocess([detections], [2.0])         # original size unknown: no masks
    assert not unknown.has("masks")


def test_per_axis_rescale_is_detectron2s_detector_postprocess():
    # MODEL.RESCALE_PER_AXIS: a 20 x 30 original seen as 40 x 62 (x factor 30 / 62, y 1 / 2);
    # boxes and keypoints scaled per axis, clipped to the original, empty boxes dropped
    io = DetectorIO((0.0, 0.0, 0.0), rescale_per_axis=True)
    detections = Instances((40, 62), boxes=Boxes(torch.tensor([[31.0, 10.0, 62.0, 30.0],
                                                               [62.0, 0.0, 70.0, 10.0]])),
                           keypoints=torch.tensor([[[31.0, 20.0, 0.5]], [[65.0, 5.0, 0.1]]]),
                           scores=torch.tensor([0.9, 0.8]))
    (result,) = io.postprocess([detections], [2.0], [(20, 30)])
    assert result.boxes.tensor.tolist() == [[15.0, 5.0, 30.0, 15.0]]     # the second is empty once clipped
    assert result.keypoints.tolist() == [[[15.0, 10.0, 0.5]]] and len(result.scores) == 1
    (uniform,) = DetectorIO((0.0, 0.0, 0.0)).postprocess([detections], [2.0], [(20, 30)])
    assert uniform.boxes.tensor[0].tolist() == [15.5, 5.0, 31.0, 15.0] and len(uniform) == 2
