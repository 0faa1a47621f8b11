"""Config keys that Detectron renamed or retired, so that old YAML files fail or pass clearly.

The tables are Detectron's ``_RENAMED_KEYS`` and ``_DEPRECATED_KEYS`` (detectron/core/config.py):

- a renamed key is an error whose message names the new key (and, where the value's type
  changed too, how to convert it);
- a deprecated key is dropped with a ``DeprecatedConfigKeyWarning``.

A third table is this project's: ``INERT_KEYS``, keys of Detectron's tree that nothing here
reads (Caffe2 switches, features not carried over). They stay in the defaults so that every
Detectron config loads; setting one to a value other than its default gives one
``InertConfigKeyWarning`` that names the key and says why it has no effect.
tests/test_config_surface.py checks that every default key is read by the code or listed here,
and that no listed key is read.
"""
import warnings

from detectron_lib.config.defaults import get_default_cfg
from detectron_lib.errors import ConfigError


class DeprecatedConfigKeyWarning(UserWarning):
    """A config sets a key that Detectron retired; its value is ignored."""


class InertConfigKeyWarning(UserWarning):
    """A config sets a key that this project accepts but does not read to a non-default value."""


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

# Full key -> why it has no effect here. Accepted, documented as inert in defaults.py, and
# warned about when set to anything but its default (see warn_if_inert).
INERT_KEYS = {
    # Caffe2 mechanics, which PyTorch has no counterpart of or decides by itself
    "MODEL.EXECUTION_TYPE": "it chose Caffe2's net executor; PyTorch runs the model eagerly",
    "MEMONGER": "it enabled Caffe2's memonger blob sharing; PyTorch's autograd frees memory "
                "itself",
    "MEMONGER_SHARE_ACTIVATIONS": "it extended Caffe2's memonger to forward activations; "
                                  "PyTorch's autograd frees memory itself",
    "USE_NCCL": "it chose Caffe2's all-reduce (NCCL or muji); data-parallel training uses "
                "torch.distributed with NCCL on CUDA and gloo on the CPU",
    "TRAIN.GENERATE_PROPOSALS_ON_GPU": "it chose Caffe2's CPU or CUDA proposal op; RPN "
                                       "proposals are computed on the device the model runs on",
    "TEST.GENERATE_PROPOSALS_ON_GPU": "it chose Caffe2's CPU or CUDA proposal op; RPN "
                                      "proposals are computed on the device the model runs on",
    "DATA_LOADER.MINIBATCH_QUEUE_SIZE": "it sized Caffe2's shared minibatch queue; batches "
                                        "come from a torch DataLoader with "
                                        "DATA_LOADER.NUM_THREADS workers and its own prefetching",
    "DATA_LOADER.BLOBS_QUEUE_CAPACITY": "it sized Caffe2's per-GPU blobs queue; batches come "
                                        "from a torch DataLoader with DATA_LOADER.NUM_THREADS "
                                        "workers and its own prefetching",
    "SOLVER.SCALE_MOMENTUM": "Caffe2's SGD kept the learning rate inside the momentum buffer, "
                             "which Detectron rescaled when the rate changed; torch.optim.SGD "
                             "keeps the rate outside the buffer, which has that effect at "
                             "every change, so the correction is always on",
    "SOLVER.SCALE_MOMENTUM_THRESHOLD": "it limited Detectron's momentum correction to large "
                                       "rate changes; torch.optim.SGD's update needs no "
                                       "correction (see SOLVER.SCALE_MOMENTUM)",
    "SOLVER.LOG_LR_CHANGE_THRESHOLD": "it chose which learning-rate changes Detectron logged; "
                                      "train_log.jsonl records the rate of every logged "
                                      "iteration",
    # Detectron features this project does not carry over
    "TRAIN.FREEZE_CONV_BODY": "freezing the whole conv body (FPN included) is not implemented; "
                              "TRAIN.FREEZE_AT freezes the ResNet / VGG16 stages up to a given "
                              "one",
    "TRAIN.COPY_WEIGHTS": "copying TRAIN.WEIGHTS into the output directory is not implemented "
                          "(provenance.json records the SHA-256 of TRAIN.WEIGHTS)",
    "TEST.COMPETITION_MODE": "False made Detectron salt the detection file's name and delete "
                             "it after evaluation; detectron test always keeps "
                             "<dataset>_{bbox,segm,keypoints}_results.json under fixed names "
                             "(Detectron's default, True)",
    "TEST.FORCE_JSON_DATASET_EVAL": "detectron test evaluates every dataset, PASCAL VOC "
                                    "included, with the COCO API already (what True asked "
                                    "for); VOC's own AP is evaluation.evaluate_voc",
    "KRCNN.DILATION": "only Detectron's ResNet conv5 keypoint head "
                      "(add_ResNet_roi_conv5_head_for_keypoints) read it, and that head is not "
                      "implemented",
    "VIS": "detectron test draws no detections; detectron infer draws them (its --thresh "
           "option is the score threshold)",
    "VIS_TH": "detectron test draws no detections; detectron infer draws them (its --thresh "
              "option is the score threshold)",
    "EXPECTED_RESULTS": "checking test metrics against expected values is not implemented; "
                        "compare metrics.json (or MODEL_ZOO.md) yourself",
    "EXPECTED_RESULTS_RTOL": "checking test metrics against EXPECTED_RESULTS is not implemented",
    "EXPECTED_RESULTS_ATOL": "checking test metrics against EXPECTED_RESULTS is not implemented",
    "EXPECTED_RESULTS_SIGMA_TOL": "checking test metrics against EXPECTED_RESULTS is not "
                                  "implemented",
    "EXPECTED_RESULTS_EMAIL": "checking test metrics against EXPECTED_RESULTS (and mailing "
                              "failures) is not implemented",
    "MATLAB": "it ran the official VOC devkit in MATLAB; VOC's AP here is the Python port "
              "evaluation.evaluate_voc",
    "CLUSTER.ON_CLUSTER": "only Detectron's Cityscapes evaluator read it (for Facebook's "
                          "cluster paths); there is no Cityscapes evaluator here, and cluster "
                          "runs go through the workflow's SLURM profile",
    "ROOT_DIR": "Detectron found its MATLAB VOC wrapper under it; paths here come from "
                "DATA_ROOT, OUTPUT_DIR and DOWNLOAD_CACHE",
    "EPS": "Detectron defined it but none of its code read it",
}

_DEFAULTS = get_default_cfg().to_flat_dict()


def warn_if_inert(full_key, value, source=None):
    """Warn (``InertConfigKeyWarning``) if ``full_key`` is an inert key set to ``value`` other
    than its default; the message names the key and why it has no effect."""
    if full_key not in INERT_KEYS or value == _DEFAULTS[full_key]:
        return
    where = f" in {source}" if source else ""
    warnings.warn(
        f"config key '{full_key}'{where} is set to {value!r} but has no effect in this "
        f"project: {INERT_KEYS[full_key]}",
        InertConfigKeyWarning,
        stacklevel=3,
    )


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
