"""The config contract: Detectron's 87 configs load, merge rules, errors, finalize, dump, CLI.

References: Detectron's YAML files read with plain PyYAML, Detectron's merge semantics
(detectron/core/config.py: renamed/deprecated keys, literal decoding, type coercion,
assert_and_infer_cfg) and hand-written expected values.
"""
import os
import pickle
import warnings
from pathlib import Path

import pytest
import yaml

from detectron_lib import cli
from detectron_lib.config import (
    CfgNode,
    ConfigError,
    finalize,
    get_default_cfg,
    load_config,
    merge_from_file,
    merge_from_list,
)
from detectron_lib.config.compat import DeprecatedConfigKeyWarning

REFERENCE_CONFIG_DIR = (
    Path(os.environ.get("DETECTRON_REFERENCE_DIR") or Path(__file__).resolve().parents[2] / "shared/reference")
    / "detectron_configs"
)
R50_FPN_MASK = "12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml"


def _reference_config_names():
    # Parametrization happens at collection time, before fixtures exist; the count test below
    # uses the reference_dir fixture so a missing directory fails loudly instead of skipping.
    paths = REFERENCE_CONFIG_DIR.rglob("*.yaml")
    return sorted(str(path.relative_to(REFERENCE_CONFIG_DIR)) for path in paths)


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- Detectron's reference configs ----------------------------------------------------------

def test_there_are_87_reference_configs(reference_dir):
    configs = list((reference_dir / "detectron_configs").rglob("*.yaml"))
    assert len(configs) == 87
    assert len(_reference_config_names()) == 87


@pytest.mark.parametrize("name", _reference_config_names())
def test_reference_config_loads_unchanged(reference_dir, name):
    path = reference_dir / "detectron_configs" / name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of them uses a deprecated key
        cfg = load_config(str(path))
    assert cfg.is_frozen()
    # Every scalar leaf of the YAML (independent read with PyYAML) made it into the config.
    raw = yaml.safe_load(path.read_text())
    flat = cfg.to_flat_dict()
    for key, value in _flatten(raw).items():
        if isinstance(value, (bool, int, float)):
            assert flat[key] == value, key


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        full_key = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, full_key))
        else:
            flat[full_key] = value
    return flat


def test_mask_rcnn_r50_fpn_values(reference_dir):
    cfg = load_config(str(reference_dir / "detectron_configs" / R50_FPN_MASK))
    assert cfg.MODEL.TYPE == "generalized_rcnn"
    assert cfg.MODEL.CONV_BODY == "FPN.add_fpn_ResNet50_conv5_body"
    assert cfg.MODEL.NUM_CLASSES == 81
    assert cfg.SOLVER.STEPS == [0, 60000, 80000]  # list default stays a list
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.SOLVER.LR_POLICY == "steps_with_decay"
    assert cfg.TRAIN.SCALES == (800,)  # "(800,)" decoded by literal_eval
    assert cfg.TRAIN.DATASETS == ("coco_2014_train", "coco_2014_valminusminival")
    assert cfg.TEST.DATASETS == ("coco_2014_minival",)
    assert cfg.TEST.SCALE == 800 and cfg.TEST.MAX_SIZE == 1333
    assert cfg.MRCNN.ROI_MASK_HEAD == "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs"
    assert cfg.MRCNN.RESOLUTION == 28 and cfg.MRCNN.CONV_INIT == "MSRAFill"
    # Weights stay the URL string: nothing is downloaded or rewritten at load time.
    assert cfg.TRAIN.WEIGHTS == "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.OUTPUT_DIR == "."
    # Inferred by finalize (assert_and_infer_cfg): FASTER_RCNN -> RPN on -> no precomputed proposals
    assert cfg.RPN.RPN_ON is True
    assert cfg.TEST.PRECOMPUTED_PROPOSALS is False
    # Keys the file does not set keep Detectron's defaults.
    assert cfg.TRAIN.IMS_PER_BATCH == 2
    assert cfg.PIXEL_MEANS == (102.9801, 115.9465, 122.7717)
    # Detectron's conventions, which a Detectron config and its model-zoo weights assume.
    assert cfg.MODEL.BBOX_LEGACY_PLUS_ONE is True
    assert cfg.MRCNN.LEGACY_PASTE is True
    assert cfg.MODEL.ROI_ALIGN_ALIGNED is False


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn",
                                  "keypointrcnn_resnet50_fpn", "retinanet_resnet50_fpn"])
def test_torchvision_configs_state_torchvision_box_convention(name):
    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(str(configs / "torchvision" / f"{name}.yaml"))
    assert cfg.MODEL.BBOX_LEGACY_PLUS_ONE is False
    assert cfg.MRCNN.LEGACY_PASTE is True  # torchvision pastes as Detectron did


def test_test_time_aug_config_values(reference_dir):
    cfg = load_config(str(reference_dir / "detectron_configs/test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml"))
    assert cfg.MODEL.TYPE == "mask_rcnn"  # Detectron's deprecated alias is accepted as written
    assert cfg.TEST.BBOX_AUG.ENABLED is True
    assert cfg.TEST.BBOX_AUG.SCALES == (400, 500, 600, 700, 900, 1000, 1100, 1200)
    assert cfg.TEST.BBOX_AUG.ASPECT_RATIOS == ()
    assert cfg.TEST.BBOX_VOTE.VOTE_TH == 0.9
    assert cfg.TEST.WEIGHTS.startswith("https://dl.fbaipublicfiles.com/detectron/35859007/")
    assert cfg.TEST.WEIGHTS.endswith("coco_2014_train:coco_2014_valminusminival/generalized_rcnn/model_final.pkl")


def test_retinanet_and_fast_rcnn_inferred_keys(reference_dir):
    configs = reference_dir / "detectron_configs" / "12_2017_baselines"
    retinanet = load_config(str(configs / "retinanet_R-50-FPN_1x.yaml"))
    assert retinanet.RPN.RPN_ON is False and retinanet.TEST.PRECOMPUTED_PROPOSALS is False
    fast_rcnn = load_config(str(configs / "fast_rcnn_R-50-FPN_1x.yaml"))
    assert fast_rcnn.RPN.RPN_ON is False and fast_rcnn.TEST.PRECOMPUTED_PROPOSALS is True
    assert len(fast_rcnn.TEST.PROPOSAL_FILES) == len(fast_rcnn.TEST.DATASETS) == 1


def test_rpn_only_turns_rpn_on(tmp_path):
    cfg = load_config(_write(tmp_path, "MODEL:\n  TYPE: generalized_rcnn\n  RPN_ONLY: True\n"))
    assert cfg.RPN.RPN_ON is True
    assert cfg.TEST.PRECOMPUTED_PROPOSALS is False


# ---- merge rules ----------------------------------------------------------------------------

def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = _write(tmp_path, "TRAIN:\n  SCALE: (800,)\n")
    with pytest.raises(ConfigError) as info:
        merge_from_file(get_default_cfg(), path)
    message = str(info.value)
    assert path in message
    assert "unknown config key 'TRAIN.SCALE'" in message
    assert "Did you mean 'TRAIN.SCALES'?" in message


def test_unknown_key_from_list_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"'SOLVER.BASE_LRR'.*Did you mean 'SOLVER.BASE_LR'\?"):
        merge_from_list(get_default_cfg(), ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'TRAIN.SCALES.X'"):
        merge_from_list(get_default_cfg(), ["TRAIN.SCALES.X", "1"])


def test_renamed_key_names_new_key_and_detectron_hint(tmp_path):
    path = _write(tmp_path, "TEST:\n  SCALES: (800,)\n")
    with pytest.raises(ConfigError) as info:
        merge_from_file(get_default_cfg(), path)
    message = str(info.value)
    assert "'TEST.SCALES'" in message and "renamed to 'TEST.SCALE'" in message
    assert "Also convert from a tuple, e.g. (600, ), to an integer" in message
    assert path in message
    with pytest.raises(ConfigError, match="renamed to 'FAST_RCNN.ROI_BOX_HEAD'"):
        merge_from_list(get_default_cfg(), ["MODEL.ROI_HEAD", "fast_rcnn_heads.add_roi_2mlp_head"])


def test_deprecated_key_is_ignored_with_warning(tmp_path):
    path = _write(tmp_path, "USE_GPU_NMS: True\nTRAIN:\n  DROPOUT: True\n  MAX_SIZE: 500\n")
    cfg = get_default_cfg()
    with pytest.warns(DeprecatedConfigKeyWarning) as record:
        merge_from_file(cfg, path)
    assert {"USE_GPU_NMS", "TRAIN.DROPOUT"} <= {k for w in record for k in str(w.message).split("'")}
    assert cfg.TRAIN.MAX_SIZE == 500
    assert "USE_GPU_NMS" not in cfg and "DROPOUT" not in cfg.TRAIN
    with pytest.warns(DeprecatedConfigKeyWarning, match="RPN.ON"):
        merge_from_list(cfg, ["RPN.ON", "True"])


def test_type_mismatch_names_key_and_types(tmp_path):
    with pytest.raises(ConfigError) as info:
        merge_from_list(get_default_cfg(), ["TRAIN.MAX_SIZE", "big"])
    message = str(info.value)
    assert "'TRAIN.MAX_SIZE'" in message and "expected int" in message and "got str 'big'" in message
    # Detectron is strict: an int does not replace a float default (and vice versa).
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR.*expected float.*got int 1"):
        merge_from_list(get_default_cfg(), ["SOLVER.BASE_LR", "1"])
    with pytest.raises(ConfigError, match="TRAIN.USE_FLIPPED.*expected bool"):
        merge_from_list(get_default_cfg(), ["TRAIN.USE_FLIPPED", "1"])
    path = _write(tmp_path, "TRAIN: 5\n")
    with pytest.raises(ConfigError, match="'TRAIN': expected a config section"):
        merge_from_file(get_default_cfg(), path)


def test_tuple_and_list_are_coerced_to_the_default_type(tmp_path):
    cfg = get_default_cfg()
    merge_from_file(cfg, _write(tmp_path, "TRAIN:\n  SCALES: [500, 600]\nSOLVER:\n  STEPS: (0, 10)\n"))
    assert cfg.TRAIN.SCALES == (500, 600)
    assert cfg.SOLVER.STEPS == [0, 10]


def test_cli_values_are_decoded_as_python_literals():
    cfg = get_default_cfg()
    merge_from_list(cfg, [
        "SOLVER.BASE_LR", "0.01",
        "TRAIN.SCALES", "(400, 500)",
        "TRAIN.USE_FLIPPED", "False",
        "TRAIN.DATASETS", "('shapes_train',)",
        "OUTPUT_DIR", "results/run 1",  # not a literal: stays a string
        "TRAIN.WEIGHTS", "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl",
        "MODEL.NUM_CLASSES", 5,  # already a Python value
    ])
    assert cfg.SOLVER.BASE_LR == 0.01
    assert cfg.TRAIN.SCALES == (400, 500)
    assert cfg.TRAIN.USE_FLIPPED is False
    assert cfg.TRAIN.DATASETS == ("shapes_train",)
    assert cfg.OUTPUT_DIR == "results/run 1"
    assert cfg.TRAIN.WEIGHTS.startswith("https://")
    assert cfg.MODEL.NUM_CLASSES == 5


def test_string_key_accepts_any_value_as_str():
    # Detectron's rule: a string default converts the new value with str().
    cfg = get_default_cfg()
    merge_from_list(cfg, ["OUTPUT_DIR", "42"])
    assert cfg.OUTPUT_DIR == "42"


def test_section_override_from_list_merges_keys():
    cfg = get_default_cfg()
    merge_from_list(cfg, ["TEST.SOFT_NMS", "{'ENABLED': True}"])
    assert cfg.TEST.SOFT_NMS.ENABLED is True
    assert cfg.TEST.SOFT_NMS.METHOD == "linear"  # untouched sibling


def test_odd_number_of_overrides_is_an_error():
    with pytest.raises(ConfigError, match="odd number of tokens"):
        load_config(None, ["SOLVER.BASE_LR", "0.1", "TRAIN.SCALES"])


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(missing)
    bad = _write(tmp_path, "TRAIN:\n  SCALES: [800\n  MAX_SIZE: 1\n", "bad.yaml")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML"):
        load_config(bad)
    not_mapping = _write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match=f"config file {not_mapping} must hold a mapping"):
        load_config(not_mapping)


# ---- finalize -------------------------------------------------------------------------------

def test_finalized_config_is_frozen_everywhere():
    cfg = load_config(None, ["SOLVER.BASE_LR", "0.5"])
    with pytest.raises(ConfigError, match="'SOLVER.BASE_LR'.*frozen"):
        cfg.SOLVER.BASE_LR = 1.0
    with pytest.raises(ConfigError, match="'TEST.BBOX_AUG.ENABLED'.*frozen"):
        cfg.TEST.BBOX_AUG["ENABLED"] = True
    with pytest.raises(ConfigError, match="frozen"):
        cfg.TRAIN.update({"MAX_SIZE": 1})
    with pytest.raises(ConfigError, match="frozen"):
        cfg.pop("TRAIN")
    with pytest.raises(ConfigError, match="frozen"):
        merge_from_list(cfg, ["TRAIN.MAX_SIZE", "1"])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.TRAIN.MAX_SIZE == 1000
    twin = cfg.clone()
    twin.SOLVER.BASE_LR = 1.0
    assert not twin.is_frozen() and cfg.SOLVER.BASE_LR == 0.5


def test_frozen_config_survives_pickle():
    # Data-loader worker processes receive the config by pickling.
    cfg = load_config(None)
    restored = pickle.loads(pickle.dumps(cfg))
    assert restored == cfg and restored.TEST.BBOX_AUG.is_frozen()


def test_unknown_function_name_fails_at_load_with_closest_name():
    expected = (
        r"MODEL.CONV_BODY: unknown value 'FPN.add_fpn_ResNet50_conv4_body'.*"
        r"Did you mean 'FPN.add_fpn_ResNet50_conv5_body'\?"
    )
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["MODEL.CONV_BODY", "FPN.add_fpn_ResNet50_conv4_body"])
    with pytest.raises(ConfigError, match="RESNETS.TRANS_FUNC: unknown value 'bottleneck_transform'"):
        load_config(None, ["RESNETS.TRANS_FUNC", "bottleneck_transform"])
    with pytest.raises(ConfigError, match="FAST_RCNN.ROI_XFORM_METHOD: unknown value 'RoIAling'"):
        load_config(None, ["FAST_RCNN.ROI_XFORM_METHOD", "RoIAling"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["SOLVER.LR_POLICY", "steps_with_decay", "SOLVER.STEPS", "[10, 20]"],
         "SOLVER.STEPS must start at 0"),
        (["SOLVER.LR_POLICY", "steps_with_lrs", "SOLVER.STEPS", "[0, 20]", "SOLVER.LRS", "[0.1]"],
         "SOLVER.LRS needs one learning rate per entry"),
        (["FPN.FPN_ON", "True", "FPN.RPN_MIN_LEVEL", "3"],
         r"FPN.RPN_MIN_LEVEL \(3\) must equal FPN.ROI_MIN_LEVEL"),
        (["GROUP_NORM.DIM_PER_GP", "16"],
         "exactly one of GROUP_NORM.DIM_PER_GP and GROUP_NORM.NUM_GROUPS"),
        (["TRAIN.DATASETS", "('a', 'b')", "TRAIN.PROPOSAL_FILES", "('a.pkl',)"],
         "TRAIN.PROPOSAL_FILES needs one file per entry"),
        (["TEST.DATASETS", "('a',)"], "TEST.PROPOSAL_FILES needs one file per entry"),
        (["MODEL.CONV_BODY", "ResNet.add_ResNet50_conv4_body", "TRAIN.FREEZE_AT", "1"],
         "TRAIN.FREEZE_AT must be one of"),
        (["MODEL.CONV_BODY", "VGG16.add_VGG16_conv5_body", "TRAIN.FREEZE_AT", "6"],
         "TRAIN.FREEZE_AT must be between 0 and 5"),
        (["PIXEL_MEANS", "(1.0, 2.0)"], "PIXEL_MEANS must be three numbers"),
    ],
)
def test_inconsistent_configs_fail_at_finalize(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_detectron_nested_pixel_means_are_flattened():
    cfg = load_config(None, ["PIXEL_MEANS", "[[[100.0, 110.0, 120.0]]]"])
    assert cfg.PIXEL_MEANS == (100.0, 110.0, 120.0)


def test_finalize_returns_the_same_frozen_node():
    cfg = get_default_cfg()
    assert finalize(cfg) is cfg and cfg.is_frozen()


# ---- CfgNode, defaults, dump ------------------------------------------------------------------

def test_default_cfg_is_a_fresh_mutable_copy():
    first, second = get_default_cfg(), get_default_cfg()
    first.TRAIN.SCALES = (1,)
    assert second.TRAIN.SCALES == (600,)
    assert not first.is_frozen() and isinstance(first.TRAIN, CfgNode)
    # Spot-check Detectron defaults (detectron/core/config.py).
    assert second.TEST.NMS == 0.3 and second.SOLVER.WARM_UP_FACTOR == 1.0 / 3.0
    assert second.MODEL.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert second.TEST.BBOX_AUG.AREA_TH_HI == 180**2 and second.RNG_SEED == 3
    assert second.DATA_ROOT == "" and second.DATASET_CATALOG_FILE == ""


def test_attribute_and_item_access_agree():
    cfg = get_default_cfg()
    cfg.TRAIN.MAX_SIZE = 1333
    assert cfg["TRAIN"]["MAX_SIZE"] == 1333
    with pytest.raises(AttributeError, match="TRAIN.NOPE"):
        cfg.TRAIN.NOPE


def test_to_flat_dict_uses_dotted_keys():
    flat = get_default_cfg().to_flat_dict()
    assert flat["TRAIN.SCALES"] == (600,)
    assert flat["TEST.BBOX_AUG.ENABLED"] is False
    assert flat["NUM_GPUS"] == 1
    assert not any(isinstance(v, CfgNode) for v in flat.values())


def test_dump_round_trips(tmp_path, reference_dir):
    cfg = load_config(
        str(reference_dir / "detectron_configs" / R50_FPN_MASK),
        ["TRAIN.SCALES", "(400, 500)", "OUTPUT_DIR", "out/x y", "EXPECTED_RESULTS",
         "[['coco_2014_minival', 'box', 'AP', 0.3]]"],
    )
    text = cfg.dump()
    assert "SCALES: [400, 500]" in text  # tuples written as YAML lists
    assert yaml.safe_load(text)["TRAIN"]["WEIGHTS"] == cfg.TRAIN.WEIGHTS
    reloaded = load_config(_write(tmp_path, text, "dumped.yaml"))
    assert reloaded == cfg
    assert reloaded.TRAIN.SCALES == (400, 500)


def test_cli_config_prints_yaml_with_override(capsys, reference_dir):
    path = str(reference_dir / "detectron_configs" / R50_FPN_MASK)
    assert cli.main(["config", "--cfg", path, "SOLVER.BASE_LR", "0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["SOLVER"]["BASE_LR"] == 0.5
    assert printed["TRAIN"]["SCALES"] == [800]


def test_cli_config_reports_bad_key(capsys, reference_dir):
    path = str(reference_dir / "detectron_configs" / R50_FPN_MASK)
    assert cli.main(["config", "--cfg", path, "SOLVER.BASE_LRR", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'SOLVER.BASE_LRR'" in err and "Did you mean 'SOLVER.BASE_LR'?" in err


@pytest.mark.parametrize("overrides", [
    ["MODEL.TYPE", "retinanet"],
    ["MODEL.TYPE", "generalized_rcnn", "RETINANET.RETINANET_ON", "True"],
])
def test_retinanet_type_and_switch_go_together(overrides):
    with pytest.raises(ConfigError, match="MODEL.TYPE .* RETINANET.RETINANET_ON"):
        load_config(None, overrides)


@pytest.mark.parametrize("key,value,message", [
    ("SOLVER.MAX_ITER", "-5", "SOLVER.MAX_ITER must be positive, got -5"),
    ("TRAIN.SNAPSHOT_ITERS", "0", "TRAIN.SNAPSHOT_ITERS must be positive, got 0"),
    ("SOLVER.BASE_LR", "-0.01", "SOLVER.BASE_LR must be positive, got -0.01"),
    ("TRAIN.SCALES", "(800, 0)", r"each entry of TRAIN.SCALES must be positive, got \(800, 0\)"),
    ("TRAIN.SCALES", "()", r"TRAIN.SCALES needs at least one value, got \(\)"),
    ("TRAIN.IMS_PER_BATCH", "0", "TRAIN.IMS_PER_BATCH must be positive"),
    ("TEST.NMS", "1.5", "TEST.NMS must be between 0 and 1, got 1.5"),
    ("TRAIN.FG_FRACTION", "-0.25", "TRAIN.FG_FRACTION must be between 0 and 1"),
    ("RETINANET.PRIOR_PROB", "1.0", "RETINANET.PRIOR_PROB must be strictly between 0 and 1"),
    ("TRAIN.GT_MIN_AREA", "-2", r"TRAIN.GT_MIN_AREA must be -1 \(off\) or at least 0, got -2"),
    ("TRAIN.BG_THRESH_LO", "0.6", r"TRAIN.BG_THRESH_LO \(0.6\) must not exceed TRAIN.BG_THRESH_HI"),
    ("SOLVER.STEPS", "[0, 500, 300]", "SOLVER.STEPS must be strictly increasing"),
    ("SOLVER.LR_POLICY", "stepz", "SOLVER.LR_POLICY: unknown value 'stepz'"),
])
def test_out_of_range_values_are_refused_when_the_config_is_finalized(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [key, value])


def test_non_finite_numbers_from_yaml_are_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  BASE_LR: .inf\n  WEIGHT_DECAY: .nan\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "SOLVER.BASE_LR must be a finite number, got inf" in str(info.value)
    assert "SOLVER.WEIGHT_DECAY must be at least 0, got nan" in str(info.value)


def test_every_out_of_range_value_is_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["SOLVER.MAX_ITER", "0", "TEST.SCALE", "-1", "TRAIN.RPN_FG_FRACTION",
                           "2.0"])
    assert all(key in str(info.value)
               for key in ("SOLVER.MAX_ITER", "TEST.SCALE", "TRAIN.RPN_FG_FRACTION"))


def test_cli_train_with_an_out_of_range_value_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--cfg", str(Path(__file__).resolve().parents[1] /
                                          "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"),
                     "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "-5"])
    assert code == 2
    assert "SOLVER.MAX_ITER must be positive, got -5" in capsys.readouterr().err
    assert not out.exists()


def test_a_classifier_needs_a_class_besides_background():
    with pytest.raises(ConfigError, match="MODEL.NUM_CLASSES is 1; set it to the number of object "
                                          "classes plus one for background"):
        load_config(None, ["MODEL.TYPE", "generalized_rcnn", "MODEL.NUM_CLASSES", "1"])
    load_config(None, ["MODEL.TYPE", "generalized_rcnn", "MODEL.RPN_ONLY", "True"])
