"""detectron_lib.model_zoo on a tiny zoo written here: configs with the manifest's overrides,
a trained model whose weights are those of the checkpoint the trainer's writer saved, the
snakemake command for an untrained baseline, the baseline names for an unknown one; and the
repository's shapes zoo, resolved from another working directory."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from detectron_lib import model_zoo
from detectron_lib.data.catalog import get_dataset
from detectron_lib.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detectron_lib.errors import ConfigError
from detectron_lib.inference.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINED, UNTRAINED = "e2e_faster_rcnn_R-18-FPN_1x", "rpn_R-18-FPN_1x"
TINY_CONFIG = {
    "MODEL": {"TYPE": "generalized_rcnn", "CONV_BODY": "FPN.add_fpn_ResNet18_conv5_body",
              "NUM_CLASSES": 7, "FASTER_RCNN": True, "BBOX_LEGACY_PLUS_ONE": False},
    "RESNETS": {"TRANS_FUNC": "basic_gn_transformation", "STEM_FUNC": "basic_gn_stem",
                "SHORTCUT_FUNC": "basic_gn_shortcut"},
    "FPN": {"FPN_ON": True, "MULTILEVEL_ROIS": True, "MULTILEVEL_RPN": True, "DIM": 32,
            "USE_GN": True, "RPN_ANCHOR_START_SIZE": 16},
    "FAST_RCNN": {"ROI_BOX_HEAD": "fast_rcnn_heads.add_roi_2mlp_head",
                  "ROI_XFORM_METHOD": "RoIAlign", "ROI_XFORM_RESOLUTION": 7,
                  "ROI_XFORM_SAMPLING_RATIO": 2, "MLP_HEAD_DIM": 32},
    "TRAIN": {"DATASETS": "('model_zoo_tiny',)", "SCALES": "(64,)", "MAX_SIZE": 96},
    "TEST": {"DATASETS": "('model_zoo_tiny',)", "SCALE": 64, "MAX_SIZE": 96,
             "RPN_PRE_NMS_TOP_N": 100, "RPN_POST_NMS_TOP_N": 50, "SCORE_THRESH": 0.0},
}


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo in tmp_path/repo of two baselines on one config, the trained one's weights a
    perturbed fresh model saved as the trainer saves model_final.pth; the working
    directory is another folder, so that every path must resolve against the root."""
    root = tmp_path / "repo"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (root / "catalog.yaml").write_text(yaml.safe_dump({"model_zoo_tiny": {   # same in every test
        "annotation_file": "tiny/annotations.json", "image_directory": "tiny/images"}}))
    (root / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "table": "TINY.md", "dataset_catalog": "catalog.yaml",
        "overrides": ["DEVICE", "cpu"],
        "baselines": {
            TRAINED: {"config": "configs/tiny.yaml", "section": "end_to_end",
                      "overrides": ["TEST.DETECTIONS_PER_IM", "7"]},
            UNTRAINED: {"config": "configs/tiny.yaml", "section": "rpn",
                        "overrides": ["MODEL.RPN_ONLY", "True", "MODEL.FASTER_RCNN", "False"]},
        }}))
    monkeypatch.chdir(tmp_path)
    where = {"manifest": "tiny.yaml", "root": root}
    torch.manual_seed(0)
    model = model_zoo.get(TRAINED, trained=False, **where)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    weights = root / "results" / "tiny" / TRAINED / "train" / "model_final.pth"
    save_checkpoint(weights, model, iteration=1)
    return {"where": where, "root": root, "weights": weights}


def test_get_config_applies_the_manifest_overrides_with_paths_under_the_root(tiny_zoo):
    cfg = model_zoo.get_config(TRAINED, **tiny_zoo["where"])
    assert cfg.TEST.DETECTIONS_PER_IM == 7 and cfg.DEVICE == "cpu"        # baseline, manifest
    assert cfg.FPN.DIM == 32 and cfg.MODEL.FASTER_RCNN                     # the config file
    assert cfg.OUTPUT_DIR == str(tiny_zoo["root"] / "results/tiny" / TRAINED / "train")
    assert cfg.DATASET_CATALOG_FILE == str(tiny_zoo["root"] / "catalog.yaml")
    assert get_dataset("model_zoo_tiny")                                   # registered
    rpn = model_zoo.get_config(UNTRAINED, **tiny_zoo["where"])
    assert rpn.MODEL.RPN_ONLY and rpn.TEST.DETECTIONS_PER_IM != 7


def test_get_loads_the_trained_weights_and_detects(tiny_zoo):
    model = model_zoo.get(TRAINED, **tiny_zoo["where"])
    assert not model.training
    saved = load_checkpoint(tiny_zoo["weights"])["model"]
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    fresh = model_zoo.get(TRAINED, trained=False, **tiny_zoo["where"]).state_dict()
    assert not any(torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point()
                   and saved[k].numel() > 1)

    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    with torch.no_grad():
        (detections,) = model([image])
    assert detections.boxes.tensor.shape == (7, 4)           # TEST.DETECTIONS_PER_IM of the zoo
    assert len(detections.scores) == len(detections.classes) == 7


def test_predictor_runs_on_the_config_and_weights_of_the_zoo(tiny_zoo):
    weights = model_zoo.get_weights(TRAINED, **tiny_zoo["where"])
    assert weights == str(tiny_zoo["weights"])
    predictor = Predictor(model_zoo.get_config(TRAINED, **tiny_zoo["where"]), weights)
    detections = predictor(np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8))
    assert detections.boxes.tensor.shape == (7, 4)


def test_an_untrained_baseline_names_the_command_that_trains_it(tiny_zoo):
    with pytest.raises(CheckpointError) as error:
        model_zoo.get(UNTRAINED, **tiny_zoo["where"])
    message, root = str(error.value), tiny_zoo["root"]
    assert "has not been trained yet" in message
    assert str(root / "results/tiny" / UNTRAINED / "train/model_final.pth") in message
    assert message.endswith(f"in {root}: snakemake --cores all --profile workflow/profiles/"
                            f"default baseline_{UNTRAINED} --configfile tiny.yaml")
    with pytest.raises(CheckpointError, match="has not been trained yet"):
        model_zoo.get_weights(UNTRAINED, **tiny_zoo["where"])


def test_an_unknown_name_lists_the_baselines(tiny_zoo):
    for get in (model_zoo.get, model_zoo.get_config, model_zoo.get_weights):
        with pytest.raises(ConfigError, match=f"no baseline named 'nope'; the manifest has "
                                              f"{TRAINED}, {UNTRAINED}"):
            get("nope", **tiny_zoo["where"])


def test_the_default_zoo_resolves_against_the_checkout_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = model_zoo.get_config("fast_rcnn_R-18-FPN_1x")
    assert cfg.OUTPUT_DIR == str(REPO_ROOT / "results/shapes/fast_rcnn_R-18-FPN_1x/train")
    assert cfg.TRAIN.WEIGHTS == str(REPO_ROOT / "results/shapes/pretrained/R-18-GN.pkl")
    assert cfg.TEST.PROPOSAL_FILES == (
        str(REPO_ROOT / "results/shapes/rpn_R-18-FPN_1x/proposals/shapes_val.pkl"),)
