"""Config keys that Detectron renamed or retired, so that old YAML files fail or pass clearly.

The tables are Detectron's ``_RENAMED_KEYS`` and ``_DEPRECATED_KEYS`` (detectron/core/config.py):

- a renamed key is an error whose message names the new key (and, where the value's type
  changed too, how to convert it);
- a deprecated key is dropped with a ``DeprecatedConfigKeyWarning``.
"""
import warnings

from detectron_lib.errors import ConfigError


class DeprecatedConfigKeyWarning(UserWarning):
    """A config sets a key that Detectron retired; its value is ignored."""


# Full keys Detectron no longer reads; old configs that set them still load.
DEPRECATED_KEYS = frozenset({
    "FINAL_MSG",
    "MODEL.DILATION",
    "ROOT_GPU_ID",
    "RPN.ON",
    "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED",
    "TRAIN.DROPOUT",
    "USE_GPU_NMS",
    "TEST.NUM_TEST_IMAGES",
})

# Old full key -> new full key, or (new full key, how to convert the value).
RENAMED_KEYS = {
    "EXAMPLE.RENAMED.KEY": "EXAMPLE.KEY",  # Detectron's own placeholder entry
    "MODEL.PS_GRID_SIZE": "RFCN.PS_GRID_SIZE",
    "MODEL.ROI_HEAD": "FAST_RCNN.ROI_BOX_HEAD",
    "MRCNN.MASK_HEAD_NAME": "MRCNN.ROI_MASK_HEAD",
    "TRAIN.DATASET": (
        "TRAIN.DATASETS",
        "Also convert to a tuple, e.g., 'coco_2014_train' -> ('coco_2014_train',) or "
        "'coco_2014_train:coco_2014_valminusminival' -> "
        "('coco_2014_train', 'coco_2014_valminusminival')",
    ),
    "TRAIN.PROPOSAL_FILE": (
        "TRAIN.PROPOSAL_FILES",
        "Also convert to a tuple, e.g., 'path/to/file' -> ('path/to/file',) or "
        "'path/to/file1:path/to/file2' -> ('path/to/file1', 'path/to/file2')",
    ),
    "TEST.SCALES": (
        "TEST.SCALE",
        "Also convert from a tuple, e.g. (600, ), to an integer, e.g. 600.",
    ),
    "TEST.DATASET": (
        "TEST.DATASETS",
        "Also convert from a string, e.g 'coco_2014_minival', to a tuple, e.g. "
        "('coco_2014_minival', ).",
    ),
    "TEST.PROPOSAL_FILE": (
        "TEST.PROPOSAL_FILES",
        "Also convert from a string, e.g. '/path/to/props.pkl', to a tuple, e.g. "
        "('/path/to/props.pkl', ).",
    ),
}


def is_deprecated(full_key, source=None):
    """True (after warning that the value is ignored) if ``full_key`` is a retired key."""
    if full_key not in DEPRECATED_KEYS:
        return False
    where = f" in {source}" if source else ""
    warnings.warn(
        f"deprecated config key '{full_key}'{where} is ignored; remove it from the config",
        DeprecatedConfigKeyWarning,
        stacklevel=3,
    )
    return True


def raise_if_renamed(full_key, source=None):
    """Raise a ConfigError naming the new key if ``full_key`` was renamed."""
    if full_key not in RENAMED_KEYS:
        return
    new_key = RENAMED_KEYS[full_key]
    note = ""
    if isinstance(new_key, tuple):
        new_key, hint = new_key
        note = f" Note: {hint}"
    where = f" (in {source})" if source else ""
    raise ConfigError(
        f"config key '{full_key}'{where} was renamed to '{new_key}'; please update your config.{note}"
    )
