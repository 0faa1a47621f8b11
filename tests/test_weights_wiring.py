"""Where imported weights enter: TRAIN.WEIGHTS initializes training (with fine-tuning to another
class count), TEST.WEIGHTS stands in for --weights, and `detectron infer --json` writes what
the Predictor detects, and skips an undecodable input image, naming it in an error at the end."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.data.shapes import generate_shapes_dataset
from detectron_lib.data.transforms import read_image_bgr
from detectron_lib.engine.checkpoint import save_checkpoint
from detectron_lib.engine.trainer import train
from detectron_lib.inference.predictor import Predictor, detections_to_json
from detectron_lib.modeling.meta_arch import build_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, repo_root):
    """(config file, overrides, annotation file) of a tiny Mask R-CNN R-18-FPN (the shapes
    Faster R-CNN baseline with a v1up mask head) on 4 generated shapes images."""
    root = tmp_path_factory.mktemp("tiny_weights")
    annotations = generate_shapes_dataset(root / "tiny", num_images=4, seed=5, workers=1)
    catalog = root / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"tiny_weights_shapes": {
        "annotation_file": str(annotations), "image_directory": str(annotations.parent / "images")}}))
    opts = {
        "DATASET_CATALOG_FILE": str(catalog), "TRAIN.DATASETS": "('tiny_weights_shapes',)",
        "TEST.DATASETS": "('tiny_weights_shapes',)", "TRAIN.SCALES": "(64,)", "TRAIN.MAX_SIZE": "96",
        "TEST.SCALE": "64", "TEST.MAX_SIZE": "96", "FPN.DIM": "32", "FAST_RCNN.MLP_HEAD_DIM": "16",
        "MRCNN.DIM_REDUCED": "32", "TRAIN.BATCH_SIZE_PER_IM": "16", "TRAIN.RPN_BATCH_SIZE_PER_IM": "32",
        "TRAIN.RPN_PRE_NMS_TOP_N": "100", "TRAIN.RPN_POST_NMS_TOP_N": "50",
        "TEST.RPN_PRE_NMS_TOP_N": "100", "TEST.RPN_POST_NMS_TOP_N": "50", "SOLVER.MAX_ITER": "1",
        "SOLVER.STEPS": "[0]", "SOLVER.LR_POLICY": "steps_with_lrs", "SOLVER.LRS": "[0.0]",
        "TRAIN.IMS_PER_BATCH": "2",
        "TRAIN.ASPECT_GROUPING": "False", "DATA_LOADER.NUM_THREADS": "0", "DEVICE": "cpu",
        "TEST.SCORE_THRESH": "0.0", "MODEL.BODY_PRECISION": "float32", "TRAIN.WEIGHTS": "",
    }
    opts.update({"MODEL.MASK_ON": "True", "MRCNN.ROI_MASK_HEAD": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
                 "MRCNN.RESOLUTION": "28", "MRCNN.ROI_XFORM_RESOLUTION": "14", "MRCNN.DILATION": "1"})
    return (str(repo_root / "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"),
            [token for pair in opts.items() for token in pair], annotations)


def _randomized_model(cfg, seed):
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_train_weights_initialize_training_and_fine_tune_to_another_class_count(tiny, tmp_path):
    cfg_file, opts, _ = tiny
    source = _randomized_model(load_config(cfg_file, opts + ["MODEL.NUM_CLASSES", "4"]), seed=3)
    weights = tmp_path / "pretrained.pth"
    save_checkpoint(weights, source)
    cfg = load_config(cfg_file, opts + ["TRAIN.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "run")])
    final = torch.load(train(cfg), weights_only=False)["model"]  # learning rate 0: weights stay put
    for key, value in source.state_dict().items():
        if key.startswith(("roi_heads.predictor.", "mask_heads.predictor.")):
            assert final[key].shape[0] != value.shape[0], key  # re-initialized for 7 classes
        else:
            assert torch.equal(final[key], value), key


def test_test_and_infer_take_test_weights_and_infer_writes_json(tiny, tmp_path, capsys):
    cfg_file, opts, annotations = tiny
    cfg = load_config(cfg_file, opts)
    weights = tmp_path / "model_final.pth"
    save_checkpoint(weights, _randomized_model(cfg, seed=4))
    opts = opts + ["TEST.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "test")]
    assert cli_main(["test", "--cfg", cfg_file, *opts]) == 0  # no --weights: TEST.WEIGHTS
    assert (tmp_path / "test" / "metrics.json").is_file()

    image = sorted((annotations.parent / "images").iterdir())[0]
    out = tmp_path / "infer"
    assert cli_main(["infer", "--cfg", cfg_file, "--input", str(image), "--output", str(out),
                     "--json", *opts]) == 0
    written = json.loads((out / f"{image.stem}.json").read_text())
    bgr = read_image_bgr(image)
    expected = Predictor(load_config(cfg_file, opts), "")(bgr)
    assert written["height"] == bgr.shape[0] and written["width"] == bgr.shape[1]
    detections = written["detections"]
    assert len(detections) == len(expected) > 0
    np.testing.assert_allclose([d["box"] for d in detections], expected.boxes.tensor.numpy(), atol=1e-4)
    assert [d["label"] for d in detections] == expected.classes.tolist()
    np.testing.assert_allclose([d["score"] for d in detections], expected.scores.numpy(), atol=1e-6)
    names = {k: f"class{k}" for k in range(1, 7)}
    named = detections_to_json(expected, names)
    assert [d["category"] for d in named] == [names[k] for k in expected.classes.tolist()]
    for detection, mask in zip(detections, expected.masks.numpy()):
        assert np.array_equal(mask_utils.decode(detection["mask"]).astype(bool), mask)


def test_infer_skips_an_undecodable_image_writes_the_others_and_exits_nonzero(tiny, tmp_path, capsys):
    cfg_file, opts, annotations = tiny
    cfg = load_config(cfg_file, opts)
    weights = tmp_path / "model_final.pth"
    save_checkpoint(weights, _randomized_model(cfg, seed=4))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = sorted((annotations.parent / "images").iterdir())[:2]
    for name, source in zip(("a", "c"), good):
        shutil.copy(source, inputs / f"{name}{source.suffix}")
    (inputs / "b.jpg").write_bytes(good[0].read_bytes()[:200])  # a truncated download
    out = tmp_path / "vis"
    args = ["infer", "--cfg", cfg_file, "--weights", str(weights), "--output", str(out), "--json", *opts]

    assert cli_main([*args[:1], "--input", str(inputs), *args[1:]]) == 2
    captured = capsys.readouterr()
    expected = ["a.json", "a.png", "c.json", "c.png"]
    assert sorted(p.name for p in out.iterdir()) == expected  # nothing for b, no .tmp left
    assert sorted(Path(line).name for line in captured.out.split()) == expected
    for stem, source in zip(("a", "c"), good):
        with Image.open(out / f"{stem}.png") as drawn, Image.open(source) as original:
            assert drawn.format == "PNG" and drawn.size == original.size
    (error,) = [line for line in captured.err.splitlines() if line.startswith("detectron infer")]
    assert "1 of 3 input images were skipped" in error
    assert f"{inputs / 'b.jpg'} cannot be decoded" in error
    assert "annotations" not in error and str(inputs / "a") not in error

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert cli_main([*args[:1], "--input", str(empty), *args[1:]]) == 2
    assert "no images" in capsys.readouterr().err
