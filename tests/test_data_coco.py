"""COCO-json loading (checked against pycocotools and hand-computed values), its error
cases, VOC conversion on a tiny hand-written devkit, and precomputed-proposal files."""
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detectron_lib.data.coco import filter_for_training, load_coco_json
from detectron_lib.data.loader import in_box_convention
from detectron_lib.data.proposals import (
    area_fraction_inside,
    attach_proposals,
    filter_crowd_proposals,
    load_proposals,
    save_proposals,
)
from detectron_lib.data.transforms import read_image_bgr
from detectron_lib.data.voc import convert_voc_to_coco
from detectron_lib.errors import DatasetError
from detectron_lib.structures.boxes import CONTINUOUS, PIXEL_INDICES, Boxes

KP_NAMES = ["tip", "left", "right"]


def _coco_dict():
    """Three images; categories with non-contiguous, unsorted ids 7, 2, 5."""
    return {
        "images": [{"id": 10, "file_name": "a.png", "height": 50, "width": 80},
                   {"id": 11, "file_name": "b.png", "height": 60, "width": 40},
                   {"id": 12, "file_name": "c.png", "height": 30, "width": 30}],
        "categories": [{"id": 7, "name": "seven", "keypoints": KP_NAMES},
                       {"id": 2, "name": "two", "keypoints": KP_NAMES},
                       {"id": 5, "name": "five", "keypoints": KP_NAMES}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 20, 10], "area": 150,
             "iscrowd": 0, "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
             "keypoints": [12, 6, 2, 0, 0, 0, 20, 8, 1], "num_keypoints": 2},
            {"id": 2, "image_id": 10, "category_id": 5, "bbox": [70, 40, 20, 20], "area": 100,
             "iscrowd": 1, "segmentation": {"size": [50, 80], "counts": [100, 20, 3880]}},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [5, 5, 0, 10], "area": 0,
             "iscrowd": 0, "segmentation": [[5, 5, 5, 5, 5, 15]]},           # zero width
            {"id": 4, "image_id": 11, "category_id": 2, "bbox": [50, 5, 10, 10], "area": 100,
             "iscrowd": 0, "segmentation": [[50, 5, 60, 5, 60, 15]]},        # outside image
            {"id": 5, "image_id": 11, "category_id": 2, "bbox": [1, 1, 2, 2], "area": 4,
             "iscrowd": 0, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},      # tiny
            {"id": 6, "image_id": 11, "category_id": 2, "bbox": [0, 0, 30, 30], "area": 900,
             "iscrowd": 1, "segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]]},  # crowd only
        ],
    }


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_records_against_pycocotools_and_hand_values(tmp_path, caplog):
    path = _write(tmp_path, _coco_dict())
    with caplog.at_level(logging.WARNING):
        loaded = load_coco_json(path, tmp_path / "images", min_area=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"dropped 3 degenerate boxes in {path}"]

    # Detectron's mapping: sorted JSON ids -> 1..K, same order as pycocotools' getCatIds.
    coco = COCO(str(path))
    assert loaded.categories.json_ids == tuple(sorted(coco.getCatIds())) == (2, 5, 7)
    assert loaded.categories.names == ("two", "five", "seven")
    assert loaded.categories.json_id_to_contiguous == {2: 1, 5: 2, 7: 3}
    assert loaded.categories.num_classes == 4
    assert loaded.keypoint_names == tuple(KP_NAMES)

    first, second, third = loaded.records
    assert first["file_name"] == str(tmp_path / "images" / "a.png")
    assert (first["image_id"], first["height"], first["width"]) == (10, 50, 80)
    # [x, y, w, h] -> x1y1x2y2; the crowd box [70, 40, 20, 20] is clipped to 80x50.
    np.testing.assert_array_equal(first["boxes"], [[10, 5, 30, 15], [70, 40, 80, 50]])
    assert first["boxes"].dtype == np.float32 and first["classes"].dtype == np.int64
    assert first["classes"].tolist() == [3, 2]
    assert first["is_crowd"].tolist() == [False, True]
    assert first["annotation_ids"].tolist() == [1, 2]
    assert isinstance(first["segms"][1], dict)
    assert first["keypoints"].shape == (2, 3, 3)
    assert first["keypoints"][0].tolist() == [[12, 6, 2], [0, 0, 0], [20, 8, 1]]
    assert not first["keypoints"][1].any()
    assert second["classes"].tolist() == [1] and second["is_crowd"].tolist() == [True]
    assert third["boxes"].shape == (0, 4) and third["keypoints"].shape == (0, 3, 3)

    # Kept for testing; for training only images with a non-crowd box remain.
    assert [r["image_id"] for r in filter_for_training(loaded.records)] == [10]


def test_dataset_without_masks_or_keypoints(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "height": 10, "width": 10}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}]}
    record = load_coco_json(_write(tmp_path, data), tmp_path).records[0]
    assert record["segms"] is None and record["keypoints"] is None
    assert record["boxes"].tolist() == [[1, 1, 4, 4]]
    # No 'annotations' at all (COCO test-dev image info) is a valid, unannotated dataset.
    del data["annotations"]
    assert load_coco_json(_write(tmp_path, data), tmp_path).records[0]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(image_id=99), "annotation 1 refers to image id 99"),
    (lambda d: d["annotations"][0].update(category_id=3), "annotation 1 has category id 3"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, -4, 2]), "annotation 1 has negative"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1]), "annotation 1 has bbox"),
    (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "annotation 1 has 3 keypoint"),
    (lambda d: d.pop("images"), "is not COCO json"),
    (lambda d: d["images"][0].update(width=-3), "image 10 has size -3x50"),
])
def test_malformed_annotations_raise_dataset_error(tmp_path, mutate, message):
    data = _coco_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as error:
        load_coco_json(path, tmp_path)
    assert str(path) in str(error.value)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_coco_json(tmp_path / "absent.json", tmp_path)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_json(garbage, tmp_path)
    listing = _write(tmp_path, [1, 2], "list.json")
    with pytest.raises(DatasetError, match="is not COCO json"):
        load_coco_json(listing, tmp_path)


def test_corrupt_image_raises_dataset_error_naming_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DatasetError, match="broken.png cannot be decoded"):
        read_image_bgr(broken)
    with pytest.raises(DatasetError, match="absent.png not found"):
        read_image_bgr(tmp_path / "absent.png")


def _write_voc_xml(path, filename, width, height, objects):
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        f"</bndbox></object>" for name, difficult, b in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size>{body}</annotation>")


@pytest.fixture
def voc_tree(tmp_path):
    """VOCdevkit2007/VOC2007 with two test images."""
    root = tmp_path / "VOC2007" / "VOCdevkit2007" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000004\n")
    _write_voc_xml(root / "Annotations" / "000001.xml", "000001.jpg", 353, 500,
                   [("dog", 0, (48, 240, 195, 371)), ("person", 1, (8, 12, 352, 498))])
    _write_voc_xml(root / "Annotations" / "000004.xml", "000004.jpg", 500, 406,
                   [("car", 0, (13, 311, 84, 362))])
    return root


def test_voc_conversion_hand_computed(voc_tree, tmp_path):
    out = tmp_path / "voc_2007_test.json"
    convert_voc_to_coco(voc_tree, "test", out)
    coco = COCO(str(out))
    assert len(coco.getCatIds()) == 20 and coco.loadCats(12)[0]["name"] == "dog"
    dog, person = coco.loadAnns(coco.getAnnIds(imgIds=1))
    # 1-based inclusive [48, 240, 195, 371] -> [47, 239, 148, 132].
    assert dog["bbox"] == [47, 239, 148, 132] and dog["area"] == 148 * 132
    assert dog["iscrowd"] == 0 and person["iscrowd"] == 1 and person["difficult"] == 1
    assert coco.loadImgs(4)[0] == {"id": 4, "file_name": "000004.jpg", "height": 406,
                                   "width": 500}
    records = load_coco_json(out, voc_tree / "JPEGImages").records
    assert records[0]["boxes"].tolist() == [[47, 239, 195, 371], [7, 11, 352, 498]]
    assert records[0]["is_crowd"].tolist() == [False, True]


def test_voc_materialized_from_devkit_and_errors(voc_tree, tmp_path):
    from detectron_lib.data.catalog import materialize_dataset

    (tmp_path / "VOC2007" / "JPEGImages").mkdir()
    path = materialize_dataset("voc_2007_test", data_root=tmp_path)
    assert path == tmp_path / "VOC2007/annotations/voc_2007_test.json" and path.is_file()
    _write_voc_xml(voc_tree / "Annotations" / "000004.xml", "000004.jpg", 5, 5,
                   [("unicorn", 0, (1, 1, 2, 2))])
    with pytest.raises(DatasetError, match="'unicorn' is not one of the 20 VOC classes"):
        convert_voc_to_coco(voc_tree, "test", tmp_path / "x.json")
    with pytest.raises(DatasetError, match="trainval.txt not found"):
        convert_voc_to_coco(voc_tree, "trainval", tmp_path / "x.json")


def _records(*sizes):
    return [{"image_id": i, "height": h, "width": w, "boxes": np.zeros((0, 4), np.float32)}
            for i, (h, w) in enumerate(sizes, start=1)]


def test_proposals_round_trip_top_k_and_clip(tmp_path):
    """attach_proposals keeps the top k; the loader's in_box_convention clips them."""
    path = tmp_path / "proposals.pkl"
    boxes = [np.array([[0, 0, 5, 5], [1, 1, 50, 9], [2, 2, 3, 3]]), np.zeros((0, 4))]
    scores = [np.array([0.1, 0.9, 0.5]), np.zeros(0)]
    save_proposals(path, boxes, scores, [np.int64(1), 2])
    proposals = load_proposals(path)
    assert sorted(proposals) == [1, 2]
    records = attach_proposals(_records((10, 20), (8, 8)), proposals, top_k=2)
    # Highest scores first, top 2, clipped to the 20-pixel width.
    assert records[0]["proposals"].tolist() == [[1, 1, 50, 9], [2, 2, 3, 3]]
    assert records[0]["proposal_scores"].tolist() == pytest.approx([0.9, 0.5])
    assert records[1]["proposals"].shape == (0, 4)
    clipped = in_box_convention(records, CONTINUOUS)
    assert clipped[0]["proposals"].tensor.tolist() == [[1, 1, 20, 9], [2, 2, 3, 3]]
    assert clipped[1]["proposals"].tensor.shape == (0, 4)
    # Detectron's convention clips to the last pixel index, width - 1.
    legacy = in_box_convention(records, PIXEL_INDICES)
    assert legacy[0]["proposals"].tensor.tolist() == [[1, 1, 19, 9], [2, 2, 3, 3]]
    assert legacy[0]["proposals"].convention is PIXEL_INDICES


def _crowd_record(proposals, convention):
    # COCO boxes [0, 0, 10, 10] (crowd) and [20, 20, 10, 10] as Boxes, as the loader makes them
    regions = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    return {"boxes": Boxes.from_regions(regions, convention),
            "is_crowd": np.array([True, False]),
            "proposals": Boxes(torch.tensor(proposals, dtype=torch.float32), convention),
            "proposal_scores": np.arange(len(proposals), dtype=np.float32)}


@pytest.mark.parametrize("convention", [CONTINUOUS, PIXEL_INDICES])
def test_crowd_filter_drops_proposals_mostly_inside_a_crowd_region(convention):
    """Detectron's _filter_crowd_proposals (TRAIN.CROWD_FILTER_THRESH 0.7): a proposal goes
    when more than 70% of its area is inside the crowd box; hand-computed fractions, checked
    against pycocotools' iou with iscrowd=1 as Detectron computed them."""
    off = convention.offset  # Detectron's boxes end at the last pixel index
    proposals = [[0, 0, 10 - off, 10 - off],    # the crowd box itself: 1.0
                 [5, 0, 15 - off, 10 - off],    # half inside: 0.5
                 [3, 0, 13 - off, 10 - off],    # 7 of 10 columns: 0.7, not more
                 [-2, 0, 8 - off, 10 - off],    # 8 of 10 columns: 0.8
                 [20, 20, 30 - off, 30 - off]]  # on the non-crowd object: 0
    crowd = [[0, 0, 10 - off, 10 - off]]
    fractions = area_fraction_inside(convention.regions(np.array(proposals, np.float64)),
                                     convention.regions(np.array(crowd, np.float64)))
    assert fractions[:, 0].tolist() == pytest.approx([1.0, 0.5, 0.7, 0.8, 0.0])
    as_xywh = np.array(proposals, np.float64)
    as_xywh[:, 2:] -= as_xywh[:, :2] - off
    assert mask_utils.iou(as_xywh, np.array([[0.0, 0, 10, 10]]), [1])[:, 0] == pytest.approx(
        fractions[:, 0])

    records = [_crowd_record(proposals, convention),
               {**_crowd_record(proposals, convention), "is_crowd": np.zeros(2, bool)}]
    assert filter_crowd_proposals(records, 0.7) == 2
    assert records[0]["proposals"].tensor.tolist() == [proposals[i] for i in (1, 2, 4)]
    assert records[0]["proposals"].convention is convention
    assert records[0]["proposal_scores"].tolist() == [1, 2, 4]
    assert len(records[1]["proposals"]) == 5  # no crowd region: nothing to filter
    unfiltered = [_crowd_record(proposals, convention)]
    assert filter_crowd_proposals(unfiltered, 0.0) == 0  # 0 keeps all
    assert len(unfiltered[0]["proposals"]) == 5


def test_proposals_python2_layout_and_missing_ids(tmp_path):
    """Detectron's older files: key 'indexes', pickled with protocol 2."""
    path = tmp_path / "old.pkl"
    with open(path, "wb") as f:
        pickle.dump({"boxes": [np.ones((1, 4), np.float32)], "scores": [np.ones(1, np.float32)],
                     "indexes": [7]}, f, protocol=2)
    assert list(load_proposals(path)) == [7]
    with pytest.raises(DatasetError, match=r"no proposals for 1 image id\(s\), e.g. \[1\]"):
        attach_proposals(_records((5, 5)), load_proposals(path), top_k=-1, source=str(path))
    with pytest.raises(DatasetError, match="not found"):
        load_proposals(tmp_path / "absent.pkl")
