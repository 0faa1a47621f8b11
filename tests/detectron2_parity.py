"""detectron2's own outputs against ours, for each configs/detectron2/ architecture.

Needs detectron2 importable (it is not on PyPI: build it from its source, e.g.
``pip install --no-build-isolation -e path/to/detectron2`` in an environment that has this
project's torch). Not part of the test suite, which cannot install it; the figures it printed
are in configs/detectron2/README.md.

For each architecture it trains detectron2's model on the shapes dataset for a few iterations
(from random weights, CPU: a short schedule is enough, parity does not need a good model),
saves it as detectron2 saves checkpoints (BatchNorm frozen, as its model zoo ships them),
evaluates it with detectron2's COCOEvaluator, then runs plain ``detectron test`` with the
configs/detectron2/ config on that checkpoint and compares: the AP of each task, and per
detection of detectron2's, whether ours has one of the same class within ``--tolerance``
pixels on every coordinate (its score difference, mask IoU, keypoint differences).

    python tests/detectron2_parity.py --work /tmp/d2parity [--archs retinanet_gn ...]
"""
import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name: (detectron2 config, ours, shapes train set, evaluated set, iterations, base LR)
ARCHITECTURES = {
    "retinanet_gn": ("COCO-Detection/retinanet_R_50_FPN_1x.yaml",
                     "retinanet_R_18_GN_FPN_shapes.yaml", "shapes_train", "shapes_val", 600, 0.01),
    "retinanet": ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "retinanet_R_50_FPN_1x.yaml",
                  "shapes_train", "shapes_val", 300, 0.005),
    "mask_rcnn": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                  "mask_rcnn_R_50_FPN_1x.yaml", "shapes_train", "shapes_val", 60, 0.002),
    "mask_rcnn_noaug": ("Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml",
                        "mask_rcnn_R_50_FPN_noaug_1x.yaml", "shapes_train", "shapes_val", 60,
                        0.002),
    "keypoint_rcnn": ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
                      "keypoint_rcnn_R_50_FPN_1x.yaml", "shapes_kp_train", "shapes_kp_val", 60,
                      0.002),
    "faster_rcnn_c4": ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
                       "faster_rcnn_R_50_C4_1x.yaml", "shapes_train", "shapes_val", 60, 0.002),
}
SCALE, MAX_SIZE = 256, 384


def evaluated_subset(data_root, dataset, num_images):
    """An annotation file of the dataset's first ``num_images`` images (evaluation time)."""
    source = data_root / "shapes" / dataset / "annotations.json"
    target = source.with_name(f"annotations_first{num_images}.json")
    if not target.exists():
        data = json.loads(source.read_text())
        data["images"] = data["images"][:num_images]
        ids = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        target.write_text(json.dumps(data))
    return target


def detectron2_config(name, work, data_root, train_set, eval_name):
    from detectron2.config import get_cfg
    from detectron2.model_zoo import get_config_file

    from detectron_lib.data import shapes

    d2_file, _, _, _, iterations, base_lr = ARCHITECTURES[name]
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(d2_file))
    keypoints = name.startswith("keypoint")
    num_classes = 1 if keypoints else 6
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "BN"  # trained, then frozen as detectron2's zoo ships it
    if keypoints:
        cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 5
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
        cfg.TEST.KEYPOINT_OKS_SIGMAS = list(shapes.STAR_KEYPOINT_OKS_SIGMAS)  # as ours
    if name == "retinanet_gn":  # the shapes zoo's RetinaNet network in detectron2's keys
        cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = cfg.MODEL.RETINANET.NORM = "GN"
        cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.INPUT.MASK_FORMAT = "bitmask"  # shapes stores occluded masks as RLE
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (SCALE,), MAX_SIZE
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = SCALE, MAX_SIZE
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_set,), (eval_name,)
    cfg.SOLVER.IMS_PER_BATCH = 4 if name == "retinanet_gn" else 2
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = base_lr, iterations
    cfg.SOLVER.STEPS = (int(iterations * 0.8),)
    cfg.SOLVER.WARMUP_ITERS = min(100, iterations // 4)
    cfg.SOLVER.CHECKPOINT_PERIOD = 10 ** 9
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 128
    cfg.DATALOADER.NUM_WORKERS = 1
    cfg.OUTPUT_DIR = str(work / name)
    return cfg


def run_detectron2(name, work, data_root, num_images):
    """Train (once), save and evaluate detectron2's model; returns its metrics."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import MetadataCatalog, build_detection_test_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    from detectron_lib.data import shapes

    _, _, train_set, eval_set, _, _ = ARCHITECTURES[name]
    eval_name = f"{eval_set}_first{num_images}"
    for dataset, annotations in ((train_set, data_root / "shapes" / train_set / "annotations.json"),
                                 (eval_name, evaluated_subset(data_root, eval_set, num_images))):
        if dataset not in MetadataCatalog.list():
            register_coco_instances(dataset, {}, str(annotations),
                                    str(data_root / "shapes" / dataset.split("_first")[0] / "images"))
            MetadataCatalog.get(dataset).set(keypoint_names=list(shapes.STAR_KEYPOINT_NAMES),
                                             keypoint_flip_map=list(shapes.STAR_KEYPOINT_FLIP_MAP))
    cfg = detectron2_config(name, work, data_root, train_set, eval_name)
    checkpoint = work / name / "model_final.pth"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        model = FrozenBatchNorm2d.convert_frozen_batchnorm(trainer.model)
        torch.save({"model": model.state_dict(), "iteration": cfg.SOLVER.MAX_ITER}, checkpoint)
    model = FrozenBatchNorm2d.convert_frozen_batchnorm(build_model(cfg))
    DetectionCheckpointer(model).load(str(checkpoint))
    model.eval()
    evaluator = COCOEvaluator(eval_name, output_dir=str(work / name / "detectron2_eval"),
                              kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
    metrics = inference_on_dataset(model, build_detection_test_loader(cfg, eval_name), evaluator)
    return metrics, work / name / "detectron2_eval" / "coco_instances_results.json", eval_name


def run_ours(name, work, data_root, eval_name, annotations):
    """Plain ``detectron test`` on detectron2's checkpoint; returns (metrics, results prefix)."""
    config = ARCHITECTURES[name][1]
    catalog = work / "catalog.yaml"
    image_dir = data_root / "shapes" / eval_name.split("_first")[0] / "images"
    entry = {"annotation_file": str(annotations), "image_directory": str(image_dir)}
    if name.startswith("keypoint"):
        from detectron_lib.data import shapes
        entry.update(keypoint_names=list(shapes.STAR_KEYPOINT_NAMES),
                     keypoint_flip_map=[list(p) for p in shapes.STAR_KEYPOINT_FLIP_MAP],
                     keypoint_oks_sigmas=list(shapes.STAR_KEYPOINT_OKS_SIGMAS))
    catalog.write_text(json.dumps({eval_name: entry}))
    output = work / name / "ours"
    task = (["MODEL.NUM_CLASSES", "2", "KRCNN.NUM_KEYPOINTS", "5"] if name.startswith("keypoint")
            else ["MODEL.NUM_CLASSES", "7"])
    subprocess.run([sys.executable, "-m", "detectron_lib.cli", "test",
                    "--cfg", str(REPO / "configs" / "detectron2" / config),
                    "--weights", str(work / name / "model_final.pth"),
                    *task, "TEST.SCALE", str(SCALE),
                    "TEST.MAX_SIZE", str(MAX_SIZE), "TEST.DATASETS", f"('{eval_name}',)",
                    "DATASET_CATALOG_FILE", str(catalog), "DATA_ROOT", str(data_root),
                    "OUTPUT_DIR", str(output)], check=True)
    return json.loads((output / "metrics.json").read_text()), output / eval_name


def compare(theirs_file, ours_prefix, tolerance):
    """Per detection of detectron2's: the nearest same-class detection of ours (by the largest
    coordinate difference); the share within ``tolerance`` px and the differences of those."""
    from pycocotools import mask as mask_util

    theirs = json.loads(Path(theirs_file).read_text())
    ours = json.loads(Path(f"{ours_prefix}_bbox_results.json").read_text())
    for kind, key in (("segm", "segmentation"), ("keypoints", "keypoints")):
        path = Path(f"{ours_prefix}_{kind}_results.json")
        if path.exists():  # one entry per detection, in the order of the bbox results
            for detection, entry in zip(ours, json.loads(path.read_text())):
                detection[key] = entry[key]
    candidates = defaultdict(list)
    for detection in ours:
        candidates[(detection["image_id"], detection["category_id"])].append(detection)
    matched, coords, scores, ious, keypoints = 0, [0.0], [0.0], [], []
    for detection in theirs:
        pool = candidates.get((detection["image_id"], detection["category_id"]), [])
        if not pool:
            continue
        gaps = [max(abs(a - b) for a, b in zip(detection["bbox"], c["bbox"]))
                + abs(detection["score"] - c["score"]) for c in pool]
        best = pool[int(np.argmin(gaps))]
        gap = max(abs(a - b) for a, b in zip(detection["bbox"], best["bbox"]))
        if gap > tolerance:
            continue
        matched += 1
        coords.append(gap)
        scores.append(abs(detection["score"] - best["score"]))
        if "segmentation" in detection:  # two empty masks (a box thinner than a pixel) agree
            masks = [detection["segmentation"], best["segmentation"]]
            empty = not mask_util.area(masks).any()
            ious.append(1.0 if empty else mask_util.iou(masks[:1], masks[1:], [0])[0, 0])
        if "keypoints" in detection:
            a = np.asarray(detection["keypoints"]).reshape(-1, 3)
            b = np.asarray(best["keypoints"]).reshape(-1, 3)
            keypoints.append(np.abs(a[:, :2] - b[:, :2]).max())
    return {"detectron2": len(theirs), "ours": len(ours), "matched": matched,
            "max_coordinate_difference": max(coords), "max_score_difference": max(scores),
            "min_mask_iou": min(ious) if ious else None,
            "max_keypoint_difference": max(keypoints) if keypoints else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="checkpoints, outputs, data")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--images", type=int, default=100, help="evaluated images per set")
    parser.add_argument("--tolerance", type=float, default=1.0, help="pixels")
    args = parser.parse_args()
    from detectron_lib.data.catalog import materialize_dataset

    data_root = args.work / "data"
    for name in args.archs:
        for dataset in ARCHITECTURES[name][2:4]:
            materialize_dataset(dataset, data_root)
    rows = []
    for name in args.archs:
        theirs_metrics, theirs_file, eval_name = run_detectron2(name, args.work, data_root,
                                                                args.images)
        annotations = evaluated_subset(data_root, ARCHITECTURES[name][3], args.images)
        ours_metrics, ours_prefix = run_ours(name, args.work, data_root, eval_name, annotations)
        row = {"architecture": name, **compare(theirs_file, ours_prefix, args.tolerance)}
        for task in ("bbox", "segm", "keypoints"):
            if task in theirs_metrics:
                row[f"{task}_AP"] = (theirs_metrics[task]["AP"], 100 * ours_metrics[f"{task}/AP"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.work / "parity.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
