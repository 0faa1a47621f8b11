"""One ``Registry`` per config key that names a builder function, with Detectron's names declared.

Detectron resolved these strings at model-build time (``model_builder.get_func`` for the
module-qualified names, ``globals()`` of ``ResNet.py`` for the ``RESNETS.*_FUNC`` names,
``lr_policy.get_lr_func`` for ``SOLVER.LR_POLICY``). Declaring the names it accepted lets
``finalize`` reject a typo at load time without importing modeling code; modeling code
registers its builders later, e.g. ``CONV_BODY.register("FPN.add_fpn_ResNet50_conv5_body")``.

``FUNCTION_NAME_KEYS`` maps each full config key to its registry; ``finalize`` checks every
non-empty value against it.
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


def _legacy_for(names):
    """The renamed-function entries whose new name is one of ``names``."""
    return {old: new for old, new in _DETECTRON_RENAMED_FUNCTIONS.items() if new in names}


# ---- MODEL.CONV_BODY ------------------------------------------------------------------------
_CONV_BODIES = (
    "FPN.add_fpn_ResNet50_conv5_body",
    "FPN.add_fpn_ResNet50_conv5_P2only_body",
    "FPN.add_fpn_ResNet101_conv5_body",
    "FPN.add_fpn_ResNet101_conv5_P2only_body",
    "FPN.add_fpn_ResNet152_conv5_body",
    "FPN.add_fpn_ResNet152_conv5_P2only_body",
    "ResNet.add_ResNet50_conv4_body",
    "ResNet.add_ResNet50_conv5_body",
    "ResNet.add_ResNet101_conv4_body",
    "ResNet.add_ResNet101_conv5_body",
    "ResNet.add_ResNet152_conv5_body",
    "VGG16.add_VGG16_conv5_body",
    "VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body",
    # CPU-sized baselines of this project (ResNet-18/34 with basic blocks)
    "FPN.add_fpn_ResNet18_conv5_body",
    "FPN.add_fpn_ResNet18_conv5_P2only_body",
    "FPN.add_fpn_ResNet34_conv5_body",
    "FPN.add_fpn_ResNet34_conv5_P2only_body",
    "ResNet.add_ResNet18_conv4_body",
    "ResNet.add_ResNet18_conv5_body",
    "ResNet.add_ResNet34_conv4_body",
    "ResNet.add_ResNet34_conv5_body",
    "ResNet.add_ResNet152_conv4_body",
    "VGG16.add_VGG16_gn_conv5_body",
)
CONV_BODY = Registry("MODEL.CONV_BODY")
CONV_BODY.declare(*_CONV_BODIES)

# ---- FAST_RCNN.ROI_BOX_HEAD -----------------------------------------------------------------
_ROI_BOX_HEADS = (
    "fast_rcnn_heads.add_roi_2mlp_head",
    "fast_rcnn_heads.add_roi_Xconv1fc_head",
    "fast_rcnn_heads.add_roi_Xconv1fc_gn_head",
    "ResNet.add_ResNet_roi_conv5_head",
    "VGG16.add_VGG16_roi_fc_head",
    "VGG_CNN_M_1024.add_VGG_CNN_M_1024_roi_fc_head",
)
ROI_BOX_HEAD = Registry("FAST_RCNN.ROI_BOX_HEAD", legacy_names=_legacy_for(_ROI_BOX_HEADS))
ROI_BOX_HEAD.declare(*_ROI_BOX_HEADS)

# ---- MRCNN.ROI_MASK_HEAD --------------------------------------------------------------------
_ROI_MASK_HEADS = (
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
    "mask_rcnn_heads.mask_rcnn_fcn_head_v0up",
)
ROI_MASK_HEAD = Registry("MRCNN.ROI_MASK_HEAD", legacy_names=_legacy_for(_ROI_MASK_HEADS))
ROI_MASK_HEAD.declare(*_ROI_MASK_HEADS)

# ---- KRCNN.ROI_KEYPOINTS_HEAD ---------------------------------------------------------------
ROI_KEYPOINTS_HEAD = Registry("KRCNN.ROI_KEYPOINTS_HEAD")
ROI_KEYPOINTS_HEAD.declare(
    "keypoint_rcnn_heads.add_roi_pose_head_v1convX",
    "keypoint_rcnn_heads.add_ResNet_roi_conv5_head_for_keypoints",
)


# ---- RESNETS.{TRANS,STEM,SHORTCUT}_FUNC -----------------------------------------------------
# Detectron looked these up among ResNet.py's functions, so configs give the bare function
# name; the module-qualified spelling ("ResNet.basic_bn_stem") is accepted as an alias.
def _resnet_registry(config_key, names):
    registry = Registry(config_key, legacy_names={f"ResNet.{name}": name for name in names})
    registry.declare(*names)
    return registry


RESNET_TRANS_FUNC = _resnet_registry(
    "RESNETS.TRANS_FUNC",
    (
        "bottleneck_transformation",
        "bottleneck_gn_transformation",
        # this project: ResNet-18/34 basic blocks, and trainable BatchNorm for training
        # from scratch
        "basic_transformation",
        "basic_gn_transformation",
        "bottleneck_trainable_bn_transformation",
        "basic_trainable_bn_transformation",
    ),
)
RESNET_STEM_FUNC = _resnet_registry(
    "RESNETS.STEM_FUNC", ("basic_bn_stem", "basic_gn_stem", "basic_trainable_bn_stem")
)
RESNET_SHORTCUT_FUNC = _resnet_registry(
    "RESNETS.SHORTCUT_FUNC", ("basic_bn_shortcut", "basic_gn_shortcut", "basic_trainable_bn_shortcut")
)

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
MODEL_TYPE = Registry(
    "MODEL.TYPE",
    legacy_names={name: "generalized_rcnn" for name in _MODEL_TYPES_ALIASING_GENERALIZED_RCNN},
)
MODEL_TYPE.declare(
    "generalized_rcnn",
    "rfcn",
    "retinanet",
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
)

# ---- SOLVER.LR_POLICY -----------------------------------------------------------------------
# Detectron's utils/lr_policy.py: policy NAME is the function lr_func_NAME.
LR_POLICY = Registry("SOLVER.LR_POLICY")
LR_POLICY.declare("step", "steps_with_decay", "steps_with_lrs", "cosine_decay", "exp_decay")

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
        LR_POLICY,
    )
}
