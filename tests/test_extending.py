"""The worked examples of docs/EXTENDING.md, kept true: a new backbone, a new kind of RoI head,
a new dataset and a new zoo baseline, each added the way the guide says, then trained and run.

Where the guide edits a library file (a registration import, a defaults.py node), the test
does the same in memory and undoes it (monkeypatch), so the suite's registries stay as shipped.
"""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import noise_images
from test_workflow_dag import planned_jobs
from test_workflow_plan import run_snakemake
from torch import nn

from detectron_lib.cli import main as cli_main
from detectron_lib.config import defaults, load_config
from detectron_lib.config.names import CONV_BODY
from detectron_lib.config.node import CfgNode
from detectron_lib.data.shapes import generate_shapes_dataset
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.modeling.poolers import roi_feature_names, roi_pooler_from_config
from detectron_lib.modeling.roi_heads import instance_heads
from detectron_lib.structures.boxes import Boxes
from detectron_lib.structures.instances import Instances

SHAPES_FPN = "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"
SIZES = [(96, 128), (80, 112)]


def _targets():
    # The shapes configs use continuous boxes (MODEL.BBOX_LEGACY_PLUS_ONE False), Boxes' default.
    return [Instances(SIZES[0], boxes=Boxes(torch.tensor([[10.0, 10, 60, 80], [50, 40, 110, 90]])),
                      classes=torch.tensor([1, 3])),
            Instances(SIZES[1], boxes=Boxes(torch.tensor([[0.0, 0, 30, 30]])),
                      classes=torch.tensor([4]))]


# ---- 1. a backbone ------------------------------------------------------------------------------
class TinyConvBody(nn.Module):
    """Three stride-2 convs and a stride-2 conv: one map, 'c4', at stride 16."""

    def __init__(self, width=32):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.out_channels = {"c4": width}
        self.strides = {"c4": 16}

    def forward(self, images):
        return {"c4": self.convs(images)}


def build_tiny_conv_body(cfg):
    return TinyConvBody()


def test_worked_example_backbone(repo_root):
    """EXTENDING.md, 'A backbone': a builder under a MODEL.CONV_BODY name (in the library an
    entry of config/names.py; here, as code outside it does, registered at run time)."""
    if "TinyConv.add_tiny_conv4_body" not in CONV_BODY:
        CONV_BODY.register("TinyConv.add_tiny_conv4_body")(build_tiny_conv_body)
    cfg = load_config(repo_root / "configs/shapes/e2e_faster_rcnn_R-18-C4_1x.yaml", [
        "MODEL.CONV_BODY", "TinyConv.add_tiny_conv4_body", "TRAIN.WEIGHTS", "",
        "FAST_RCNN.ROI_BOX_HEAD", "fast_rcnn_heads.add_roi_2mlp_head",
        "FAST_RCNN.MLP_HEAD_DIM", "64", "FAST_RCNN.ROI_XFORM_RESOLUTION", "7"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.backbone, TinyConvBody)
    _trains_one_step_and_detects(model)


def _trains_one_step_and_detects(model):
    images = noise_images(model, SIZES, seed=0)
    model.train()
    losses = model(images, [1.0, 1.0], _targets(), seeds=[1, 2])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        results = model(images)  # originals: the model resizes them to TEST.SCALE itself
    assert [r.image_size for r in results] and all(r.boxes.tensor.shape[1] == 4 for r in results)
    return losses, results


# ---- 2. a kind of RoI head ----------------------------------------------------------------------
class IoUHeads(nn.Module):
    """Predicts each detection's IoU with the object it found (IoU-Net's localization
    confidence): pooled RoI features -> two fc layers -> one sigmoid output per RoI, trained
    with smooth L1 against the IoU of each foreground RoI with its matched ground truth."""

    def __init__(self, pooler, in_features, in_channels, hidden_dim, loss_weight):
        super().__init__()
        self.pooler = pooler
        self.in_features = list(in_features)
        height, width = pooler.output_size
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width, hidden_dim),
                                nn.ReLU(), nn.Linear(hidden_dim, 1))
        self.loss_weight = loss_weight

    def predict(self, features, boxes_per_image):
        pooled = self.pooler([features[f] for f in self.in_features], boxes_per_image)
        return torch.sigmoid(self.fc(pooled)[:, 0])

    def forward(self, features, instances, targets=None, scales=None):
        if targets is None:
            scores = self.predict(features, [d.boxes for d in instances]).split(
                [len(d) for d in instances])
            out = []
            for detections, iou_scores in zip(instances, scores):
                detections = detections[:]
                detections.iou_scores = iou_scores
                out.append(detections)
            return out, {}
        fg = [rois[rois.classes > 0] for rois in instances]
        predicted = self.predict(features, [rois.boxes for rois in fg])
        true_iou = torch.cat([rois.boxes.iou(gt.boxes[rois.matched_gt]).diagonal()
                              for rois, gt in zip(fg, targets)])
        loss = F.smooth_l1_loss(predicted, true_iou, reduction="sum") / max(len(predicted), 1)
        return instances, {"loss_iou": self.loss_weight * loss}


def build_iou_roi_heads(cfg, backbone_out_channels, backbone_strides, box_head=None):
    in_features = roi_feature_names(cfg, backbone_out_channels)
    pooler = roi_pooler_from_config(cfg, cfg.IOU_HEAD, [backbone_strides[f] for f in in_features])
    return IoUHeads(pooler, in_features, backbone_out_channels[in_features[0]],
                    cfg.IOU_HEAD.HIDDEN_DIM, cfg.IOU_HEAD.LOSS_WEIGHT)


@pytest.fixture
def iou_head_kind(monkeypatch):
    """The guide's three files, in memory: the module registering the builder (this test
    module), the IOU_HEAD node of config/defaults.py, the import in modeling/roi_heads."""
    extended = defaults._C.clone()
    extended.IOU_HEAD = CfgNode({"ON": False, "ROI_XFORM_METHOD": "RoIAlign",
                                 "ROI_XFORM_RESOLUTION": 7, "ROI_XFORM_SAMPLING_RATIO": 2,
                                 "HIDDEN_DIM": 64, "LOSS_WEIGHT": 1.0}, prefix="IOU_HEAD")
    extended.freeze()
    monkeypatch.setattr(defaults, "_C", extended)
    monkeypatch.setattr(instance_heads, "INSTANCE_HEADS", list(instance_heads.INSTANCE_HEADS))
    instance_heads.register_instance_head("iou_heads", "IOU_HEAD.ON")(build_iou_roi_heads)
    # meta_arch reads the list it imported; point it at the patched one too
    import detectron_lib.modeling.meta_arch as meta_arch
    monkeypatch.setattr(meta_arch, "INSTANCE_HEADS", instance_heads.INSTANCE_HEADS)


def test_worked_example_roi_head_kind(repo_root, iou_head_kind):
    """EXTENDING.md, 'A kind of RoI head': switched on by its config key, built, trained
    beside the box head and run on the detections, with nothing else changed."""
    off = build_model(load_config(repo_root / SHAPES_FPN, ["TRAIN.WEIGHTS", ""]))
    assert off.iou_heads is None and "iou_heads" not in off.instance_head_names
    cfg = load_config(repo_root / SHAPES_FPN, ["TRAIN.WEIGHTS", "", "IOU_HEAD.ON", "True",
                                               "TEST.SCORE_THRESH", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.instance_head_names == ["iou_heads"]
    losses, results = _trains_one_step_and_detects(model)
    assert losses["loss_iou"] > 0 and model.iou_heads.fc[1].weight.grad is not None
    for result in results:
        assert len(result) and ((result.iou_scores >= 0) & (result.iou_scores <= 1)).all()


# ---- 3. a dataset -------------------------------------------------------------------------------
def test_worked_example_dataset(repo_root, tmp_path):
    """EXTENDING.md, 'A dataset': COCO-format annotations, one catalog YAML entry per split,
    DATASET_CATALOG_FILE in the config; `detectron train` and `detectron test` take it."""
    data = tmp_path / "parts"
    generate_shapes_dataset(data / "train", num_images=6, seed=5)
    generate_shapes_dataset(data / "val", num_images=3, seed=6)
    names = json.loads((data / "train" / "annotations.json").read_text())["categories"]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({
        f"parts_{split}": {"annotation_file": str(data / split / "annotations.json"),
                           "image_directory": str(data / split / "images"),
                           "category_names": [c["name"] for c in names]}
        for split in ("train", "val")}))
    opts = ["DATASET_CATALOG_FILE", str(catalog), "TRAIN.DATASETS", "('parts_train',)",
            "TEST.DATASETS", "('parts_val',)", "TRAIN.WEIGHTS", "", "SOLVER.MAX_ITER", "2",
            "TRAIN.SCALES", "(96,)", "TEST.SCALE", "96", "OUTPUT_DIR", str(tmp_path / "run")]
    assert cli_main(["train", "--cfg", str(repo_root / SHAPES_FPN), *opts]) == 0
    weights = tmp_path / "run" / "model_final.pth"
    assert cli_main(["test", "--cfg", str(repo_root / SHAPES_FPN), "--weights", str(weights),
                     *opts]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "bbox/AP" in metrics


# ---- 4. a zoo baseline --------------------------------------------------------------------------
def test_worked_example_zoo_baseline(repo_root, tmp_path):
    """EXTENDING.md, 'A zoo baseline': a config and a manifest entry; the DAG plans its
    training and evaluation, and `snakemake baseline_NAME` only that."""
    (tmp_path / "configs").mkdir()
    for folder in ("shapes", "zoo"):
        (tmp_path / "configs" / folder).symlink_to(repo_root / "configs" / folder)
    manifest = yaml.safe_load((repo_root / "configs/zoo/shapes.yaml").read_text())
    manifest["name"] = "mine"
    manifest["table"] = "MY_ZOO.md"
    manifest["baselines"]["e2e_faster_rcnn_R-18-FPN_2x"] = {
        "config": "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml",
        "overrides": ["SOLVER.MAX_ITER", "1440"], "weights_from": "R-18-GN",
        "section": "end_to_end"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(manifest))
    proc = run_snakemake(tmp_path, "baseline_e2e_faster_rcnn_R-18-FPN_2x", "-n",
                         "--configfile", "mine.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert ("train", "baseline=e2e_faster_rcnn_R-18-FPN_2x") in jobs
    assert ("evaluate", "baseline=e2e_faster_rcnn_R-18-FPN_2x") in jobs
    assert not any(w.startswith("baseline=") and "2x" not in w for _, w in jobs)
