"""One ``Registry`` per config key that names a builder function: the one list of the names
each key accepts and the builder each name runs.

Detectron resolved these strings at model-build time (``model_builder.get_func`` for the
module-qualified names, ``globals()`` of ``ResNet.py`` for the ``RESNETS.*_FUNC`` names).
Here each accepted name is either provided with its builder, named by "module:function" and
imported only when a model is built (so ``finalize`` rejects a typo at load time without
importing modeling code), or declared as a Detectron name with no builder here.

``FUNCTION_NAME_KEYS`` maps each full config key to its registry; ``finalize`` checks every
non-empty value against it. ``LR_POLICIES`` lists SOLVER.LR_POLICY's values (Detectron's
utils/lr_policy.py: policy NAME was its function lr_func_NAME), for validation and the
optimizer alike.
"""
from detectron_lib.config.registry import Registry

# Detectron's modeling/name_compat.py: function names it renamed, old -> new.
_DETECTRON_RENAMED_FUNCTIONS = {
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs":
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up":
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0upshare":
        "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0up":
        "mask_rcnn_heads.mask_rcnn_fcn_head_v0up",
    "head_builder.add_roi_2mlp_head": "fast_rcnn_heads.add_roi_2mlp_head",
}

_BACKBONE = "detectron_lib.modeling.backbone.build"
_BOX_HEAD = "detectron_lib.modeling.roi_heads.box_head"
_MASK_HEAD = "detectron_lib.modeling.roi_heads.mask_head"
_KEYPOINT_HEAD = "detectron_lib.modeling.roi_heads.keypoint_head"
_META_ARCH = "detectron_lib.modeling.meta_arch"


def _registry(config_key, provided, declared=(), legacy_names=None):
    """A Registry with ``provided`` {name: "module:function" or ("module:function", kwargs)}
    and ``declared`` names without a builder."""
    registry = Registry(config_key, legacy_names=legacy_names)
    for name, target in provided.items():
        target, kwargs = (target, {}) if isinstance(target, str) else target
        registry.provide(name, target, **kwargs)
    registry.declare(*declared)
    return registry


# ---- MODEL.CONV_BODY ------------------------------------------------------------------------
# ResNet-18/34 (basic blocks) are this project's CPU-sized bodies; the others Detectron's.
_RESNET_DEPTHS = (18, 34, 50, 101, 152)
CONV_BODY = _registry("MODEL.CONV_BODY", {
    **{f"ResNet.add_ResNet{d}_conv4_body":
       (f"{_BACKBONE}:resnet_body_from_config", {"depth": d, "num_stages": 3}) for d in _RESNET_DEPTHS},
    **{f"ResNet.add_ResNet{d}_conv5_body":
       (f"{_BACKBONE}:resnet_body_from_config", {"depth": d, "num_stages": 4}) for d in _RESNET_DEPTHS},
    **{f"FPN.add_fpn_ResNet{d}_conv5_body":
       (f"{_BACKBONE}:fpn_from_config", {"depth": d}) for d in _RESNET_DEPTHS},
    **{f"FPN.add_fpn_ResNet{d}_conv5_P2only_body":
       (f"{_BACKBONE}:fpn_from_config", {"depth": d, "finest_only": True}) for d in _RESNET_DEPTHS},
    "VGG16.add_VGG16_conv5_body": f"{_BACKBONE}:vgg16_body_from_config",
    "VGG16.add_VGG16_gn_conv5_body": f"{_BACKBONE}:vgg16_gn_body_from_config",
}, declared=("VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body",))

# ---- FAST_RCNN.ROI_BOX_HEAD -----------------------------------------------------------------
_ROI_BOX_HEADS = {
    "fast_rcnn_heads.add_roi_2mlp_head": f"{_BOX_HEAD}:mlp_head_from_config",
    "fast_rcnn_heads.add_roi_Xconv1fc_head": f"{_BOX_HEAD}:conv_fc_head_from_config",
    "fast_rcnn_heads.add_roi_Xconv1fc_gn_head": f"{_BOX_HEAD}:conv_fc_gn_head_from_config",
    "ResNet.add_ResNet_roi_conv5_head": f"{_BACKBONE}:resnet_roi_head_from_config",
    "VGG16.add_VGG16_roi_fc_head": f"{_BACKBONE}:vgg16_roi_head_from_config",
}
ROI_BOX_HEAD = _registry("FAST_RCNN.ROI_BOX_HEAD", _ROI_BOX_HEADS,
                         declared=("VGG_CNN_M_1024.add_VGG_CNN_M_1024_roi_fc_head",),
                         legacy_names={old: new for old, new in _DETECTRON_RENAMED_FUNCTIONS.items()
                                       if new in _ROI_BOX_HEADS})

# ---- MRCNN.ROI_MASK_HEAD --------------------------------------------------------------------
_ROI_MASK_HEADS = {
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs": f"{_MASK_HEAD}:v1up4convs_head_from_config",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn":
        f"{_MASK_HEAD}:v1up4convs_gn_head_from_config",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up": f"{_MASK_HEAD}:v1up_head_from_config",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare": f"{_MASK_HEAD}:v0upshare_head_from_config",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v0up": f"{_MASK_HEAD}:v0up_head_from_config",
}
ROI_MASK_HEAD = _registry("MRCNN.ROI_MASK_HEAD", _ROI_MASK_HEADS,
                          legacy_names={old: new for old, new in _DETECTRON_RENAMED_FUNCTIONS.items()
                                        if new in _ROI_MASK_HEADS})

# ---- KRCNN.ROI_KEYPOINTS_HEAD ---------------------------------------------------------------
ROI_KEYPOINTS_HEAD = _registry("KRCNN.ROI_KEYPOINTS_HEAD", {
    "keypoint_rcnn_heads.add_roi_pose_head_v1convX": f"{_KEYPOINT_HEAD}:v1convx_head_from_config",
}, declared=("keypoint_rcnn_heads.add_ResNet_roi_conv5_head_for_keypoints",))


# ---- RESNETS.{TRANS,STEM,SHORTCUT}_FUNC -----------------------------------------------------
# Detectron looked these up among ResNet.py's functions, so configs give the bare function
# name; the module-qualified spelling ("ResNet.basic_bn_stem") is accepted as an alias.
def _resnet_registry(config_key, provided):
    return _registry(config_key, provided,
                     legacy_names={f"ResNet.{name}": name for name in provided})


# basic_*: this project's ResNet-18/34 blocks; trainable_bn: BatchNorm trained from scratch
RESNET_TRANS_FUNC = _resnet_registry("RESNETS.TRANS_FUNC", {
    name: f"{_BACKBONE}:{name}" for name in (
        "bottleneck_transformation", "bottleneck_gn_transformation",
        "bottleneck_trainable_bn_transformation", "basic_transformation",
        "basic_gn_transformation", "basic_trainable_bn_transformation")})
_NORM_OF_STEM_AND_SHORTCUT = {"bn": "frozen_bn_norm", "gn": "gn_norm",
                              "trainable_bn": "trainable_bn_norm"}
RESNET_STEM_FUNC = _resnet_registry("RESNETS.STEM_FUNC", {
    f"basic_{kind}_stem": f"{_BACKBONE}:{norm}" for kind, norm in _NORM_OF_STEM_AND_SHORTCUT.items()})
RESNET_SHORTCUT_FUNC = _resnet_registry("RESNETS.SHORTCUT_FUNC", {
    f"basic_{kind}_shortcut": f"{_BACKBONE}:{norm}"
    for kind, norm in _NORM_OF_STEM_AND_SHORTCUT.items()})

# ---- MODEL.TYPE -----------------------------------------------------------------------------
# Detectron's model_builder kept these old model types as thin wrappers that warn and build
# a generalized_rcnn (the config flags MASK_ON, KEYPOINTS_ON, RPN_ONLY, FASTER_RCNN say what).
_MODEL_TYPES_ALIASING_GENERALIZED_RCNN = (
    "fast_rcnn",
    "mask_rcnn",
    "keypoint_rcnn",
    "mask_and_keypoint_rcnn",
    "rpn",
    "fpn_rpn",
    "faster_rcnn",
)
MODEL_TYPE = _registry("MODEL.TYPE", {
    "generalized_rcnn": f"{_META_ARCH}:build_generalized_rcnn",
    "rfcn": f"{_META_ARCH}:build_rfcn",
    "retinanet": "detectron_lib.modeling.retinanet:build_retinanet",
}, declared=(
    # Detectron's deprecated model types with behaviour of their own: frozen backbones and
    # hard-coded backbone + head pairs (they ignore MODEL.CONV_BODY / ROI_BOX_HEAD)
    "fast_rcnn_frozen_features",
    "rpn_frozen_features",
    "fpn_rpn_frozen_features",
    "mask_rcnn_frozen_features",
    "keypoint_rcnn_frozen_features",
    "VGG_CNN_M_1024_fast_rcnn",
    "VGG16_fast_rcnn",
    "ResNet50_fast_rcnn",
    "ResNet101_fast_rcnn",
    "ResNet50_fast_rcnn_frozen_features",
    "ResNet101_fast_rcnn_frozen_features",
    "VGG_CNN_M_1024_rpn",
    "VGG16_rpn",
    "ResNet50_rpn_conv4",
    "ResNet101_rpn_conv4",
    "VGG_CNN_M_1024_rpn_frozen_features",
    "VGG16_rpn_frozen_features",
    "ResNet50_rpn_conv4_frozen_features",
    "ResNet101_rpn_conv4_frozen_features",
    "VGG16_faster_rcnn",
    "ResNet50_faster_rcnn",
    "ResNet101_faster_rcnn",
    "ResNet50_rfcn",
    "ResNet101_rfcn",
), legacy_names={name: "generalized_rcnn" for name in _MODEL_TYPES_ALIASING_GENERALIZED_RCNN})

# ---- SOLVER.LR_POLICY -----------------------------------------------------------------------
LR_POLICIES = ("step", "steps_with_decay", "steps_with_lrs", "steps_with_relative_lrs",
               "cosine_decay", "exp_decay")

FUNCTION_NAME_KEYS = {
    registry.config_key: registry
    for registry in (
        MODEL_TYPE,
        CONV_BODY,
        ROI_BOX_HEAD,
        ROI_MASK_HEAD,
        ROI_KEYPOINTS_HEAD,
        RESNET_TRANS_FUNC,
        RESNET_STEM_FUNC,
        RESNET_SHORTCUT_FUNC,
    )
}
