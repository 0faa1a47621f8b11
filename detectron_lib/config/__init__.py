"""Detectron's config contract: defaults, YAML files, ``KEY VALUE`` overrides, finalize.

    cfg = load_config("configs/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml",
                      ["SOLVER.BASE_LR", "0.01", "TRAIN.SCALES", "(400,)"])
    cfg.TRAIN.SCALES            # (400,)
    cfg.SOLVER.BASE_LR = 1.0    # ConfigError: the finalized config is frozen
"""
from detectron_lib.config.defaults import get_default_cfg
from detectron_lib.config.merge import merge_from_file, merge_from_list
from detectron_lib.config.node import CfgNode
from detectron_lib.config.validation import finalize
from detectron_lib.errors import ConfigError

__all__ = [
    "CfgNode",
    "ConfigError",
    "finalize",
    "get_default_cfg",
    "load_config",
    "merge_from_file",
    "merge_from_list",
]


def load_config(cfg_file=None, overrides=()):
    """Defaults <- YAML file ``cfg_file`` (if given) <- ``overrides``, finalized and frozen.

    overrides: flat ``["KEY", "VALUE", ...]`` as typed on a command line.
    """
    cfg = get_default_cfg()
    if cfg_file is not None:
        merge_from_file(cfg, cfg_file)
    merge_from_list(cfg, overrides)
    return finalize(cfg)
