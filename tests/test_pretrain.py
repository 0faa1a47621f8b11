"""Backbone pretraining on object crops: crop geometry (hand-computed), determinism, and the
written Detectron-format weights loading into FPN and C4 detectors through TRAIN.WEIGHTS."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
import torch

from detectron_lib import ops
from detectron_lib.cli import main as cli_main
from detectron_lib.config import load_config
from detectron_lib.engine.checkpoint_formats import load_weights
from detectron_lib.engine.pretrain import body_blobs, build_body_classifier, crop_batch, sample_crop_boxes
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone import detectron_blob_names
from detectron_lib.modeling.meta_arch import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "shapes"


def _record(boxes, classes, height=100, width=120):
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "classes": np.array(classes, dtype=np.int64), "height": height, "width": width}


def test_object_crops_contain_their_object_and_background_crops_avoid_objects():
    record = _record([[10, 20, 40, 60], [70, 10, 110, 30]], [3, 5])
    generator = torch.Generator().manual_seed(0)
    boxes, labels = sample_crop_boxes(record, 200, 0.5, generator)
    objects, background = boxes[labels > 0], boxes[labels == 0]
    assert len(objects) + len(background) == len(labels) and len(objects) > 50 and len(background) > 50
    gt = torch.from_numpy(record["boxes"])
    for box, label in zip(objects, labels[labels > 0]):
        source = gt[record["classes"].tolist().index(int(label))]
        assert (box[:2] <= source[:2]).all() and (box[2:] >= source[2:]).all()
        assert torch.isclose(box[2] - box[0], box[3] - box[1])   # square
    assert ops.box_iou(background, gt).max() < 0.3
    # ... nor hold most of an object: no background crop contains a whole object box
    inside = (background[:, None, :2] <= gt[None, :, :2]).all(2) & (background[:, None, 2:] >= gt[None, :, 2:]).all(2)
    assert not inside.any()


def test_image_without_objects_gives_background_crops_only():
    boxes, labels = sample_crop_boxes(_record([], []), 8, 0.25, torch.Generator().manual_seed(1))
    assert (labels == 0).all() and len(boxes) == len(labels) > 0


def test_crop_of_a_pixel_aligned_box_is_the_image_slice():
    # RoIAlign (aligned, 2x2 samples per bin) of a box covering pixels 3..6 x 2..5 at output
    # size 4 samples each pixel at its own centre: the crop is exactly the slice.
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).view(3, 10, 12)
    crops = crop_batch([image], [torch.tensor([[3.0, 2.0, 7.0, 6.0]])], 4)
    torch.testing.assert_close(crops[0], image[:, 2:6, 3:7])
    # Outside the image the crop is zero, the pixel mean after normalization.
    crops = crop_batch([image], [torch.tensor([[-8.0, -8.0, -4.0, -4.0]])], 4)
    assert crops.abs().max() == 0


def _pretrain_overrides(catalog, **extra):
    opts = {"DATASET_CATALOG_FILE": str(catalog), "TRAIN.DATASETS": "('tiny_shapes',)",
            "PRETRAIN.VAL_DATASETS": "('tiny_shapes',)", "PRETRAIN.VAL_BATCHES": "2",
            "PRETRAIN.MAX_ITER": "3", "PRETRAIN.WARM_UP_ITERS": "1", "PRETRAIN.CROP_SIZE": "32",
            "PRETRAIN.IMAGES_PER_BATCH": "2", "PRETRAIN.CROPS_PER_IMAGE": "3"}
    opts.update(extra)
    return [token for pair in opts.items() for token in pair]


def test_pretrain_cli_writes_detectron_blobs_that_load_into_fpn_and_c4(tiny_dataset, tmp_path,
                                                                        capsys, tracking_store):
    output = tmp_path / "R-18-GN.pkl"
    status = cli_main(["pretrain", "--cfg", str(CONFIGS / "pretrain" / "R-18-GN.yaml"),
                       "--output", str(output), "--log-period", "1", "--experiment", "pretrain",
                       *_pretrain_overrides(tiny_dataset)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["iterations"] == 3 and 0.0 <= summary["val_accuracy"] <= 1.0
    assert json.loads(output.with_name(output.name + ".json").read_text()) == summary
    # tracked: the loss curve, the summary's numbers, the weights
    client = MlflowClient(tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
    assert run.data.metrics["val_accuracy"] == summary["val_accuracy"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "R-18-GN.pkl", "R-18-GN.pkl.json"}
    with open(output, "rb") as f:
        blobs = pickle.load(f)["blobs"]
    assert {"conv1_w", "conv1_gn_s", "res2_0_branch2a_w", "res5_1_branch2b_gn_b", "pred_w"} <= set(blobs)
    assert blobs["pred_w"].shape == (7, 512)   # 6 shapes + background, R-18's res5 width

    for config in ("e2e_faster_rcnn_R-18-FPN_1x.yaml", "e2e_faster_rcnn_R-18-C4_1x.yaml"):
        model = build_model(load_config(CONFIGS / config, ["MODEL.BODY_PRECISION", "float32"]))
        report = load_weights(model, str(output), for_training=True)
        names = detectron_blob_names(model)
        loaded = [key for key in report.loaded if key in names]
        # Every ResNet layer of the detector (res5 sits in C4's box head) got its blob.
        assert len(loaded) == len(blobs) - 2
        state = model.state_dict()
        for key in loaded:
            np.testing.assert_array_equal(state[key].numpy(), blobs[names[key]])


def test_pretraining_is_reproducible(tiny_dataset, tmp_path):
    from detectron_lib.engine.pretrain import pretrain_backbone

    runs = []
    for name in ("a", "b"):
        cfg = load_config(CONFIGS / "pretrain" / "R-18-GN.yaml",
                          _pretrain_overrides(tiny_dataset, **{"PRETRAIN.VAL_DATASETS": "()",
                                                               "MODEL.BODY_PRECISION": "float32"}))
        pretrain_backbone(cfg, tmp_path / f"{name}.pkl")
        with open(tmp_path / f"{name}.pkl", "rb") as f:
            runs.append(pickle.load(f)["blobs"])
    for blob in runs[0]:
        np.testing.assert_array_equal(runs[0][blob], runs[1][blob])


def test_pretrained_vgg16_gn_body_loads_into_the_vgg16_detector(tiny_dataset, tmp_path):
    from detectron_lib.engine.pretrain import pretrain_backbone

    cfg = load_config(CONFIGS / "pretrain" / "VGG16-GN.yaml", _pretrain_overrides(tiny_dataset))
    output = tmp_path / "VGG16-GN.pkl"
    pretrain_backbone(cfg, output)
    with open(output, "rb") as f:
        blobs = pickle.load(f)["blobs"]
    assert {"conv1_1_w", "conv1_1_gn_s", "conv5_3_w", "conv5_3_gn_b", "pred_w"} <= set(blobs)
    assert blobs["pred_w"].shape == (7, 512)   # 6 shapes + background, conv5_3's width
    model = build_model(load_config(CONFIGS / "e2e_faster_rcnn_VGG16_1x.yaml",
                                    ["MODEL.BODY_PRECISION", "float32"]))
    report = load_weights(model, str(output), for_training=True)
    names = detectron_blob_names(model)
    loaded = [key for key in report.loaded if key in names]
    assert len(loaded) == len(blobs) - 2   # all 13 convs and their GroupNorms
    state = model.state_dict()
    for key in loaded:
        np.testing.assert_array_equal(state[key].numpy(), blobs[names[key]])


def test_pretrain_rejects_a_body_it_cannot_classify_with(tiny_dataset, tmp_path):
    from detectron_lib.engine.pretrain import pretrain_backbone

    cfg = load_config(None, _pretrain_overrides(tiny_dataset, **{
        "MODEL.CONV_BODY": "VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body"}))
    with pytest.raises(ConfigError, match="VGG_CNN_M_1024.*neither a ResNet nor a VGG16 body"):
        pretrain_backbone(cfg, tmp_path / "vgg.pkl")
    assert not (tmp_path / "vgg.pkl").exists()


def test_trainable_batchnorm_is_folded_into_affine_channel_blobs(tmp_path):
    # A body pretrained with BatchNorm, exported and loaded into a frozen-BN (AffineChannel)
    # detector body, computes the same features as the pretrained body in eval mode.
    bn_funcs = ["RESNETS.TRANS_FUNC", "basic_trainable_bn_transformation",
                "RESNETS.STEM_FUNC", "basic_trainable_bn_stem",
                "RESNETS.SHORTCUT_FUNC", "basic_trainable_bn_shortcut"]
    cfg = load_config(None, ["MODEL.CONV_BODY", "ResNet.add_ResNet18_conv5_body"] + bn_funcs)
    torch.manual_seed(0)
    classifier = build_body_classifier(cfg, 3)
    for layer in classifier.body.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": body_blobs(classifier)}, f)

    detector = build_model(load_config(None, [
        "MODEL.TYPE", "generalized_rcnn", "MODEL.CONV_BODY", "ResNet.add_ResNet18_conv4_body",
        "MODEL.FASTER_RCNN", "True", "MODEL.NUM_CLASSES", "3",
        "FAST_RCNN.ROI_BOX_HEAD", "ResNet.add_ResNet_roi_conv5_head",
        "RESNETS.TRANS_FUNC", "basic_transformation", "RESNETS.STEM_FUNC", "basic_bn_stem",
        "RESNETS.SHORTCUT_FUNC", "basic_bn_shortcut"])).eval()
    load_weights(detector, str(path), for_training=True)
    classifier.eval()
    images = torch.randn(2, 3, 64, 64)
    captured = {}
    classifier.body.res4.register_forward_hook(lambda module, args, out: captured.update(res4=out))
    with torch.no_grad():
        classifier.body(images)
        actual = detector.backbone(images)["res4"]
    expected = captured["res4"]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
