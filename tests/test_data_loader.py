"""Samplers and loaders: shard disjointness, resume-at-iteration equality, aspect grouping,
worker-count independence, the config builders on a generated shapes dataset, and crowd
filtering of precomputed proposals on a hand-written one."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron_lib.config import get_default_cfg
from detectron_lib.data import catalog
from detectron_lib.data.coco import filter_for_training, load_coco_json
from detectron_lib.data.loader import (
    InferenceSampler,
    TrainingDataset,
    TrainingSampler,
    aspect_group_ids,
    build_test_loader,
    build_train_loader,
    in_box_convention,
    make_train_loader,
)
from detectron_lib.data.proposals import save_proposals
from detectron_lib.data.shapes import generate_shapes_dataset
from detectron_lib.errors import ConfigError
from detectron_lib.structures.boxes import CONTINUOUS

# pycocotools' decode trips a numpy-2 deprecation warning (harmless, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _take(iterable, n):
    return [item for _, item in zip(range(n), iterable)]


def test_shards_are_disjoint_and_cover_each_epoch():
    world, per_rank, size = 4, 2, 40
    samplers = [TrainingSampler(np.zeros(size), per_rank, seed=5, rank=r, world_size=world)
                for r in range(world)]
    seen = []
    for it in range(size // (world * per_rank)):             # exactly one epoch
        global_batch = [s.batch_at(it) for s in samplers]
        positions = [p for batch in global_batch for _, p in batch]
        assert positions == list(range(it * 8, it * 8 + 8))   # disjoint, contiguous
        seen += [i for batch in global_batch for i, _ in batch]
    assert sorted(seen) == list(range(size))
    next_epoch = [i for s in samplers for i, _ in s.batch_at(5)]
    assert next_epoch != seen[:8]                             # reshuffled


def test_n_ranks_see_the_global_batch_of_one_process():
    # What data-parallel training relies on: 2 ranks x 3 images == 1 rank x 6 images.
    groups = np.array([0, 1] * 20 + [0, 0, 1])
    single = TrainingSampler(groups, 6, seed=9)
    ranks = [TrainingSampler(groups, 3, seed=9, rank=r, world_size=2) for r in range(2)]
    for it in range(12):
        assert single.batch_at(it) == ranks[0].batch_at(it) + ranks[1].batch_at(it)


def test_resumed_sampler_equals_uninterrupted():
    groups = np.array([0, 1] * 13 + [0])
    full = _take(TrainingSampler(groups, 3, seed=1, rank=1, world_size=2), 30)
    resumed = _take(TrainingSampler(groups, 3, seed=1, rank=1, world_size=2, start_iter=17), 13)
    assert resumed == full[17:]
    for batch in full:                                        # aspect grouping holds
        assert len({int(groups[i]) for i, _ in batch}) == 1


def test_inference_sampler_shards_contiguous():
    shards = [list(InferenceSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    generate_shapes_dataset(root / "shapes" / "shapes_val", num_images=16, seed=2, workers=1)
    return root


def _dataset(root):
    loaded = load_coco_json(root / "shapes/shapes_val/annotations.json",
                            root / "shapes/shapes_val/images")
    records = in_box_convention(filter_for_training(loaded.records), CONTINUOUS)
    return TrainingDataset(records, scales=(64, 96), max_size=160,
                           use_flip=True, seed=9)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x.images) == len(y.images)
        assert all(torch.equal(i, j) for i, j in zip(x.images, y.images))
        assert (x.image_ids, x.positions, x.seeds, x.flipped, x.im_scales) == \
            (y.image_ids, y.positions, y.seeds, y.flipped, y.im_scales)
        for tx, ty in zip(x.targets, y.targets):
            assert torch.equal(tx.boxes.tensor, ty.boxes.tensor) and tx.segms == ty.segms


def test_two_workers_match_zero_workers_and_resume(small_shapes):
    dataset = _dataset(small_shapes)
    serial = _take(make_train_loader(dataset, 2, seed=9), 6)
    parallel = _take(make_train_loader(dataset, 2, seed=9, num_workers=2), 6)
    _assert_same_batches(serial, parallel)
    assert any(any(b.flipped) for b in serial) and any(not all(b.flipped) for b in serial)
    assert {s for b in serial for s in b.im_scales} != {serial[0].im_scales[0]}
    for batch in serial:
        assert [tuple(i.shape[1:]) for i in batch.images] == batch.image_sizes
        orientations = {h < w for h, w in batch.original_sizes}
        assert len(orientations) == 1
    resumed_loader = make_train_loader(dataset, 2, seed=9, start_iter=4)
    resumed = _take(resumed_loader, 2)
    _assert_same_batches(serial[4:], resumed)
    assert resumed_loader.position == 6


def test_builders_from_config(small_shapes, monkeypatch):
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))
    catalog.register_coco_dataset("loader_shapes", "shapes/shapes_val/annotations.json",
                                  "shapes/shapes_val/images",
                                  category_names=catalog.get_dataset("shapes_val").category_names)
    cfg = get_default_cfg()
    cfg.DATA_ROOT = str(small_shapes)
    cfg.TRAIN.DATASETS = ("loader_shapes",)
    cfg.TRAIN.SCALES = (80,)
    cfg.TRAIN.MAX_SIZE = 100
    cfg.TRAIN.IMS_PER_BATCH = 2
    cfg.DATA_LOADER.NUM_THREADS = 0
    cfg.FPN.FPN_ON = True
    cfg.TEST.DATASETS = ("loader_shapes",)
    cfg.TEST.SCALE = 64
    cfg.TEST.MAX_SIZE = 100

    loader = build_train_loader(cfg)
    batch = next(iter(loader))
    assert loader.categories.num_classes == 7 and loader.position == 1
    assert len(batch.images) == 2 and all(i.dtype == torch.uint8 for i in batch.images)
    assert min(batch.image_sizes[0]) == 80 or max(batch.image_sizes[0]) == 100
    inputs = batch.model_inputs("cpu")
    assert set(inputs) == {"images", "scales", "original_sizes", "targets", "seeds"}
    assert inputs["targets"][0].boxes.tensor.shape[1] == 4

    test_loader = build_test_loader(cfg, "loader_shapes", rank=1, world_size=2)
    ids = [b.image_ids[0] for b in test_loader]
    assert ids == list(range(9, 17)) and len(test_loader) == 8
    assert aspect_group_ids([{"width": 5, "height": 9}, {"width": 9, "height": 5}]).tolist() == [1, 0]


@pytest.mark.parametrize("num_classes", [5, 9])
def test_num_classes_that_do_not_fit_the_training_set_fail_before_the_first_batch(
        small_shapes, monkeypatch, num_classes):
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))
    catalog.register_coco_dataset("loader_shapes", "shapes/shapes_val/annotations.json",
                                  "shapes/shapes_val/images")
    cfg = get_default_cfg()
    cfg.DATA_ROOT = str(small_shapes)
    cfg.TRAIN.DATASETS = ("loader_shapes",)
    cfg.MODEL.NUM_CLASSES = num_classes
    cfg.DATA_LOADER.NUM_THREADS = 0
    with pytest.raises(ConfigError, match=f"MODEL.NUM_CLASSES is {num_classes}, but loader_shapes "
                                          "has 6 categories.*set MODEL.NUM_CLASSES 7"):
        build_train_loader(cfg, verify_images=False)
    cfg.MODEL.RPN_ONLY = True  # no classifier: any value
    build_train_loader(cfg, verify_images=False)


@pytest.mark.parametrize("thresh, kept", [(0.7, 2), (0.0, 3)])
def test_training_on_proposals_drops_those_inside_crowd_regions(tmp_path, monkeypatch,
                                                                 thresh, kept):
    """TRAIN.CROWD_FILTER_THRESH reaches the training batches: of proposals (0, 0, 10, 10),
    (5, 0, 15, 10) and (30, 20, 40, 30), the first lies inside the crowd box [0, 0, 10, 10]."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    boxes = ([0, 0, 10, 10, 1], [30, 20, 10, 10, 0])  # [x, y, w, h, iscrowd]
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": b[:4], "area": 100,
                         "iscrowd": b[4]} for i, b in enumerate(boxes, start=1)]}))
    proposals = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [30, 20, 40, 30]])
    save_proposals(tmp_path / "p.pkl", [proposals], [np.array([0.9, 0.8, 0.7])], [1])
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))
    catalog.register_coco_dataset("crowded", str(tmp_path / "ann.json"), str(tmp_path / "images"))
    cfg = get_default_cfg()
    cfg.TRAIN.DATASETS, cfg.TRAIN.PROPOSAL_FILES = ("crowded",), (str(tmp_path / "p.pkl"),)
    cfg.TRAIN.SCALES, cfg.TRAIN.MAX_SIZE, cfg.TRAIN.IMS_PER_BATCH = (40,), 60, 1
    cfg.MODEL.NUM_CLASSES, cfg.DATA_LOADER.NUM_THREADS = 2, 0
    cfg.TRAIN.CROWD_FILTER_THRESH = thresh
    batch = next(iter(build_train_loader(cfg, verify_images=False)))
    assert len(batch.proposals[0]) == kept
    assert len(batch.targets[0]) == 1 and len(batch.crowd_boxes[0]) == 1
