"""``finalize``: infer the derived keys, check the config as a whole, then freeze it.

This is Detectron's ``assert_and_infer_cfg`` plus, moved to load time, the consistency checks
Detectron only made (as bare asserts or KeyErrors) once training or testing was under way:
a mistake fails before any data is read, with a message naming the key.
"""
import math

from detectron_lib.config.names import FUNCTION_NAME_KEYS, LR_POLICIES
from detectron_lib.errors import ConfigError

# String options with a fixed set of values (the values Detectron's code handled).
CHOICE_KEYS = {
    "SOLVER.WARM_UP_METHOD": ("constant", "linear"),
    "FAST_RCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "PIXEL_ORDER": ("BGR", "RGB"),
    "MRCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "KRCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "KRCNN.KEYPOINT_CONFIDENCE": ("bbox", "logit", "prob"),
    "KRCNN.RESULTS_FORMAT": ("detectron", "detectron2"),
    "TEST.BBOX_AUG.SCORE_HEUR": ("ID", "AVG", "UNION"),
    "TEST.BBOX_AUG.COORD_HEUR": ("ID", "AVG", "UNION"),
    "TEST.MASK_AUG.HEUR": ("SOFT_AVG", "SOFT_MAX", "LOGIT_AVG"),
    "TEST.KPS_AUG.HEUR": ("HM_AVG", "HM_MAX"),
    "TEST.SOFT_NMS.METHOD": ("linear", "gaussian", "hard"),
    "TEST.BBOX_VOTE.SCORING_METHOD": (
        "ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM",
    ),
    "MODEL.BODY_PRECISION": ("auto", "float32", "float16", "bfloat16"),
    "MODEL.HEAD_PRECISION": ("auto", "float32", "float16", "bfloat16"),
    "SOLVER.LR_POLICY": LR_POLICIES,
}

# Numeric keys and the values they may take: (test, what the value must be). A tuple key's
# test applies to each of its entries.
_POSITIVE = (lambda v: v > 0, "positive")
_NON_NEGATIVE = (lambda v: v >= 0, "at least 0")
_FRACTION = (lambda v: 0 <= v <= 1, "between 0 and 1")
_OFF_OR_NON_NEGATIVE = (lambda v: v == -1 or v >= 0, "-1 (off) or at least 0")
_UNSET_OR_POSITIVE = (lambda v: v == -1 or v > 0, "-1 (unset) or positive")
RANGE_KEYS = {
    **dict.fromkeys((
        "TRAIN.SCALES", "TRAIN.MAX_SIZE", "TRAIN.IMS_PER_BATCH", "TRAIN.BATCH_SIZE_PER_IM",
        "TRAIN.SNAPSHOT_ITERS", "TRAIN.RPN_BATCH_SIZE_PER_IM", "TRAIN.RPN_PRE_NMS_TOP_N",
        "TRAIN.RPN_POST_NMS_TOP_N", "TEST.SCALE", "TEST.MAX_SIZE", "TEST.RPN_PRE_NMS_TOP_N",
        "TEST.RPN_POST_NMS_TOP_N", "TEST.DETECTIONS_PER_IM", "TEST.SOFT_NMS.SIGMA",
        "MODEL.BBOX_REG_WEIGHTS", "RETINANET.ASPECT_RATIOS", "RETINANET.SCALES_PER_OCTAVE",
        "RETINANET.ANCHOR_SCALE", "RETINANET.PRE_NMS_TOP_N", "SOLVER.BASE_LR", "SOLVER.GAMMA",
        "SOLVER.STEP_SIZE", "SOLVER.MAX_ITER", "SOLVER.WARM_UP_FACTOR",
        "FAST_RCNN.MLP_HEAD_DIM", "FAST_RCNN.CONV_HEAD_DIM", "FAST_RCNN.ROI_XFORM_RESOLUTION",
        "RPN.SIZES", "RPN.STRIDE", "RPN.ASPECT_RATIOS", "FPN.DIM", "FPN.COARSEST_STRIDE",
        "FPN.ROI_CANONICAL_SCALE", "FPN.ROI_CANONICAL_LEVEL", "FPN.ROI_MAX_LEVEL",
        "FPN.ROI_MIN_LEVEL", "FPN.RPN_MAX_LEVEL", "FPN.RPN_MIN_LEVEL", "FPN.RPN_ASPECT_RATIOS",
        "FPN.RPN_ANCHOR_START_SIZE", "MRCNN.RESOLUTION", "MRCNN.ROI_XFORM_RESOLUTION",
        "MRCNN.DIM_REDUCED", "MRCNN.DILATION", "MRCNN.UPSAMPLE_RATIO", "KRCNN.DECONV_DIM",
        "KRCNN.DILATION", "KRCNN.DECONV_KERNEL", "KRCNN.CONV_HEAD_DIM", "KRCNN.CONV_HEAD_KERNEL",
        "KRCNN.ROI_XFORM_RESOLUTION", "RFCN.PS_GRID_SIZE", "RESNETS.NUM_GROUPS",
        "RESNETS.WIDTH_PER_GROUP", "RESNETS.RES5_DILATION", "GROUP_NORM.EPSILON", "NUM_GPUS",
        "BBOX_XFORM_CLIP", "EPS", "PRETRAIN.MAX_ITER", "PRETRAIN.CROP_SIZE",
        "PRETRAIN.IMAGES_PER_BATCH", "PRETRAIN.CROPS_PER_IMAGE", "PRETRAIN.BASE_LR",
    ), _POSITIVE),
    **dict.fromkeys((
        "TRAIN.RPN_MIN_SIZE", "DATA_LOADER.NUM_THREADS", "TEST.RPN_MIN_SIZE",
        "RETINANET.NUM_CONVS", "RETINANET.BBOX_REG_WEIGHT", "RETINANET.BBOX_REG_BETA",
        "RETINANET.LOSS_GAMMA", "SOLVER.STEPS", "SOLVER.LRS", "SOLVER.WEIGHT_DECAY",
        "SOLVER.WEIGHT_DECAY_GN", "SOLVER.WARM_UP_ITERS", "FAST_RCNN.NUM_STACKED_CONVS",
        "FAST_RCNN.ROI_XFORM_SAMPLING_RATIO", "MRCNN.ROI_XFORM_SAMPLING_RATIO",
        "MRCNN.WEIGHT_LOSS_MASK", "MRCNN.MAX_FG_ROIS_PER_IM", "KRCNN.NUM_STACKED_CONVS",
        "KRCNN.ROI_XFORM_SAMPLING_RATIO", "KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH",
        "KRCNN.INFERENCE_MIN_SIZE", "KRCNN.LOSS_WEIGHT", "DEDUP_BOXES", "PRETRAIN.VAL_BATCHES",
        "PRETRAIN.WARM_UP_ITERS", "PRETRAIN.WEIGHT_DECAY",
    ), _NON_NEGATIVE),
    **dict.fromkeys((
        "TRAIN.FG_FRACTION", "TRAIN.FG_THRESH", "TRAIN.BG_THRESH_HI", "TRAIN.BG_THRESH_LO",
        "TRAIN.BBOX_THRESH", "TRAIN.RPN_POSITIVE_OVERLAP", "TRAIN.RPN_NEGATIVE_OVERLAP",
        "TRAIN.RPN_FG_FRACTION", "TRAIN.RPN_NMS_THRESH", "TRAIN.CROWD_FILTER_THRESH",
        "TEST.NMS", "TEST.RPN_NMS_THRESH", "TEST.SCORE_THRESH", "TEST.BBOX_VOTE.VOTE_TH",
        "RETINANET.POSITIVE_OVERLAP", "RETINANET.NEGATIVE_OVERLAP", "RETINANET.LOSS_ALPHA",
        "RETINANET.INFERENCE_TH", "SOLVER.MOMENTUM", "MRCNN.THRESH_BINARIZE",
        "PRETRAIN.BACKGROUND_FRACTION",
    ), _FRACTION),
    **dict.fromkeys(("TRAIN.RPN_STRADDLE_THRESH", "TRAIN.GT_MIN_AREA"), _OFF_OR_NON_NEGATIVE),
    **dict.fromkeys(("KRCNN.HEATMAP_SIZE", "KRCNN.UP_SCALE", "KRCNN.NUM_KEYPOINTS",
                     "GROUP_NORM.DIM_PER_GP", "GROUP_NORM.NUM_GROUPS"), _UNSET_OR_POSITIVE),
    "RETINANET.PRIOR_PROB": (lambda v: 0 < v < 1, "strictly between 0 and 1"),
}
# (lower key, upper key): the first may not exceed the second
ORDERED_KEYS = (
    ("TRAIN.BG_THRESH_LO", "TRAIN.BG_THRESH_HI"),
    ("TRAIN.RPN_NEGATIVE_OVERLAP", "TRAIN.RPN_POSITIVE_OVERLAP"),
    ("RETINANET.NEGATIVE_OVERLAP", "RETINANET.POSITIVE_OVERLAP"),
    ("FPN.ROI_MIN_LEVEL", "FPN.ROI_MAX_LEVEL"),
    ("FPN.RPN_MIN_LEVEL", "FPN.RPN_MAX_LEVEL"),
)
# Keys that need at least one entry
NON_EMPTY_KEYS = ("TRAIN.SCALES", "MODEL.BBOX_REG_WEIGHTS", "RPN.SIZES", "RPN.ASPECT_RATIOS",
                  "FPN.RPN_ASPECT_RATIOS", "RETINANET.ASPECT_RATIOS")

# Stages after which ResNet backbones can stop gradients (0: train everything).
_RESNET_FREEZE_AT_STAGES = (0, 2, 3, 4, 5)
_VGG16_CONV_BLOCKS = 5


def finalize(cfg):
    """Infer derived keys, validate ``cfg`` and freeze it (in place); returns ``cfg``.

    Inferred (as Detectron's ``assert_and_infer_cfg``): ``RPN.RPN_ON`` is turned on by
    ``MODEL.RPN_ONLY`` or ``MODEL.FASTER_RCNN``; ``TEST.PRECOMPUTED_PROPOSALS`` is turned
    off when the model has an RPN or is a RetinaNet.
    """
    if cfg.MODEL.RPN_ONLY or cfg.MODEL.FASTER_RCNN:
        cfg.RPN.RPN_ON = True
    if cfg.RPN.RPN_ON or cfg.RETINANET.RETINANET_ON:
        cfg.TEST.PRECOMPUTED_PROPOSALS = False
    cfg.PIXEL_MEANS = _flat_pixel_means(cfg.PIXEL_MEANS)
    cfg.PIXEL_STDS = _flat_pixel_means(cfg.PIXEL_STDS, "PIXEL_STDS")
    if min(cfg.PIXEL_STDS) <= 0:
        raise ConfigError(f"PIXEL_STDS must be positive, got {cfg.PIXEL_STDS}")

    flat = cfg.to_flat_dict()
    for key, registry in FUNCTION_NAME_KEYS.items():
        if flat[key]:
            registry.check_known(flat[key])
    for key, choices in CHOICE_KEYS.items():
        if flat[key] not in choices:
            raise ConfigError(
                f"{key}: unknown value '{flat[key]}'; valid values: {', '.join(choices)}"
            )
    _check_ranges(flat)
    _check_retinanet_switch(cfg)
    _check_detectron2_switches(cfg)
    _check_num_classes(cfg)
    _check_fpn_levels(cfg)
    _check_backbone_freezing(cfg)
    _check_lr_schedule(cfg)
    _check_group_norm(cfg)
    _check_proposal_files(cfg)
    _check_test_augmentation(cfg)
    return cfg.freeze()


def _flat_pixel_means(means, key="PIXEL_MEANS"):
    """Three per-channel values; Detectron's (1, 1, 3) nesting ``[[[b, g, r]]]`` is flattened."""
    while isinstance(means, (tuple, list)) and len(means) == 1 and isinstance(means[0], (tuple, list)):
        means = means[0]
    if (
        not isinstance(means, (tuple, list))
        or len(means) != 3
        or not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in means)
    ):
        raise ConfigError(f"{key} must be three numbers, one per channel in PIXEL_ORDER, "
                          f"got {means!r}")
    return tuple(float(m) for m in means)


def _check_ranges(flat):
    """Every value of RANGE_KEYS, NON_EMPTY_KEYS and ORDERED_KEYS in range; one ConfigError
    lists all that are not."""
    problems = []
    for key, (in_range, requirement) in RANGE_KEYS.items():
        value = flat[key]
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(in_range(v) for v in values):
            each = "each entry of " if isinstance(value, (tuple, list)) else ""
            problems.append(f"{each}{key} must be {requirement}, got {value!r}")
    problems += [f"{key} needs at least one value, got {flat[key]!r}"
                 for key in NON_EMPTY_KEYS if not flat[key]]
    problems += [f"{low} ({flat[low]}) must not exceed {high} ({flat[high]})"
                 for low, high in ORDERED_KEYS if flat[low] > flat[high]]
    problems += [f"{key} must be a finite number, got {value!r}" for key, value in flat.items()
                 if not all(_finite(v) for v in (value if isinstance(value, (tuple, list))
                                                 else (value,)))]
    steps = list(flat["SOLVER.STEPS"])
    if steps != sorted(set(steps)):
        problems.append(f"SOLVER.STEPS must be strictly increasing iterations, got {steps!r}")
    if problems:
        raise ConfigError("config value(s) out of range: " + "; ".join(problems))


def _finite(value):
    return not isinstance(value, float) or math.isfinite(value)


def _check_num_classes(cfg):
    # Every model but an RPN-only one classifies: at least one class besides background. (An
    # empty MODEL.TYPE, a config of no model, is reported when a model is built.)
    if cfg.MODEL.TYPE and not cfg.MODEL.RPN_ONLY and cfg.MODEL.NUM_CLASSES < 2:
        raise ConfigError(f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES}; set it to the number "
                          "of object classes plus one for background")


def _check_retinanet_switch(cfg):
    # Detectron's RetinaNet configs set both; either alone is a half-converted config. (An
    # empty MODEL.TYPE is reported when a model is built.)
    if cfg.MODEL.TYPE and (cfg.MODEL.TYPE == "retinanet") != bool(cfg.RETINANET.RETINANET_ON):
        raise ConfigError(
            f"MODEL.TYPE is '{cfg.MODEL.TYPE}' but RETINANET.RETINANET_ON is "
            f"{cfg.RETINANET.RETINANET_ON}; a RetinaNet sets MODEL.TYPE retinanet and "
            "RETINANET.RETINANET_ON True, any other model neither")


def _check_detectron2_switches(cfg):
    """detectron2's conventions that only exist in its continuous box geometry."""
    if not cfg.MODEL.ROUND_ANCHORS and cfg.MODEL.BBOX_LEGACY_PLUS_ONE:
        raise ConfigError("MODEL.ROUND_ANCHORS False (detectron2's exact anchors) needs the "
                          "continuous box geometry: set MODEL.BBOX_LEGACY_PLUS_ONE False too; "
                          "Detectron's +1 geometry always rounds its anchors")
    if cfg.MODEL.RESCALE_PER_AXIS and cfg.MODEL.BBOX_LEGACY_PLUS_ONE:
        raise ConfigError("MODEL.RESCALE_PER_AXIS (detectron2's detector_postprocess) needs the "
                          "continuous box geometry: set MODEL.BBOX_LEGACY_PLUS_ONE False too")
    augmented = (cfg.TEST.BBOX_AUG.ENABLED or cfg.TEST.MASK_AUG.ENABLED
                 or cfg.TEST.KPS_AUG.ENABLED)
    if cfg.MODEL.RESCALE_PER_AXIS and augmented:
        raise ConfigError("TEST.BBOX_AUG / MASK_AUG / KPS_AUG (Detectron's test-time "
                          "augmentation) map results back by Detectron's rule; turn them off "
                          "or set MODEL.RESCALE_PER_AXIS False")


def _check_fpn_levels(cfg):
    # The R-CNN heads pool from the finest RPN levels (Detectron: _narrow_to_fpn_roi_levels).
    if not cfg.FPN.FPN_ON or cfg.RETINANET.RETINANET_ON:
        return
    fpn = cfg.FPN
    if fpn.RPN_MIN_LEVEL != fpn.ROI_MIN_LEVEL:
        raise ConfigError(
            f"FPN.RPN_MIN_LEVEL ({fpn.RPN_MIN_LEVEL}) must equal FPN.ROI_MIN_LEVEL "
            f"({fpn.ROI_MIN_LEVEL}) in an FPN R-CNN model"
        )
    if fpn.RPN_MAX_LEVEL < fpn.ROI_MAX_LEVEL:
        raise ConfigError(
            f"FPN.RPN_MAX_LEVEL ({fpn.RPN_MAX_LEVEL}) must be >= FPN.ROI_MAX_LEVEL "
            f"({fpn.ROI_MAX_LEVEL}) in an FPN R-CNN model"
        )


def _check_backbone_freezing(cfg):
    if "ResNet" in cfg.MODEL.CONV_BODY and cfg.TRAIN.FREEZE_AT not in _RESNET_FREEZE_AT_STAGES:
        raise ConfigError(
            f"TRAIN.FREEZE_AT must be one of {_RESNET_FREEZE_AT_STAGES} for a ResNet backbone, "
            f"got {cfg.TRAIN.FREEZE_AT}"
        )
    if "VGG16" in cfg.MODEL.CONV_BODY and not 0 <= cfg.TRAIN.FREEZE_AT <= _VGG16_CONV_BLOCKS:
        raise ConfigError(
            f"TRAIN.FREEZE_AT must be between 0 and {_VGG16_CONV_BLOCKS} (the conv blocks frozen) "
            f"for a VGG16 backbone, got {cfg.TRAIN.FREEZE_AT}"
        )


def _check_lr_schedule(cfg):
    solver = cfg.SOLVER
    if solver.LR_POLICY not in ("steps_with_decay", "steps_with_lrs"):
        return
    if not solver.STEPS or solver.STEPS[0] != 0:
        raise ConfigError(
            f"SOLVER.STEPS must start at 0 for LR_POLICY '{solver.LR_POLICY}', "
            f"e.g. [0, 60000, 80000]; got {solver.STEPS!r}"
        )
    if solver.LR_POLICY == "steps_with_lrs" and len(solver.LRS) != len(solver.STEPS):
        raise ConfigError(
            f"SOLVER.LRS needs one learning rate per entry of SOLVER.STEPS for 'steps_with_lrs': "
            f"{len(solver.LRS)} rates for {len(solver.STEPS)} steps"
        )


def _check_group_norm(cfg):
    gn = cfg.GROUP_NORM
    if (gn.DIM_PER_GP == -1) == (gn.NUM_GROUPS == -1):
        raise ConfigError(
            "exactly one of GROUP_NORM.DIM_PER_GP and GROUP_NORM.NUM_GROUPS must be -1 "
            f"(got DIM_PER_GP={gn.DIM_PER_GP}, NUM_GROUPS={gn.NUM_GROUPS})"
        )


def _check_test_augmentation(cfg):
    """TEST.BBOX_AUG / MASK_AUG / KPS_AUG settings inference/tta.py can run (Detectron asserted
    the heuristic pairings only once testing had started)."""
    aug = cfg.TEST.BBOX_AUG
    if aug.ENABLED:
        if cfg.MODEL.RPN_ONLY or cfg.RETINANET.RETINANET_ON:
            raise ConfigError("TEST.BBOX_AUG works for R-CNN detectors only, not RPN-only or "
                              "RetinaNet models; set TEST.BBOX_AUG.ENABLED False")
        if (aug.SCORE_HEUR == "UNION") != (aug.COORD_HEUR == "UNION"):
            raise ConfigError(
                f"TEST.BBOX_AUG.SCORE_HEUR is {aug.SCORE_HEUR} and COORD_HEUR is {aug.COORD_HEUR}: "
                "UNION stacks the RoIs of all passes, so both must be UNION or neither")
        if cfg.RPN.RPN_ON and aug.SCORE_HEUR != "UNION":
            raise ConfigError(
                f"TEST.BBOX_AUG.SCORE_HEUR / COORD_HEUR {aug.SCORE_HEUR}: with an RPN every pass "
                "has its own RoIs, which only UNION combines (ID and AVG need precomputed proposals)")
        if aug.SCALE_SIZE_DEP and aug.SCORE_HEUR != "UNION":
            raise ConfigError("TEST.BBOX_AUG.SCALE_SIZE_DEP drops boxes per pass, which needs "
                              "SCORE_HEUR and COORD_HEUR UNION")
    for name in ("BBOX_AUG", "MASK_AUG", "KPS_AUG"):
        node = getattr(cfg.TEST, name)
        if not node.ENABLED:
            continue
        if any(s <= 0 for s in node.SCALES) or node.MAX_SIZE <= 0:
            raise ConfigError(f"TEST.{name}.SCALES {tuple(node.SCALES)} and MAX_SIZE "
                              f"{node.MAX_SIZE} must be positive pixel sizes")
        if any(r <= 0 for r in node.ASPECT_RATIOS):
            raise ConfigError(f"TEST.{name}.ASPECT_RATIOS {tuple(node.ASPECT_RATIOS)} must be "
                              "positive width factors")


def _check_proposal_files(cfg):
    train, test = cfg.TRAIN, cfg.TEST
    if train.PROPOSAL_FILES and len(train.PROPOSAL_FILES) != len(train.DATASETS):
        raise ConfigError(
            f"TRAIN.PROPOSAL_FILES needs one file per entry of TRAIN.DATASETS: "
            f"{len(train.PROPOSAL_FILES)} files for {len(train.DATASETS)} datasets"
        )
    if test.PRECOMPUTED_PROPOSALS and test.DATASETS and len(test.PROPOSAL_FILES) != len(test.DATASETS):
        raise ConfigError(
            f"this model reads precomputed proposals at test time (no RPN: MODEL.FASTER_RCNN and "
            f"MODEL.RPN_ONLY are off), so TEST.PROPOSAL_FILES needs one file per entry of "
            f"TEST.DATASETS: {len(test.PROPOSAL_FILES)} files for {len(test.DATASETS)} datasets"
        )
