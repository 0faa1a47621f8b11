"""``finalize``: infer the derived keys, check the config as a whole, then freeze it.

This is Detectron's ``assert_and_infer_cfg`` plus, moved to load time, the consistency checks
Detectron only made (as bare asserts or KeyErrors) once training or testing was under way:
a mistake fails before any data is read, with a message naming the key.
"""
from detectron_lib.config.names import FUNCTION_NAME_KEYS
from detectron_lib.errors import ConfigError

# String options with a fixed set of values (the values Detectron's code handled).
CHOICE_KEYS = {
    "SOLVER.WARM_UP_METHOD": ("constant", "linear"),
    "FAST_RCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "PIXEL_ORDER": ("BGR", "RGB"),
    "MRCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "KRCNN.ROI_XFORM_METHOD": ("RoIPoolF", "RoIAlign"),
    "KRCNN.KEYPOINT_CONFIDENCE": ("bbox", "logit", "prob"),
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
}

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
    _check_retinanet_switch(cfg)
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


def _check_retinanet_switch(cfg):
    # Detectron's RetinaNet configs set both; either alone is a half-converted config. (An
    # empty MODEL.TYPE is reported when a model is built.)
    if cfg.MODEL.TYPE and (cfg.MODEL.TYPE == "retinanet") != bool(cfg.RETINANET.RETINANET_ON):
        raise ConfigError(
            f"MODEL.TYPE is '{cfg.MODEL.TYPE}' but RETINANET.RETINANET_ON is "
            f"{cfg.RETINANET.RETINANET_ON}; a RetinaNet sets MODEL.TYPE retinanet and "
            "RETINANET.RETINANET_ON True, any other model neither")


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
