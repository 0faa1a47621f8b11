"""Dataset inference and evaluation: what ``detectron test`` runs.

Every rank runs the model over its shard of TEST.DATASETS; rank 0 gathers the detections,
writes them in COCO result format (``<dataset>_bbox_results.json``, and ``_segm_`` /
``_keypoints_`` files for models with those heads, entry by entry in the order of the boxes,
like Detectron's detections files) and evaluates them with pycocotools into ``metrics.json``.
"""
import logging
import statistics
import time
from pathlib import Path

import torch

from detectron_lib.data.catalog import get_dataset, materialize_dataset, register_datasets_from_cfg
from detectron_lib.data.loader import build_test_loader
from detectron_lib.data.proposals import save_proposals
from detectron_lib.engine.checkpoint_formats import DETECTRON, DETECTRON2, TORCHVISION, load_weights
from detectron_lib.engine.distributed import all_gather_objects, init_distributed, resolve_device
from detectron_lib.evaluation.coco import (
    detections_to_coco_results,
    evaluate_coco,
    evaluate_proposals,
    keypoints_to_coco_results,
    masks_to_coco_results,
)
from detectron_lib.errors import ConfigError
from detectron_lib.evaluation.metrics import read_metrics, write_metrics
from detectron_lib.inference.tta import DetectorWithTTA, augmentation_enabled
from detectron_lib.modeling.backbone.norms import fold_frozen_batchnorm_
from detectron_lib.modeling.backbone.precision import reuse_weight_casts
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.utils.io import write_json_atomic
from detectron_lib.utils.progress import Progress

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def load_model_for_inference(cfg, weights, device):
    """The config's model in eval mode with ``weights`` loaded: a path or URL of any format
    engine.checkpoint_formats reads (ours, Detectron, detectron2, torchvision); empty means
    TEST.WEIGHTS. Frozen BN layers are folded into the convolutions before them."""
    weights = weights or cfg.TEST.WEIGHTS
    if not weights:
        raise ConfigError("no weights to run: give --weights or set TEST.WEIGHTS")
    model = build_model(cfg)
    report = load_weights(model, weights, for_training=False, cache_dir=cfg.DOWNLOAD_CACHE)
    warn_on_box_convention_mismatch(cfg, report.format)
    fold_frozen_batchnorm_(model)
    return model.to(device).eval()


# MODEL.BBOX_LEGACY_PLUS_ONE of the box convention each family of checkpoints was trained in.
_TRAINED_LEGACY_PLUS_ONE = {DETECTRON: True, DETECTRON2: False, TORCHVISION: False}


def warn_on_box_convention_mismatch(cfg, weights_format):
    """Warn once when MODEL.BBOX_LEGACY_PLUS_ONE differs from the convention the weights were
    trained in (Detectron: x2 - x1 + 1; detectron2 and torchvision: x2 - x1): the model then
    runs, but its boxes are off by a pixel. Returns whether it warned."""
    trained_with = _TRAINED_LEGACY_PLUS_ONE.get(weights_format)
    if trained_with is None or trained_with == cfg.MODEL.BBOX_LEGACY_PLUS_ONE:
        return False
    logger.warning("%s weights were trained with MODEL.BBOX_LEGACY_PLUS_ONE %s but the config "
                   "sets %s: set it to %s (configs/torchvision/ shows every switch of "
                   "torchvision's conventions)", weights_format, trained_with,
                   cfg.MODEL.BBOX_LEGACY_PLUS_ONE, trained_with)
    return True


def model_and_loader_for_test(cfg, model, dataset_name, rank=0, world_size=1, proposal_file=None):
    """(the detector to run, its test loader): with TEST.BBOX_AUG / MASK_AUG / KPS_AUG the
    model wrapped in DetectorWithTTA and a loader of original-size images."""
    augment = augmentation_enabled(cfg)
    loader = build_test_loader(cfg, dataset_name, rank, world_size, proposal_file=proposal_file,
                               resize=not augment)
    return (DetectorWithTTA(model, cfg) if augment else model), loader


@torch.no_grad()
def run_inference(model, loader, device, log_period=50):
    """Per image: (image_id, Instances in original-image pixels on the CPU, with ``masks``
    (N, H, W) bool when the model predicts masks). Returns (results, seconds per image).
    Logs a progress line (images done of this rank's, ETA) about every ``log_period`` images."""
    results = []
    seconds = 0.0
    progress = Progress(len(loader.sampler), device_type=device.type)
    next_log = log_period
    with reuse_weight_casts(device.type):
        for batch in loader:
            start = time.perf_counter()
            outputs = model(**batch.model_inputs(device))
            results.extend((image_id, output.to("cpu"))
                           for image_id, output in zip(batch.image_ids, outputs))
            seconds += time.perf_counter() - start
            progress.step(len(outputs))
            if progress.done >= next_log or progress.done == progress.total:
                logger.info("%s", progress.line("image", time=seconds / len(results)))
                next_log = progress.done + log_period
    return results, seconds / max(len(results), 1)


def coco_results(results, label_to_json_id, keypoint_confidence="bbox",
                 keypoint_format="detectron"):
    """COCO result lists by type: 'bbox' (boxes written as the regions they cover in their
    convention), 'segm' when masks are present, 'keypoints' when keypoints are, scored
    as KRCNN.KEYPOINT_CONFIDENCE ('bbox', 'logit' or 'prob') says and written as
    KRCNN.RESULTS_FORMAT (``keypoint_format``) says."""
    by_type = {"bbox": []}
    for image_id, inst in results:
        by_type["bbox"].extend(detections_to_coco_results(
            image_id, inst.boxes.to(torch.float64).regions(), inst.scores, inst.classes,
            label_to_json_id))
        if inst.has("masks"):
            by_type.setdefault("segm", []).extend(masks_to_coco_results(
                image_id, inst.masks, inst.scores, inst.classes, label_to_json_id))
        if inst.has("keypoints"):
            keypoints = inst.keypoints  # (x, y, logit)
            if keypoint_confidence == "prob":
                keypoints = torch.cat([keypoints[:, :, :2], inst.keypoint_probs[:, :, None]], dim=2)
            by_type.setdefault("keypoints", []).extend(keypoints_to_coco_results(
                image_id, keypoints, inst.scores, inst.classes, label_to_json_id,
                keypoint_confidence, keypoint_format))
    return by_type


def test(cfg, weights, output_dir=None):
    """Evaluate ``weights`` on every TEST.DATASETS entry; returns the metrics of the first.

    Writes ``metrics.json`` (flat keys such as bbox/AP, segm/AP, proposals/AR@1000 plus
    timings) into ``output_dir`` (default OUTPUT_DIR), and detections per dataset.
    """
    output_dir = Path(output_dir or cfg.OUTPUT_DIR)
    device = resolve_device(cfg.DEVICE)
    dist_info = init_distributed(device.type)
    register_datasets_from_cfg(cfg)
    model = load_model_for_inference(cfg, weights, device)
    all_metrics = {}
    for index, dataset_name in enumerate(cfg.TEST.DATASETS):
        annotation_file = materialize_dataset(dataset_name, cfg.DATA_ROOT or None)
        proposal_file = cfg.TEST.PROPOSAL_FILES[index] if cfg.TEST.PROPOSAL_FILES else None
        detector, loader = model_and_loader_for_test(cfg, model, dataset_name, dist_info.rank,
                                                     dist_info.world_size, proposal_file)
        results, s_per_im = run_inference(detector, loader, device)
        gathered = all_gather_objects((results, s_per_im))
        if not dist_info.is_main:
            continue
        results = [r for part, _ in gathered for r in part]
        metrics = {"inference_time_s_per_im": statistics.mean(t for _, t in gathered)}
        if cfg.MODEL.RPN_ONLY:
            metrics.update(evaluate_proposals(str(annotation_file),
                                              _proposal_arrays(results)))
        else:
            label_map = loader.categories.label_to_json_id(cfg.MODEL.LABELS_ARE_CATEGORY_IDS)
            if cfg.MODEL.LABELS_ARE_CATEGORY_IDS:
                results = _drop_unknown_labels(results, label_map)
            by_type = coco_results(results, label_map, cfg.KRCNN.KEYPOINT_CONFIDENCE,
                                   cfg.KRCNN.RESULTS_FORMAT)
            for kind, entries in by_type.items():
                write_json_atomic(output_dir / f"{dataset_name}_{kind}_results.json", entries)
            metrics.update(evaluate_coco(str(annotation_file), by_type,
                                         kpt_oks_sigmas=get_dataset(dataset_name).keypoint_oks_sigmas))
        all_metrics[dataset_name] = _write_dataset_metrics(output_dir, index, dataset_name, metrics)
    return all_metrics.get(cfg.TEST.DATASETS[0], {})


def _drop_unknown_labels(results, label_map):
    """Detections whose label is a category of the dataset: a model labelled by category id
    (torchvision's COCO models) also scores the ids COCO leaves unused."""
    known = torch.tensor(sorted(label_map))
    return [(image_id, inst[torch.isin(inst.classes, known)]) for image_id, inst in results]


def _write_dataset_metrics(output_dir, index, dataset_name, metrics):
    """Write one test dataset's metrics: metrics.json for the first TEST.DATASETS entry,
    metrics_<dataset>.json for the others."""
    name = METRICS_FILE if index == 0 else f"metrics_{dataset_name}.json"
    write_metrics(Path(output_dir) / name, metrics)
    logger.info("%s: %s", dataset_name, {k: round(v, 4) for k, v in metrics.items() if "/AP" in k[:9] or "AR@" in k})
    return metrics


def evaluate_from_proposal_dumps(cfg, dump_metrics_files, output_dir=None):
    """An RPN-only model's evaluation taken from its proposal dumps of TEST.DATASETS (one
    metrics file of ``dump_proposals`` per dataset, in order), which ran the same inference
    and recall: written and returned like ``test``'s, without running the model again."""
    if not cfg.MODEL.RPN_ONLY:
        raise ConfigError("only an RPN-only model (MODEL.RPN_ONLY: True) is evaluated from its proposal dumps")
    if len(dump_metrics_files) != len(cfg.TEST.DATASETS):
        raise ConfigError(f"{len(dump_metrics_files)} proposal metrics files for "
                          f"{len(cfg.TEST.DATASETS)} TEST.DATASETS {tuple(cfg.TEST.DATASETS)}: "
                          "give one per dataset, in order")
    output_dir = Path(output_dir or cfg.OUTPUT_DIR)
    all_metrics = {}
    for index, (dataset_name, path) in enumerate(zip(cfg.TEST.DATASETS, dump_metrics_files)):
        metrics = read_metrics(path)
        if "proposals/AR@100" not in metrics or "inference_time_s_per_im" not in metrics:
            raise ConfigError(f"{path}: no recall or inference time for {dataset_name}; dump "
                              f"the proposals again with {dataset_name} in TEST.DATASETS")
        all_metrics[dataset_name] = _write_dataset_metrics(output_dir, index, dataset_name, metrics)
    return all_metrics[cfg.TEST.DATASETS[0]]


def _proposal_arrays(results):
    """{image_id: (N, 5) [x1, y1, x2, y2, score]} in rank order, from RPN-only results, boxes
    as the regions they cover in their convention."""
    return {image_id: torch.cat([inst.boxes.to(torch.float64).regions(),
                                 inst.scores[:, None].double()], dim=1).numpy()
            for image_id, inst in results}


def dump_proposals(cfg, weights, dataset_name, output_path, recall=True):
    """Run an RPN_ONLY model over a dataset and write Detectron's proposal file.

    The file holds, per image, up to TEST.RPN_POST_NMS_TOP_N boxes in original-image pixels,
    their objectness scores and the image ids (detectron_lib.data.proposals layout). Returns
    the proposal counts (proposals/images, proposals/per_image), the inference time
    (inference_time_s_per_im) and, with ``recall``, the
    recall metrics (proposals/AR@100, AR@1000) on that dataset; recall over a training set's
    millions of proposals takes pycocotools minutes, which a DAG may not want to spend.
    """
    if not cfg.MODEL.RPN_ONLY:
        raise ConfigError("dump_proposals needs an RPN-only model config (MODEL.RPN_ONLY: True)")
    device = resolve_device(cfg.DEVICE)
    dist_info = init_distributed(device.type)
    register_datasets_from_cfg(cfg)
    model = load_model_for_inference(cfg, weights, device)
    annotation_file = materialize_dataset(dataset_name, cfg.DATA_ROOT or None)
    loader = build_test_loader(cfg, dataset_name, dist_info.rank, dist_info.world_size)
    gathered = all_gather_objects(run_inference(model, loader, device))
    if not dist_info.is_main:
        return {}
    results = sorted((r for part, _ in gathered for r in part), key=lambda r: r[0])
    save_proposals(output_path, [inst.boxes.tensor.numpy() for _, inst in results],
                   [inst.scores.numpy() for _, inst in results], [image_id for image_id, _ in results])
    metrics = {"proposals/images": len(results),
               "proposals/per_image": sum(len(inst) for _, inst in results) / max(len(results), 1),
               "inference_time_s_per_im": statistics.mean(t for _, t in gathered)}
    if recall:
        metrics.update(evaluate_proposals(str(annotation_file),
                                          _proposal_arrays(results)))
    return metrics
