"""Zoo manifests: parsing, the dependency rules a schema cannot express, the config
overrides and paths the DAG derives, for the repository's manifests and small hand-written
ones. Expected values are written out by hand from the manifest text."""
import shlex
from pathlib import Path

import pytest
import yaml

from detectron_lib.errors import ConfigError
from detectron_lib.zoo.manifest import (
    SECTIONS,
    join_overrides,
    load_manifest,
    parse_manifest,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _manifest(**baselines):
    return {"name": "z", "table": "Z.md", "baselines": baselines}


def test_repository_manifests_parse(reference_dir, monkeypatch):
    shapes = load_manifest(REPO_ROOT / "configs/zoo/shapes.yaml")
    assert shapes.table == "MODEL_ZOO.md"
    assert all(Path(REPO_ROOT, b.config).is_file() for b in shapes.baselines.values())
    coco = load_manifest(REPO_ROOT / "configs/zoo/coco_2017.yaml")
    detectron_baselines = [path.stem for folder in ("12_2017_baselines", "04_2018_gn_baselines")
                           for path in (reference_dir / "detectron_configs" / folder).glob("*.yaml")]
    assert sorted(coco.baselines) == sorted(detectron_baselines)
    assert coco.baseline("mask_rcnn_R-50-FPN_1x_gn").proposals_from == "rpn_R-50-FPN_1x"
    assert coco.baseline("mask_rcnn_R-101-FPN_2x").proposals_from == "rpn_R-101-FPN_1x"
    assert coco.baseline("keypoint_rcnn_R-50-FPN_s1x").proposals_from == \
        "rpn_person_only_R-50-FPN_1x"
    assert coco.baseline("e2e_mask_rcnn_R-50-FPN_1x").resources.gpus == 8


def test_backbone_and_schedule_come_from_the_name():
    zoo = parse_manifest(_manifest(**{
        "e2e_mask_rcnn_X-101-64x4d-FPN_2x": {"config": "a.yaml", "section": "end_to_end"},
        "custom": {"config": "b.yaml", "section": "retinanet", "backbone": "VGG16",
                   "lr_schd": "3x"}}))
    assert zoo.baseline("e2e_mask_rcnn_X-101-64x4d-FPN_2x").backbone == "X-101-64x4d-FPN"
    assert zoo.baseline("e2e_mask_rcnn_X-101-64x4d-FPN_2x").lr_schd == "2x"
    assert (zoo.baseline("custom").backbone, zoo.baseline("custom").lr_schd) == ("VGG16", "3x")


def test_start_early_defaults_to_false():
    zoo = parse_manifest(_manifest(a={"config": "a.yaml", "section": "rpn"},
                                   b={"config": "b.yaml", "section": "rpn", "start_early": True}))
    assert (zoo.baseline("a").start_early, zoo.baseline("b").start_early) == (False, True)


def test_resources_merge_defaults_and_entry():
    document = _manifest(a={"config": "a.yaml", "section": "rpn", "resources": {"gpus": 4}})
    document["default_resources"] = {"threads": 8, "mem_mb": 9000}
    resources = parse_manifest(document).baseline("a").resources
    assert (resources.gpus, resources.threads, resources.mem_mb, resources.runtime) == \
        (4, 8, 9000, 60)
    assert resources.num_workers == 4


@pytest.mark.parametrize("baselines, message", [
    ({"f": {"config": "f.yaml", "section": "fast_mask_on_proposals", "proposals_from": "r"}},
     "'r', which is not a baseline"),
    ({"e": {"config": "e.yaml", "section": "end_to_end"},
      "f": {"config": "f.yaml", "section": "fast_mask_on_proposals", "proposals_from": "e"}},
     "must be an RPN baseline"),
    ({"x": {"config": "x.yaml", "section": "rpn", "weights_from": "R-18-GN"}},
     "pretrained body 'R-18-GN', which the manifest's 'pretrained' section does not define"),
    ({"x": {"config": "x.yaml", "section": "boxes"}}, "unknown section 'boxes'"),
    ({"x": {"section": "rpn"}}, "needs 'config' and 'section'"),
    ({"x": {"config": "x.yaml", "section": "rpn", "overrides": ["SOLVER.MAX_ITER"]}},
     "KEY VALUE pairs"),
    ({"x": {"config": "x.yaml", "section": "rpn", "resources": {"gpu": 1}}},
     "unknown resources"),
    ({"x": {"config": "x.yaml", "section": "rpn", "start_early": "yes"}},
     "baseline 'x': start_early must be true or false, got 'yes'"),
])
def test_broken_manifests_name_the_entry(baselines, message):
    with pytest.raises(ConfigError, match=message):
        parse_manifest(_manifest(**baselines), source="m.yaml")


@pytest.mark.parametrize("notes, message", [
    ({"boxes": ["x"]}, "m.yaml: notes: unknown section 'boxes'"),
    ({"rpn": "one string"}, "notes of section 'rpn' must be a list of strings"),
])
def test_broken_section_notes_are_named(notes, message):
    with pytest.raises(ConfigError, match=message):
        parse_manifest(dict(_manifest(x={"config": "x.yaml", "section": "rpn"}), notes=notes),
                       source="m.yaml")


def test_missing_manifest_and_keys():
    with pytest.raises(ConfigError, match="not found"):
        load_manifest("/nonexistent/zoo.yaml")
    with pytest.raises(ConfigError, match="missing 'table'"):
        parse_manifest({"name": "z", "baselines": {}})


def test_proposal_consumers_get_the_rpn_files_as_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"MODEL": {"FASTER_RCNN": False}, "TRAIN": {"DATASETS": "('shapes_train',)"},
              "TEST": {"DATASETS": "('shapes_val',)"}}
    Path("fast.yaml").write_text(yaml.safe_dump(config))
    Path("rpn.yaml").write_text(yaml.safe_dump({"MODEL": {"RPN_ONLY": True},
                                                "TEST": {"DATASETS": "('shapes_val',)"}}))
    zoo = parse_manifest({
        "name": "z", "table": "Z.md", "overrides": ["DEVICE", "cpu"],
        "baselines": {
            "rpn_R-18_1x": {"config": "rpn.yaml", "section": "rpn"},
            "fast_R-18_1x": {"config": "fast.yaml", "section": "fast_mask_on_proposals",
                             "proposals_from": "rpn_R-18_1x",
                             "overrides": ["SOLVER.MAX_ITER", 5]}}})
    assert zoo.rpn_consumers("rpn_R-18_1x") == ["fast_R-18_1x"]
    assert zoo.proposal_datasets("rpn_R-18_1x") == ["shapes_train", "shapes_val"]
    # the RPN tests on shapes_val, which it dumps: the dump's recall is its evaluation
    assert zoo.dumped_evaluation_inputs("rpn_R-18_1x") == [
        "results/z/rpn_R-18_1x/proposals/shapes_val_metrics.json"]
    assert zoo.dumped_evaluation_inputs("fast_R-18_1x") == []
    overrides = zoo.config_overrides("fast_R-18_1x")
    pairs = dict(zip(overrides[::2], overrides[1::2]))
    assert pairs == {
        "DEVICE": "cpu", "SOLVER.MAX_ITER": "5", "NUM_GPUS": "1",
        "OUTPUT_DIR": "results/z/fast_R-18_1x/train",
        "TRAIN.PROPOSAL_FILES": "('results/z/rpn_R-18_1x/proposals/shapes_train.pkl',)",
        "TEST.PROPOSAL_FILES": "('results/z/rpn_R-18_1x/proposals/shapes_val.pkl',)",
    }
    assert shlex.split(join_overrides(overrides)) == overrides
    # the overrides make a config that loads (one proposal file per dataset)
    from detectron_lib.config import load_config
    cfg = load_config("fast.yaml", overrides)
    assert cfg.TEST.PROPOSAL_FILES == ("results/z/rpn_R-18_1x/proposals/shapes_val.pkl",)
    assert zoo.missing_dataset_files() == []          # shapes datasets are generated


def test_pretrained_body_feeds_train_weights_and_its_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("body.yaml").write_text(yaml.safe_dump({
        "TRAIN": {"DATASETS": "('shapes_train',)"},
        "PRETRAIN": {"VAL_DATASETS": "('shapes_kp_val',)"}}))
    Path("e2e.yaml").write_text(yaml.safe_dump({"TEST": {"DATASETS": "('shapes_val',)"}}))
    zoo = parse_manifest({
        "name": "z", "table": "Z.md", "default_resources": {"threads": 2},
        "pretrained": {"R-18-GN": {"config": "body.yaml", "resources": {"threads": 1}}},
        "baselines": {"e2e_R-18_1x": {"config": "e2e.yaml", "section": "end_to_end",
                                      "weights_from": "R-18-GN"},
                      "scratch_R-18_1x": {"config": "e2e.yaml", "section": "end_to_end"}}})
    assert zoo.pretrained_body("R-18-GN").resources.threads == 1
    assert zoo.pretrain_datasets("R-18-GN") == (("shapes_train",), ("shapes_kp_val",))
    assert "shapes_kp_val" in zoo.all_datasets()
    pairs = dict(zip(*[iter(zoo.config_overrides("e2e_R-18_1x"))] * 2))
    assert pairs["TRAIN.WEIGHTS"] == "results/z/pretrained/R-18-GN.pkl"
    assert zoo.pretrained_inputs("e2e_R-18_1x") == ["results/z/pretrained/R-18-GN.pkl"]
    assert "TRAIN.WEIGHTS" not in zoo.config_overrides("scratch_R-18_1x")
    assert zoo.pretrained_inputs("scratch_R-18_1x") == []
    with pytest.raises(ConfigError, match="no pretrained body named 'R-50'"):
        zoo.pretrained_body("R-50")


def test_missing_config_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zoo = parse_manifest(_manifest(a={"config": "nowhere.yaml", "section": "rpn"}))
    with pytest.raises(ConfigError, match="nowhere.yaml not found"):
        zoo.datasets("a")


def test_missing_coco_files_are_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("e2e.yaml").write_text(yaml.safe_dump({
        "MODEL": {"FASTER_RCNN": True}, "TRAIN": {"DATASETS": "('coco_2017_train',)"},
        "TEST": {"DATASETS": "('coco_2017_val',)"}}))
    document = _manifest(e2e_R_1x={"config": "e2e.yaml", "section": "end_to_end"})
    document["data_root"] = str(tmp_path / "data")
    (tmp_path / "data/coco/coco_val2017").mkdir(parents=True)
    missing = parse_manifest(document).missing_dataset_files()
    assert missing == [
        ("coco_2017_train", str(tmp_path / "data/coco/annotations/instances_train2017.json")),
        ("coco_2017_train", str(tmp_path / "data/coco/coco_train2017")),
        ("coco_2017_val", str(tmp_path / "data/coco/annotations/instances_val2017.json")),
    ]


def test_sections_are_detectrons():
    assert list(SECTIONS.values())[:3] == [
        "RPN Proposal Baselines",
        "Fast & Mask R-CNN Baselines Using Precomputed RPN Proposals",
        "End-to-End Faster & Mask R-CNN Baselines"]


def test_rpn_evaluates_by_inference_when_its_test_set_is_not_dumped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fast.yaml").write_text(yaml.safe_dump({"TRAIN": {"DATASETS": "('shapes_train',)"},
                                                 "TEST": {"DATASETS": "('shapes_val',)"}}))
    Path("rpn.yaml").write_text(yaml.safe_dump({"MODEL": {"RPN_ONLY": True},
                                                "TEST": {"DATASETS": "('shapes_kp_val',)"}}))
    zoo = parse_manifest({
        "name": "z", "table": "Z.md",
        "baselines": {
            "rpn_R-18_1x": {"config": "rpn.yaml", "section": "rpn"},
            "fast_R-18_1x": {"config": "fast.yaml", "section": "fast_mask_on_proposals",
                             "proposals_from": "rpn_R-18_1x"}}})
    assert zoo.proposal_datasets("rpn_R-18_1x") == ["shapes_train", "shapes_val"]
    assert zoo.dumped_evaluation_inputs("rpn_R-18_1x") == []
