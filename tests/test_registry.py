"""Registry and the function-name tables of ``detectron_lib.config.names``.

Reference: the function names Detectron's model builder resolved (detectron/modeling/*.py,
modeling/name_compat.py) and the names used by Detectron's 87 reference configs.
"""
import subprocess
import sys

import pytest
import yaml

from detectron_lib.config import load_config, names
from detectron_lib.config.registry import Registry
from detectron_lib.engine.optim import lr_schedule_from_cfg
from detectron_lib.errors import ConfigError


def _fresh_box_head_registry():
    registry = Registry(
        "FAST_RCNN.ROI_BOX_HEAD",
        legacy_names={"head_builder.add_roi_2mlp_head": "fast_rcnn_heads.add_roi_2mlp_head"},
    )
    registry.declare("fast_rcnn_heads.add_roi_2mlp_head", "ResNet.add_ResNet_roi_conv5_head")
    return registry


def test_registered_builder_is_returned_under_every_name():
    registry = _fresh_box_head_registry()

    @registry.register("fast_rcnn_heads.add_roi_2mlp_head", "2mlp")
    def build_two_mlp_head(cfg):
        return "head"

    assert registry.get("fast_rcnn_heads.add_roi_2mlp_head") is build_two_mlp_head
    assert registry.get("2mlp") is build_two_mlp_head
    assert "2mlp" in registry
    assert registry.names() == ["2mlp", "fast_rcnn_heads.add_roi_2mlp_head"]


def test_legacy_name_resolves_to_current_builder():
    # Detectron's name_compat: head_builder.add_roi_2mlp_head -> fast_rcnn_heads.add_roi_2mlp_head
    registry = _fresh_box_head_registry()
    builder = registry.register("fast_rcnn_heads.add_roi_2mlp_head")(lambda cfg: None)
    assert registry.get("head_builder.add_roi_2mlp_head") is builder
    assert registry.is_known("head_builder.add_roi_2mlp_head")


def test_declared_but_unregistered_name_says_builder_is_missing():
    registry = _fresh_box_head_registry()
    assert registry.is_known("ResNet.add_ResNet_roi_conv5_head")
    assert "ResNet.add_ResNet_roi_conv5_head" not in registry
    with pytest.raises(ConfigError, match="known Detectron name.*not available in this build"):
        registry.get("ResNet.add_ResNet_roi_conv5_head")


def test_unknown_name_names_key_and_closest_known_name():
    registry = _fresh_box_head_registry()
    with pytest.raises(ConfigError) as info:
        registry.get("fast_rcnn_heads.add_roi_2mpl_head")
    message = str(info.value)
    assert "FAST_RCNN.ROI_BOX_HEAD" in message
    assert "Did you mean 'fast_rcnn_heads.add_roi_2mlp_head'?" in message


def test_empty_name_is_a_config_error():
    with pytest.raises(ConfigError, match="FAST_RCNN.ROI_BOX_HEAD is empty"):
        _fresh_box_head_registry().get("")


def test_registering_a_second_builder_under_a_taken_name_fails():
    registry = _fresh_box_head_registry()
    registry.register("2mlp")(lambda cfg: 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("2mlp")(lambda cfg: 2)


def test_every_function_name_in_the_reference_configs_is_known(reference_dir):
    # Independent reference: the values Detectron's own configs use, read with plain PyYAML.
    checked = 0
    for path in sorted((reference_dir / "detectron_configs").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for full_key, registry in names.FUNCTION_NAME_KEYS.items():
            section, key = full_key.split(".")
            value = raw.get(section, {}).get(key)
            if value:
                assert registry.is_known(value), f"{path.name}: {full_key}={value}"
                checked += 1
    assert checked > 87 * 2  # at least MODEL.TYPE and MODEL.CONV_BODY in each file


@pytest.mark.parametrize(
    ("registry", "name"),
    [
        (names.CONV_BODY, "FPN.add_fpn_ResNet152_conv5_body"),
        (names.CONV_BODY, "VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body"),
        (names.CONV_BODY, "FPN.add_fpn_ResNet18_conv5_body"),  # CPU baseline
        (names.CONV_BODY, "ResNet.add_ResNet18_conv4_body"),  # CPU baseline
        (names.ROI_BOX_HEAD, "fast_rcnn_heads.add_roi_Xconv1fc_gn_head"),
        (names.ROI_BOX_HEAD, "VGG16.add_VGG16_roi_fc_head"),
        (names.ROI_MASK_HEAD, "mask_rcnn_heads.mask_rcnn_fcn_head_v0up"),
        (names.ROI_MASK_HEAD, "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs"),  # legacy
        (names.ROI_KEYPOINTS_HEAD, "keypoint_rcnn_heads.add_roi_pose_head_v1convX"),
        (names.RESNET_TRANS_FUNC, "basic_transformation"),  # CPU baseline
        (names.RESNET_TRANS_FUNC, "ResNet.bottleneck_gn_transformation"),  # qualified alias
        (names.RESNET_STEM_FUNC, "basic_gn_stem"),
        (names.RESNET_SHORTCUT_FUNC, "basic_gn_shortcut"),
        (names.MODEL_TYPE, "retinanet"),
        (names.MODEL_TYPE, "mask_rcnn"),  # Detectron's deprecated alias of generalized_rcnn
    ],
)
def test_detectron_and_baseline_names_are_declared(registry, name):
    assert registry.is_known(name)


def test_every_provided_builder_imports_and_a_declared_name_says_it_has_none():
    for registry in names.FUNCTION_NAME_KEYS.values():
        for name in registry.names():
            assert callable(registry.get(name)), f"{registry.config_key}: {name}"
    with pytest.raises(ConfigError, match="known Detectron name, but its builder is not available"):
        names.CONV_BODY.get("VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body")


def test_provided_name_takes_no_second_builder():
    registry = Registry("MODEL.CONV_BODY")
    registry.provide("tiny", "builtins:print")
    assert "tiny" in registry and registry.get("tiny") is print
    with pytest.raises(ValueError, match="already registered"):
        registry.register("tiny")(lambda cfg: None)
    with pytest.raises(ValueError, match="already has a builder"):
        registry.provide("tiny", "builtins:len")


@pytest.mark.parametrize("policy", names.LR_POLICIES)
def test_every_lr_policy_validates_and_runs(policy):
    cfg = load_config(None, ["SOLVER.LR_POLICY", policy, "SOLVER.STEPS", "(0, 10)",
                             "SOLVER.LRS", "(1.0, 0.1)", "SOLVER.MAX_ITER", "20"])
    schedule = lr_schedule_from_cfg(cfg)
    assert all(schedule(it) > 0 for it in (0, 15))


def test_deprecated_model_types_map_to_generalized_rcnn():
    for old in ("mask_rcnn", "keypoint_rcnn", "rpn", "fpn_rpn", "faster_rcnn", "fast_rcnn"):
        assert names.MODEL_TYPE.canonical_name(old) == "generalized_rcnn"


def test_resnet_functions_are_not_valid_conv_bodies():
    assert not names.CONV_BODY.is_known("bottleneck_transformation")
    assert not names.RESNET_TRANS_FUNC.is_known("FPN.add_fpn_ResNet50_conv5_body")


def test_config_package_imports_no_modeling_code_nor_torch():
    # Layering rule: config is the lowest layer; validating names must not need modeling.
    code = (
        "import sys, detectron_lib.config, detectron_lib.config.names;"
        "bad = [m for m in sys.modules if m.startswith('detectron_lib.modeling') or m == 'torch'];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
