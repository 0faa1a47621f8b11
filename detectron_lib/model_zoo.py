"""The model zoo from Python: a zoo baseline's config, weights and model by name.

    from detectron_lib import model_zoo
    from detectron_lib.inference.predictor import Predictor

    model = model_zoo.get("e2e_faster_rcnn_R-18-FPN_1x")    # trained, eval mode, on the CPU
    (detections,) = model([image])                          # image: (3, H, W) uint8 BGR
    predictor = Predictor(model_zoo.get_config("e2e_faster_rcnn_R-18-FPN_1x"),
                          model_zoo.get_weights("e2e_faster_rcnn_R-18-FPN_1x"))
    detections = predictor(image_bgr)                       # image_bgr: (H, W, 3) uint8

Names are the baselines of a zoo manifest (default: the shapes zoo, the one the CLI and the
Snakefile default to); the weights are the ``model_final.pth`` the model-zoo DAG trained for
the baseline. One not trained yet raises CheckpointError giving the snakemake command that
trains it.

Paths: the DAG runs in the repository root, and the manifest's paths (configs, results, data)
are relative to it. Here they are taken relative to ``root``: by default the checkout this
package is imported from (an editable install), whatever the working directory; a relative
``manifest`` too. The configs returned hold the paths the manifest sets (OUTPUT_DIR,
TRAIN.WEIGHTS, proposal files, the dataset catalog) as absolute paths; the configs' other
relative paths (e.g. the default data root) stay relative to the working directory.
"""
import dataclasses
import os
from pathlib import Path

from detectron_lib.engine.checkpoint import CheckpointError
from detectron_lib.engine.distributed import resolve_device
from detectron_lib.inference.engine import load_model_for_inference
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.zoo.manifest import DEFAULT_MANIFEST, baseline_command, load_manifest
from detectron_lib.zoo.steps import baseline_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_zoo(manifest, root):
    """(the manifest at ``manifest`` with its paths absolute under ``root``, that manifest's
    path as seen from ``root``, for the snakemake command that trains a baseline)."""
    root = Path(os.path.abspath(root))
    path = Path(os.path.abspath(root / manifest))
    zoo = load_manifest(path)

    def at_root(value):
        return str(root / value) if value else value

    zoo = dataclasses.replace(
        zoo, results_dir=at_root(zoo.results_dir), data_root=at_root(zoo.data_root),
        dataset_catalog=at_root(zoo.dataset_catalog), _datasets_cache={},
        baselines={name: dataclasses.replace(baseline, config=at_root(baseline.config))
                   for name, baseline in zoo.baselines.items()})
    return zoo, path.relative_to(root) if path.is_relative_to(root) else path


def _final_weights(zoo, configfile, name, root):
    """Path of baseline ``name``'s final weights; CheckpointError with the command that
    trains it when they are not there."""
    zoo.baseline(name)   # an unknown name: ConfigError listing the manifest's baselines
    weights = zoo.layout.weights(name)
    if not os.path.isfile(weights):
        raise CheckpointError(
            f"baseline '{name}' of zoo '{zoo.name}' has not been trained yet: no weights at "
            f"{weights}. Train it with the model-zoo DAG, in {os.path.abspath(root)}: "
            f"{baseline_command(name, configfile)}")
    return weights


def get_config(name, manifest=DEFAULT_MANIFEST, root=REPO_ROOT):
    """The finalized config of zoo baseline ``name``: its config file with the overrides the
    DAG gives every stage of it (manifest.config_overrides), datasets of its catalog
    registered. An unknown name raises ConfigError listing the manifest's baselines."""
    zoo, _ = _load_zoo(manifest, root)
    return baseline_config(zoo, name)


def get_weights(name, manifest=DEFAULT_MANIFEST, root=REPO_ROOT):
    """Path of the final weights the DAG trained for baseline ``name`` (for ``Predictor`` or
    ``detectron test --weights``); CheckpointError with the snakemake command that trains
    it when there are none yet."""
    zoo, configfile = _load_zoo(manifest, root)
    return _final_weights(zoo, configfile, name, root)


def get(name, trained=True, device="cpu", manifest=DEFAULT_MANIFEST, root=REPO_ROOT):
    """Zoo baseline ``name`` as a detector in eval mode on ``device`` (a torch device or
    'auto'), which takes a list of (3, H, W) uint8 BGR image tensors and returns their
    detections (a baseline on precomputed proposals has no RPN: it needs their proposals
    too).

    trained: load the DAG's final weights as ``detectron test`` does (safe loading; frozen BN
    folded into the convolutions); CheckpointError with the snakemake command that trains
    the baseline when there are none yet. False: the model as built from its config, with
    its initial weights (TRAIN.WEIGHTS is not loaded), e.g. to train it yourself.
    """
    zoo, configfile = _load_zoo(manifest, root)
    cfg = baseline_config(zoo, name)
    device = resolve_device(device)
    if not trained:
        return build_model(cfg).to(device).eval()
    return load_model_for_inference(cfg, _final_weights(zoo, configfile, name, root), device)
