"""Transforms against hand-computed numbers: Detectron's resize rule, BGR reading, flips of
boxes and keypoints with a flip map; the detector's mean subtraction and padding to a stride
(modeling.image_io)."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron_lib.data.transforms import (
    augmentation_for_position,
    collate_batch,
    compute_resize_scale,
    prepare_sample,
    read_image_bgr,
    resize_image,
)
from detectron_lib.evaluation import boxes_to_coco_xywh
from detectron_lib.data.loader import in_box_convention
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES
from detectron_lib.modeling.image_io import DetectorIO, pad_to_batch
from detectron_lib.structures.keypoints import flip_permutation


@pytest.mark.parametrize("height, width, target, max_size, expected", [
    (480, 640, 800, 1333, 800 / 480),     # short side to 800, long 1066.7 fits
    (400, 1200, 800, 1333, 1333 / 1200),  # 800/400 would make the long side 2400 > 1333
    (600, 600, 600, 1000, 1.0),
])
def test_resize_scale_hand_computed(height, width, target, max_size, expected):
    assert compute_resize_scale(height, width, target, max_size) == pytest.approx(expected)


def test_resize_image_size():
    image = np.zeros((30, 41, 3), dtype=np.uint8)
    assert resize_image(image, 1.5).shape == (45, 62, 3)   # round(41 * 1.5) = 62


@pytest.fixture
def record(tmp_path):
    """A 20x40 image: left half red, right half blue; one box and keypoints."""
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (255, 0, 0)
    rgb[:, 20:] = (0, 0, 255)
    path = tmp_path / "im.png"
    Image.fromarray(rgb).save(path)
    return {
        "file_name": str(path), "image_id": 3, "height": 20, "width": 40,
        "boxes": np.array([[4, 2, 10, 12], [0, 0, 40, 20]], dtype=np.float32),
        "classes": np.array([1, 2]), "is_crowd": np.array([False, True]),
        "segms": [[[4, 2, 10, 2, 10, 12, 4, 12]], [[0, 0, 40, 0, 40, 20, 0, 20]]],
        "keypoints": np.array([[[5, 3, 2], [9, 4, 2], [0, 0, 0]],
                               [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=np.float32),
    }


def _continuous(record):
    """The record as the loader hands it to prepare_sample: boxes as continuous Boxes."""
    return in_box_convention([record], CONTINUOUS)[0]


def test_read_image_is_bgr(record):
    image = read_image_bgr(record["file_name"])
    assert image.shape == (20, 40, 3) and image[0, 0].tolist() == [0, 0, 255]


def test_prepare_sample_resizes_annotations(record):
    sample = prepare_sample(_continuous(record), target_size=40, max_size=1000)
    assert sample["im_scale"] == 2.0 and sample["image_size"] == (40, 80)
    image = sample["image"]
    assert image.shape == (3, 40, 80) and image.dtype == torch.uint8
    assert image[:, 5, 5].tolist() == [0, 0, 255]  # red, BGR
    # The detector's io subtracts the BGR means: red (0, 0, 255) -> (-10, -20, 225).
    batch, sizes = DetectorIO((10, 20, 30)).batch([image])
    assert batch.dtype == torch.float32 and sizes == [(40, 80)]
    assert batch[0, :, 5, 5].tolist() == [-10, -20, 225]
    t = sample["targets"]
    assert t["boxes"].tensor.tolist() == [[8, 4, 20, 24], [0, 0, 80, 40]]
    assert t["segms"][0] == [[8, 4, 20, 4, 20, 24, 8, 24]]
    assert t["keypoints"][0].tolist() == [[10, 6, 2], [18, 8, 2], [0, 0, 0]]


def test_flip_with_keypoint_flip_map_hand_computed(record):
    perm = flip_permutation(("center", "left", "right"), [("left", "right")])
    sample = prepare_sample(_continuous(record), 20, 1000, flip=True, keypoint_flip_perm=perm)
    assert sample["flipped"] and sample["im_scale"] == 1.0
    # Red is now on the right: BGR (0, 0, 255) at column 30.
    assert sample["image"][:, 0, 30].tolist() == [0, 0, 255]
    t = sample["targets"]
    assert t["boxes"].tensor.tolist() == [[30, 2, 36, 12], [0, 0, 40, 20]]     # x -> 40 - x
    # Flipped x (35, 31, -) then left/right swapped: the 'left' slot gets old 'right'.
    assert t["keypoints"][0].tolist() == [[35, 3, 2], [0, 0, 0], [31, 4, 2]]
    assert t["segms"][0] == [[36, 2, 30, 2, 30, 12, 36, 12]]


def test_pixel_index_targets_hand_computed(record):
    # Detectron's loader: COCO [4, 2, 6, 10] -> x2 = 4 + 6 - 1; flipped x -> 40 - 1 - x.
    record = {**record, "keypoints": None}
    record = in_box_convention([record], PIXEL_INDICES)[0]
    plain = prepare_sample(record, 20, 1000)
    assert plain["targets"]["boxes"].tensor.tolist() == [[4, 2, 9, 11], [0, 0, 39, 19]]
    assert plain["targets"]["boxes"].convention is PIXEL_INDICES
    flipped = prepare_sample(record, 20, 1000, flip=True)
    assert flipped["targets"]["boxes"].tensor.tolist() == [[30, 2, 35, 11], [0, 0, 39, 19]]


@pytest.mark.parametrize("convention", [CONTINUOUS, PIXEL_INDICES])
@pytest.mark.parametrize("flip", [False, True])
def test_target_boxes_written_back_as_coco_results_are_the_annotations(record, convention, flip):
    # A model that learned its targets exactly and whose boxes are written out as evaluation
    # writes them (in the same convention) reproduces the annotation's [x, y, w, h].
    record = {**record, "keypoints": None}
    sample = prepare_sample(in_box_convention([record], convention)[0], 40, 1000, flip=flip)
    boxes = sample["targets"]["boxes"] / sample["im_scale"]
    expected = [[30, 2, 6, 10] if flip else [4, 2, 6, 10], [0, 0, 40, 20]]
    np.testing.assert_allclose(boxes_to_coco_xywh(boxes.regions()), expected, atol=1e-5)


def test_pad_to_divisibility_32():
    a, b = torch.ones(3, 50, 70), 2 * torch.ones(3, 64, 33)
    batch = pad_to_batch([a, b], size_divisibility=32)
    assert batch.shape == (2, 3, 64, 96)
    assert batch[0, :, :50, :70].eq(1).all() and batch[0, :, 50:].eq(0).all()
    assert batch[1, :, :, :33].eq(2).all() and batch[1, :, :, 33:].eq(0).all()
    assert pad_to_batch([a, b], 0).shape == (2, 3, 64, 70)


def test_collate_splits_crowd_and_builds_instances(record):
    samples = [prepare_sample(_continuous(record), 20, 1000)]
    batch = collate_batch(samples)
    assert [i.shape for i in batch.images] == [(3, 20, 40)] and batch.image_sizes == [(20, 40)]
    target = batch.targets[0]
    assert len(target) == 1 and target.classes.tolist() == [1]      # the crowd box is apart
    assert batch.crowd_boxes[0].tensor.tolist() == [[0, 0, 40, 20]]
    assert not batch.training and "targets" not in batch.model_inputs("cpu")


def test_prepare_sample_without_target_size_keeps_the_original(record):
    sample = prepare_sample(_continuous(record), None, 1000)
    assert sample["im_scale"] is None and sample["image"].shape == (3, 20, 40)
    assert sample["targets"]["boxes"].tensor.tolist() == [[4, 2, 10, 12], [0, 0, 40, 20]]
    batch = collate_batch([sample])
    assert batch.im_scales is None and batch.model_inputs("cpu")["scales"] is None


def test_augmentation_is_pure_function_of_seed_and_position():
    draws = [augmentation_for_position(3, p, (400, 500, 600), True) for p in range(200)]
    assert draws == [augmentation_for_position(3, p, (400, 500, 600), True) for p in range(200)]
    assert {d[0] for d in draws} == {400, 500, 600}
    assert 60 < sum(d[1] for d in draws) < 140                       # about half flipped
    assert not any(augmentation_for_position(3, p, (400,), False)[1] for p in range(50))
    assert draws != [augmentation_for_position(4, p, (400, 500, 600), True) for p in range(200)]
