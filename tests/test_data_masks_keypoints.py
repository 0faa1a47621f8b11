"""Mask and keypoint structures against independent references: pycocotools encoding,
numpy flips of decoded bitmaps, torchvision's roi_align, hand-computed keypoint flips."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torchvision.ops import roi_align

from detectron_lib.errors import DatasetError
from detectron_lib.structures import masks
from detectron_lib.structures.keypoints import flip_keypoints, flip_permutation, scale_keypoints

# pycocotools' decode trips a numpy-2 deprecation warning (harmless, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _random_blob(rng, height=40, width=50):
    yy, xx = np.mgrid[:height, :width]
    blob = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 14)
        blob |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return blob.astype(np.uint8)


def test_polygon_rasterization_matches_pixel_count():
    """A 10x5 axis-aligned rectangle on pixel corners covers exactly 50 pixels."""
    bitmap = masks.polygons_to_bitmap([[2, 3, 12, 3, 12, 8, 2, 8]], 20, 20)
    assert bitmap.sum() == 50 and bitmap[3:8, 2:12].all()
    assert masks.bitmap_tight_box(bitmap).tolist() == [2, 3, 12, 8]
    assert masks.bitmap_tight_box(np.zeros((4, 4))) is None


def test_rle_round_trip_and_uncompressed_counts():
    rng = np.random.default_rng(0)
    blob = _random_blob(rng)
    rle = masks.bitmap_to_rle(blob)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(masks.rle_to_bitmap(rle), blob)
    assert masks.segm_area(rle, *blob.shape) == mask_util.area(mask_util.encode(
        np.asfortranarray(blob)))
    # COCO crowd annotations use uncompressed counts (column-major run lengths).
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}
    assert masks.rle_to_bitmap(uncompressed).T.ravel().tolist() == [0, 1, 1, 0, 0, 0]


def test_bitmap_to_polygon_is_exact_or_none():
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(40):
        blob = _random_blob(rng)
        polygon = masks.bitmap_to_polygon(blob)
        if polygon is not None:
            found += 1
            assert np.array_equal(masks.polygons_to_bitmap([polygon], *blob.shape), blob)
    assert found > 10
    ring = np.zeros((10, 10), dtype=np.uint8)
    ring[2:8, 2:8] = 1
    ring[4:6, 4:6] = 0                                 # a hole: not one simple region
    assert masks.bitmap_to_polygon(ring) is None
    two_parts = np.zeros((10, 10), dtype=np.uint8)
    two_parts[1:3, 1:3] = two_parts[6:9, 6:9] = 1
    assert masks.bitmap_to_polygon(two_parts) is None


def test_flips_match_numpy_fliplr():
    rng = np.random.default_rng(2)
    blob = _random_blob(rng)
    rle = masks.bitmap_to_rle(blob)
    assert np.array_equal(masks.rle_to_bitmap(masks.flip_rle(rle)), blob[:, ::-1])
    polygon = [[2, 3, 12, 3, 12, 8, 2, 8]]
    flipped = masks.flip_polygons(polygon, 20)
    assert flipped == [[18, 3, 8, 3, 8, 8, 18, 8]]
    assert np.array_equal(masks.polygons_to_bitmap(flipped, 20, 20),
                          masks.polygons_to_bitmap(polygon, 20, 20)[:, ::-1])
    # Detectron's pixel-index convention: x -> 20 - 1 - x, as its flip_segms.
    assert masks.flip_polygons(polygon, 20 - 1) == [[17, 3, 7, 3, 7, 8, 17, 8]]
    assert masks.flip_segm(polygon, 20 - 1) == [[17, 3, 7, 3, 7, 8, 17, 8]]
    assert masks.flip_segm(rle, 20 - 1) == masks.flip_rle(rle)


def test_resize_rle_nearest():
    bitmap = np.zeros((4, 6), dtype=np.uint8)
    bitmap[1:3, 2:5] = 1
    resized = masks.rle_to_bitmap(masks.resize_rle(masks.bitmap_to_rle(bitmap), 8, 12))
    assert np.array_equal(resized, bitmap.repeat(2, axis=0).repeat(2, axis=1))
    assert masks.scale_polygons([[1, 2, 3, 4, 5, 6]], 2.0) == [[2, 4, 6, 8, 10, 12]]


def test_polygon_mask_in_box_hand_computed():
    """Box = the square: all ones. Box twice as wide to the right: left half ones."""
    square = [[10, 10, 20, 10, 20, 20, 10, 20]]
    assert masks.polygons_to_mask_in_box(square, [10, 10, 20, 20], 14).all()
    half = masks.polygons_to_mask_in_box(square, [10, 10, 30, 20], 14)
    assert half[:, :7].all() and not half[:, 7:].any()


def test_bitmap_mask_in_box_matches_torchvision_roi_align():
    rng = np.random.default_rng(3)
    blob = _random_blob(rng)
    for box in ([5.0, 4.0, 30.5, 33.0], [0.0, 0.0, 50.0, 40.0], [-3.0, 10.2, 12.0, 45.0]):
        ours = masks.bitmap_to_mask_in_box(blob, box, 28)
        reference = roi_align(torch.from_numpy(blob.astype(np.float32))[None, None],
                              torch.tensor([[0.0, *box]]), (28, 28), 1.0, 1, aligned=True)
        assert np.array_equal(ours, (reference[0, 0] >= 0.5).numpy().astype(np.uint8))


def test_keypoint_flip_with_flip_map_hand_computed():
    names = ("nose", "left_eye", "right_eye")
    perm = flip_permutation(names, [("left_eye", "right_eye")])
    assert perm.tolist() == [0, 2, 1]
    keypoints = np.array([[[5, 1, 2], [3, 2, 2], [7, 2, 1]],
                          [[0, 0, 0], [4, 4, 2], [0, 0, 0]]], dtype=np.float32)
    flipped = flip_keypoints(keypoints, 10, perm)
    # x -> 10 - x, then left/right swapped; unlabeled points stay (0, 0, 0).
    assert flipped[0].tolist() == [[5, 1, 2], [3, 2, 1], [7, 2, 2]]
    assert flipped[1].tolist() == [[0, 0, 0], [0, 0, 0], [6, 4, 2]]
    # Detectron's convention (pixel indices): x -> 10 - 1 - x, as its flip_keypoints.
    legacy = flip_keypoints(keypoints, 10 - 1, perm)
    assert legacy[0].tolist() == [[4, 1, 2], [2, 2, 1], [6, 2, 2]]
    assert legacy[1].tolist() == [[0, 0, 0], [0, 0, 0], [5, 4, 2]]
    assert scale_keypoints(keypoints, 2.0)[0, 1].tolist() == [6, 4, 2]
    with pytest.raises(DatasetError, match="left_ear"):
        flip_permutation(names, [("left_ear", "right_ear")])
