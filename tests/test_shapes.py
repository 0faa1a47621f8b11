"""Synthetic shapes generator: determinism, COCO validity (pycocotools as the reference),
visible-mask consistency and star keypoints on hand-built scenes."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from detectron_lib.data import shapes
from detectron_lib.data.shapes import Shape, generate_shapes_dataset, render_scene

# COCO.annToMask (pycocotools itself) trips a numpy-2 deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def plain_dataset(tmp_path_factory):
    """60 images with 2 worker processes (the pool path)."""
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(root / "a", num_images=60, seed=7, workers=2)


@pytest.fixture(scope="module")
def keypoint_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_kp")
    return generate_shapes_dataset(root / "kp", num_images=40, seed=11, keypoints=True, workers=1)


def _tree_bytes(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_across_worker_counts(plain_dataset, tmp_path):
    again = generate_shapes_dataset(tmp_path / "b", num_images=60, seed=7, workers=1)
    assert _tree_bytes(plain_dataset.parent) == _tree_bytes(again.parent)


def test_other_seed_differs(plain_dataset, tmp_path):
    other = generate_shapes_dataset(tmp_path / "c", num_images=60, seed=8, workers=1)
    a, b = _tree_bytes(plain_dataset.parent), _tree_bytes(other.parent)
    assert a.keys() == b.keys()
    assert a["annotations.json"] != b["annotations.json"]
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == 60


def test_existing_dataset_is_reused_and_partial_one_replaced(plain_dataset, tmp_path):
    mtime = plain_dataset.stat().st_mtime_ns
    assert generate_shapes_dataset(plain_dataset.parent, 60, 7) == plain_dataset
    assert plain_dataset.stat().st_mtime_ns == mtime
    # An interrupted run left a directory without the completion marker: it is regenerated.
    partial = tmp_path / "partial"
    (partial / "images").mkdir(parents=True)
    (partial / "annotations.json").write_text("{")
    path = generate_shapes_dataset(partial, num_images=5, seed=1, workers=1)
    assert len(json.loads(path.read_text())["images"]) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_coco_valid_and_visible_masks_consistent(plain_dataset):
    """pycocotools decodes every mask; area, box and no-overlap agree with the annotation."""
    coco = COCO(str(plain_dataset))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(shapes.SHAPE_CATEGORIES)
    kinds = set()
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert 160 <= info["height"] <= 320 and 160 <= info["width"] <= 320
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 8
        coverage = np.zeros((info["height"], info["width"]), dtype=np.int32)
        for ann in anns:
            mask = coco.annToMask(ann)
            kinds.add("rle" if isinstance(ann["segmentation"], dict) else "polygon")
            assert ann["area"] == mask.sum() > 0
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(),
                                   rows.max() + 1 - rows.min()]
            assert ann["iscrowd"] == 0
            coverage += mask
        assert coverage.max() <= 1, f"visible masks overlap in image {image_id}"
    assert kinds == {"polygon", "rle"}


def test_visible_mask_is_what_remains_after_occlusion():
    """Hand-built: a hidden circle is dropped; a square cut in two by a thin ellipse is RLE;
    a square with one corner covered stays one polygon of the exact visible area."""
    background = np.zeros((100, 100, 3), dtype=np.uint8)
    scene = [
        Shape("circle", (20.0, 20.0), 10.0, color=(200, 0, 0)),
        Shape("square", (20.0, 20.0), 30.0, color=(0, 200, 0)),       # hides the circle
        Shape("square", (70.0, 70.0), 40.0, color=(0, 0, 200)),       # 40x40 at 50..90
        Shape("ellipse", (70.0, 70.0), 200.0, aspect=0.05, color=(9, 9, 9), annotated=False),
        Shape("square", (30.0, 70.0), 20.0, color=(50, 50, 50)),      # 20..40 x 60..80
        Shape("hexagon", (40.0, 80.0), 10.0, color=(90, 90, 90), annotated=False),
    ]
    image, anns = render_scene(background, scene, shapes.SHAPE_CATEGORIES)
    assert [a["category_id"] for a in anns] == [2, 2, 2]          # the circle is gone
    assert anns[0]["area"] == 900 and anns[0]["bbox"] == [5, 5, 30, 30]
    assert isinstance(anns[0]["segmentation"], list)
    split = anns[1]
    assert isinstance(split["segmentation"], dict)                # two parts: RLE
    assert split["bbox"] == [50, 50, 40, 40]
    assert 1600 - 40 * 11 <= split["area"] <= 1600 - 40 * 9      # minus a ~10 px band
    corner = anns[2]
    assert isinstance(corner["segmentation"], list) and len(corner["segmentation"]) == 1
    assert corner["area"] < 400 and corner["bbox"] == [20, 60, 20, 20]
    assert image[20, 20, 0] == 0 and image[20, 20, 1] > 150       # green square over red circle


def test_star_keypoint_visibility_hand_built():
    """Star A (centre 50,50, tips at radius 22.5): a square hides its top tip -> v=1.
    Star B near the right edge: two tips fall outside the image -> (0, 0, 0)."""
    background = np.zeros((100, 100, 3), dtype=np.uint8)
    scene = [
        Shape("star", (50.0, 50.0), 60.0, color=(250, 250, 0)),
        Shape("square", (50.0, 25.0), 10.0, color=(0, 0, 250), annotated=False),
        Shape("star", (95.0, 50.0), 40.0, color=(0, 250, 0)),
    ]
    _, anns = render_scene(background, scene, ("star",), keypoints=True)
    star_a = np.array(anns[0]["keypoints"]).reshape(5, 3)
    star_b = np.array(anns[1]["keypoints"]).reshape(5, 3)
    r = 30 * shapes.KEYPOINT_RADIUS
    s72, c72, s144, c144 = (np.sin(np.radians(72)), np.cos(np.radians(72)),
                            np.sin(np.radians(144)), np.cos(np.radians(144)))
    expected_a = [[50, 50 - r], [50 + r * s72, 50 - r * c72], [50 + r * s144, 50 - r * c144],
                  [50 - r * s144, 50 - r * c144], [50 - r * s72, 50 - r * c72]]
    np.testing.assert_allclose(star_a[:, :2], expected_a, atol=0.01)
    assert star_a[:, 2].tolist() == [1, 2, 2, 2, 2]
    assert star_b[:, 2].tolist() == [2, 0, 0, 2, 2]
    assert star_b[1].tolist() == [0, 0, 0] and star_b[2].tolist() == [0, 0, 0]
    assert anns[0]["num_keypoints"] == 5 and anns[1]["num_keypoints"] == 3


def test_generated_keypoints_lie_on_their_visible_star(keypoint_dataset):
    coco = COCO(str(keypoint_dataset))
    category = coco.loadCats(coco.getCatIds())[0]
    assert category["name"] == "star"
    assert category["keypoints"] == list(shapes.STAR_KEYPOINT_NAMES)
    assert category["skeleton"] == [list(p) for p in shapes.STAR_SKELETON]
    counts = {0: 0, 1: 0, 2: 0}
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        info = coco.loadImgs(ann["image_id"])[0]
        kps = np.array(ann["keypoints"]).reshape(5, 3)
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        for x, y, v in kps:
            counts[int(v)] += 1
            if v == 0:
                assert x == 0 and y == 0
                continue
            assert 0 <= x < info["width"] and 0 <= y < info["height"]
            assert mask[int(y), int(x)] == (1 if v == 2 else 0)
    assert all(n > 0 for n in counts.values()), counts
