"""MODEL.LABELS_ARE_CATEGORY_IDS: models whose class labels are the dataset's JSON category ids
(torchvision's COCO models, labels 1..90) train, are evaluated and name their detections by
those ids; Detectron's models keep contiguous labels 1..K. Checked on a tiny shapes dataset
whose category ids are renumbered to non-contiguous ones, and on the COCO catalog entries."""
import json

import pytest
import torch
import yaml

from detectron_lib.config import load_config
from detectron_lib.data.catalog import COCO_CATEGORY_IDS, COCO_CATEGORY_NAMES, get_dataset
from detectron_lib.data.loader import build_train_loader, load_datasets
from detectron_lib.data.shapes import generate_shapes_dataset
from detectron_lib.engine.checkpoint import save_checkpoint
from detectron_lib.errors import ConfigError, DatasetError
from detectron_lib.inference.engine import test as run_test
from detectron_lib.inference.predictor import class_names_for
from detectron_lib.modeling.meta_arch import build_model

# The six shapes categories renumbered: JSON id 1..6 -> these.
SPARSE_IDS = (2, 3, 5, 7, 11, 13)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, repo_root):
    """(config file, overrides) of a tiny R-18-FPN Faster R-CNN labelled by category id, on 4
    shapes images whose categories carry the ids SPARSE_IDS."""
    root = tmp_path_factory.mktemp("sparse_ids")
    annotations = generate_shapes_dataset(root / "tiny", num_images=4, seed=7, workers=1)
    data = json.loads(annotations.read_text())
    for entry in data["categories"]:
        entry["id"] = SPARSE_IDS[entry["id"] - 1]
    for ann in data["annotations"]:
        ann["category_id"] = SPARSE_IDS[ann["category_id"] - 1]
    sparse_file = annotations.parent / "sparse.json"
    sparse_file.write_text(json.dumps(data))
    images = str(annotations.parent / "images")
    catalog = root / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({
        "sparse_id_shapes": {"annotation_file": str(sparse_file), "image_directory": images},
        "sparse_id_shapes_wrong_ids": {"annotation_file": str(sparse_file),
                                       "image_directory": images,
                                       "category_ids": [1, 2, 3, 4, 5, 6]}}))
    opts = {
        "DATASET_CATALOG_FILE": str(catalog), "TRAIN.DATASETS": "('sparse_id_shapes',)",
        "TEST.DATASETS": "('sparse_id_shapes',)", "MODEL.NUM_CLASSES": "14",
        "MODEL.LABELS_ARE_CATEGORY_IDS": "True", "TRAIN.SCALES": "(64,)", "TRAIN.MAX_SIZE": "96",
        "TEST.SCALE": "64", "TEST.MAX_SIZE": "96", "FPN.DIM": "32", "FAST_RCNN.MLP_HEAD_DIM": "16",
        "TEST.RPN_PRE_NMS_TOP_N": "100", "TEST.RPN_POST_NMS_TOP_N": "50", "TRAIN.IMS_PER_BATCH": "4",
        "TRAIN.ASPECT_GROUPING": "False", "DATA_LOADER.NUM_THREADS": "0", "DEVICE": "cpu",
        "TEST.SCORE_THRESH": "0.0", "MODEL.BODY_PRECISION": "float32", "TRAIN.WEIGHTS": "",
    }
    return (str(repo_root / "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"),
            [token for pair in opts.items() for token in pair])


def test_training_targets_are_category_ids(sparse):
    cfg_file, opts = sparse
    batch = next(iter(build_train_loader(load_config(cfg_file, opts))))
    labels = torch.cat([t.classes for t in batch.targets])
    assert len(labels) and set(labels.tolist()) <= set(SPARSE_IDS)
    contiguous = next(iter(build_train_loader(load_config(
        cfg_file, opts + ["MODEL.LABELS_ARE_CATEGORY_IDS", "False", "MODEL.NUM_CLASSES", "7"]))))
    expected = [SPARSE_IDS[k - 1] for k in torch.cat([t.classes for t in contiguous.targets])]
    assert labels.tolist() == expected  # the same samples, relabelled
    with pytest.raises(ConfigError, match="category id 13 of sparse_id_shapes needs MODEL.NUM_CLASSES > 13, got 13"):
        build_train_loader(load_config(cfg_file, opts + ["MODEL.NUM_CLASSES", "13"]))


def test_evaluation_maps_labels_as_category_ids_and_drops_unknown_ones(sparse, tmp_path):
    cfg_file, opts = sparse
    cfg = load_config(cfg_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # spread the scores over all 13 foreground labels
        model.roi_heads.predictor.cls_score.weight.normal_(std=1.0)
    weights = tmp_path / "model.pth"
    save_checkpoint(weights, model)
    metrics = run_test(cfg, str(weights), tmp_path / "eval")
    assert "bbox/AP" in metrics
    results = json.loads((tmp_path / "eval" / "sparse_id_shapes_bbox_results.json").read_text())
    categories = {r["category_id"] for r in results}
    # Labels that are dataset categories go out as themselves; the others (1, 4, 6, ...) are
    # dropped rather than mapped onto some category.
    assert categories and categories <= set(SPARSE_IDS)
    assert len(categories) > 1


def test_catalog_category_ids_are_checked_against_the_json(sparse):
    cfg_file, opts = sparse
    load_config(cfg_file, opts)  # registers the catalog file's datasets
    records, categories, _ = load_datasets(("sparse_id_shapes",))
    assert categories.json_ids == SPARSE_IDS
    assert categories.label_to_json_id(True) == {i: i for i in SPARSE_IDS}
    assert categories.label_to_json_id(False) == dict(enumerate(SPARSE_IDS, start=1))
    with pytest.raises(DatasetError, match="category ids .* differ from the catalog's"):
        load_datasets(("sparse_id_shapes_wrong_ids",))


def test_coco_names_by_label(repo_root, reference_dir):
    assert len(COCO_CATEGORY_IDS) == len(COCO_CATEGORY_NAMES) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS)) and COCO_CATEGORY_IDS[-1] == 90
    by_id = get_dataset("coco_2017_val").names_by_category_id()
    assert by_id[1] == "person" and by_id[13] == "stop sign" and by_id[90] == "toothbrush"
    assert 12 not in by_id
    torchvision = load_config(str(repo_root / "configs/torchvision/maskrcnn_resnet50_fpn.yaml"))
    assert class_names_for(torchvision)[13] == "stop sign"
    detectron = load_config(str(reference_dir / "detectron_configs" / "12_2017_baselines"
                                / "e2e_mask_rcnn_R-50-FPN_1x.yaml"))
    names = class_names_for(detectron)
    assert names[12] == "stop sign" and names[80] == "toothbrush"
    assert names == dict(enumerate(COCO_CATEGORY_NAMES, start=1))
