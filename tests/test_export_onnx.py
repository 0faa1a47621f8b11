"""ONNX export (export.onnx) against our PyTorch models: the exported graph run by ONNX Runtime
(inference.onnx_runtime) gives the model's detections on shapes images and on a demo photo,
for RetinaNet, Faster R-CNN (FPN and C4), Mask R-CNN FPN, Keypoint R-CNN FPN, R-FCN and
RPN-only models of the shapes configs;
`detectron infer` on the .onnx writes the JSON it writes on the .pth.

The models are the shapes baselines with seeded initial weights (the body GroupNorm, no
pretrained file), loaded the way `detectron infer` loads weights; boxes and scores are
compared directly. The reference is the PyTorch model called on the same uint8 image.
"""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")

from detectron_lib import cli  # noqa: E402
from detectron_lib.config import load_config  # noqa: E402
from detectron_lib.data.transforms import (  # noqa: E402
    compute_resize_scale,
    image_array,
    image_tensor,
    read_image_bgr,
    resize_image,
)
from detectron_lib.engine.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from detectron_lib.engine.checkpoint_formats import read_weights_file  # noqa: E402
from detectron_lib.errors import ConfigError  # noqa: E402
from detectron_lib.export.onnx import (  # noqa: E402
    export_model,
    export_onnx,
    pil_bilinear_resize,
)
from detectron_lib.inference.engine import load_model_for_inference  # noqa: E402
from detectron_lib.inference.onnx_runtime import OnnxRuntimeDetector  # noqa: E402
from detectron_lib.inference.predictor import Predictor  # noqa: E402
from detectron_lib.modeling.meta_arch import build_model  # noqa: E402

FLOAT32 = ["MODEL.BODY_PRECISION", "float32", "MODEL.HEAD_PRECISION", "float32"]
FAMILIES = {
    "retinanet": "retinanet_R-18-FPN_1x",
    "faster_rcnn": "e2e_faster_rcnn_R-18-FPN_1x",
    "mask_rcnn": "e2e_mask_rcnn_R-18-FPN_1x",
    "faster_rcnn_c4": "e2e_faster_rcnn_R-18-C4_1x",
    "rfcn": "rfcn_R-18-DC5_1x",
    "keypoint_rcnn": "e2e_keypoint_rcnn_R-18-FPN_1x",
}


def _config(repo_root, name, extra=()):
    return load_config(str(repo_root / "configs" / "shapes" / f"{name}.yaml"),
                       FLOAT32 + ["TRAIN.WEIGHTS", ""] + list(extra))


def _seeded_weights(cfg, path, seed=0):
    """Seeded initial weights, the RPN's objectness predictor spread (std 1, not 0.01) so that
    no two proposals score alike (ties make the order of equal scores, NMS included, arbitrary)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    if getattr(model, "rpn", None) is not None:
        torch.nn.init.normal_(model.rpn.head.cls_logits.weight, std=1.0)
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def test_images(tiny_dataset, reference_dir):
    """Three shapes images (upscaled to TEST.SCALE) and a demo photo (shrunk), uint8 BGR."""
    catalog = yaml.safe_load(tiny_dataset.read_text())
    shapes = sorted(p for p in (tiny_dataset.parent / "tiny" / "images").iterdir())[:3]
    assert catalog["tiny_shapes"]["image_directory"].endswith("images") and len(shapes) == 3
    photo = sorted((reference_dir / "demo_images").glob("*.jpg"))[0]
    return [image_tensor(read_image_bgr(p)) for p in shapes + [photo]]


@pytest.mark.parametrize("height,width", [(150, 400), (500, 333), (200, 300), (7, 900)])
def test_graph_resize_is_pil_bilinear(height, width):
    """The graph's resize against the io's (data.transforms.resize_image, PIL): bit for bit,
    shrinking and enlarging."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(height))
    expected = image_tensor(resize_image(image_array(image),
                                         compute_resize_scale(height, width, 256, 384)))
    assert torch.equal(pil_bilinear_resize(image, torch.tensor(expected.shape[1:])), expected)


def _mask_iou(a, b):
    """(N,) IoU of bool masks (N, H, W); two empty masks agree (1)."""
    union = (a | b).sum(dim=(1, 2))
    return torch.where(union > 0, (a & b).sum(dim=(1, 2)) / union.clamp(min=1), 1.0)


def _pytorch_and_onnx_runtime(cfg, tmp_path, images):
    """(image, PyTorch's Instances, ONNX Runtime's) for each image, for the config's model with
    seeded weights and its export."""
    weights = _seeded_weights(cfg, tmp_path / "model.pth")
    model = load_model_for_inference(cfg, str(weights), torch.device("cpu"))
    runtime = OnnxRuntimeDetector(export_model(cfg, str(weights), tmp_path / "model.onnx"),
                                  threads=2)
    for image in images:
        with torch.no_grad():
            (expected,) = model([image])
        (got,) = runtime([image])
        yield image, expected, got


def _assert_same_detections(family, image, expected, got):
    """ONNX Runtime's detections are PyTorch's: boxes within 0.05 px, scores within 1e-3, the
    same labels, masks of IoU > 0.99, keypoints within 0.05 px."""
    assert len(got) == len(expected) > 0, family
    assert got.boxes.convention == expected.boxes.convention
    assert torch.allclose(got.boxes.tensor, expected.boxes.tensor, rtol=0, atol=0.05)
    assert torch.allclose(got.scores, expected.scores, rtol=0, atol=1e-3)
    assert torch.equal(got.classes, expected.classes)
    if family == "mask_rcnn":
        assert got.masks.shape == expected.masks.shape == (len(got), *image.shape[1:])
        assert bool((_mask_iou(got.masks, expected.masks) > 0.99).all())
    if family == "keypoint_rcnn":
        assert got.keypoints.shape == expected.keypoints.shape == (len(got), 5, 3)
        assert torch.allclose(got.keypoints, expected.keypoints, rtol=0, atol=0.05)
        assert torch.allclose(got.keypoint_probs, expected.keypoint_probs, rtol=0, atol=1e-3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_runtime_matches_pytorch(family, repo_root, tmp_path, test_images):
    """Each family exported (traced on a mid-grey image of TEST.SCALE) and run by ONNX Runtime
    on images of other sizes gives the PyTorch model's detections."""
    for image, expected, got in _pytorch_and_onnx_runtime(_config(repo_root, FAMILIES[family]),
                                                         tmp_path, test_images):
        _assert_same_detections(family, image, expected, got)


def test_counts_follow_the_input_not_the_traced_image(repo_root, tmp_path, test_images):
    """Traced on a flat strip, which gets fewer proposals and detections than the shapes images,
    the graph runs the box and mask heads on all of a test image's: the counts that split the
    heads' outputs per image are the input's, not constants of the trace. As many detections
    as PyTorch's, the best 100 compared (further down, the seeded weights' scores are so close
    that the two runtimes' rounding reorders them)."""
    cfg = _config(repo_root, FAMILIES["mask_rcnn"], ["TEST.RPN_POST_NMS_TOP_N", "2000",
                                                      "TEST.DETECTIONS_PER_IM", "1000"])
    model = load_model_for_inference(cfg, str(_seeded_weights(cfg, tmp_path / "model.pth")),
                                     torch.device("cpu"))
    strip = torch.full((3, 2, 256), 128, dtype=torch.uint8)
    shapes_images = test_images[:3]  # (not the photo: a thousand masks pasted into it are slow)
    proposal_counts = []
    hook = model.roi_heads.register_forward_pre_hook(
        lambda heads, args: proposal_counts.append(len(args[1][0])))
    with torch.no_grad():
        strip_detections = len(model([strip])[0])
        expected = [model([image])[0] for image in shapes_images]
    hook.remove()
    assert proposal_counts[0] < min(proposal_counts[1:])
    assert strip_detections < min(len(e) for e in expected)
    runtime = OnnxRuntimeDetector(export_onnx(model, tmp_path / "model.onnx", strip), threads=2)
    for image, image_expected in zip(shapes_images, expected):
        (got,) = runtime([image])
        assert len(got) == len(image_expected)
        _assert_same_detections("mask_rcnn", image, image_expected[:100], got[:100])


def test_rpn_only_proposals_match_pytorch(repo_root, tmp_path, test_images):
    """An RPN-only model's 1000 proposals: every one of PyTorch's has one of ONNX Runtime's
    within 0.05 px and 1e-3 in score, and the other way round. They are matched as sets, not
    by rank: the two runtimes' convolutions round differently (objectness within 1e-5 here),
    which swaps the order of proposals whose scores are that close, and among 1000 some are;
    only proposals that close to the top-k cut may be in one list and not the other."""
    for _, expected, got in _pytorch_and_onnx_runtime(_config(repo_root, "rpn_R-18-FPN_1x"),
                                                      tmp_path, test_images):
        assert len(got) == len(expected) > 0 and not got.has("classes")
        near = (expected.boxes.tensor[:, None] - got.boxes.tensor[None]).abs().amax(dim=2) <= 0.05
        near &= (expected.scores[:, None] - got.scores[None]).abs() <= 1e-3
        cut = min(expected.scores.min(), got.scores.min()) + 1e-3
        assert bool((near.any(dim=1) | (expected.scores <= cut)).all())
        assert bool((near.any(dim=0) | (got.scores <= cut)).all())


def test_infer_writes_the_same_json_on_onnx_and_pth(repo_root, tmp_path, tiny_dataset,
                                                    capsys):
    """`detectron export` of a Mask R-CNN .pth, then `detectron infer --json` on the .pth and
    on the .onnx: the same files, the same detections (labels, masks' RLE; boxes within
    0.05 px, scores within 1e-3) and both pictures written."""
    name = FAMILIES["mask_rcnn"]
    cfg = _config(repo_root, name)
    weights = _seeded_weights(cfg, tmp_path / "model.pth", seed=1)
    cfg_file = str(repo_root / "configs" / "shapes" / f"{name}.yaml")
    overrides = FLOAT32 + ["TRAIN.WEIGHTS", ""]
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((tiny_dataset.parent / "tiny" / "images").iterdir())[:3]:
        shutil.copy(source, images)
    onnx_path = tmp_path / "model.onnx"
    assert cli.main(["export", "--cfg", cfg_file, "--weights", str(weights), "--format", "onnx",
                     "--output", str(onnx_path), *overrides]) == 0
    assert capsys.readouterr().out.strip() == str(onnx_path)
    outputs = {}
    for kind, path in (("pth", weights), ("onnx", onnx_path)):
        out_dir = tmp_path / kind
        assert cli.main(["infer", "--cfg", cfg_file, "--weights", str(path), "--input",
                         str(images), "--output", str(out_dir), "--json", *overrides]) == 0
        outputs[kind] = {p.name: json.loads(p.read_text()) for p in out_dir.glob("*.json")}
        assert len(list(out_dir.glob("*.png"))) == len(outputs[kind]) == 3
    assert outputs["pth"].keys() == outputs["onnx"].keys()
    for file_name, expected in outputs["pth"].items():
        got = outputs["onnx"][file_name]
        assert {k: v for k, v in got.items() if k != "detections"} == {
            k: v for k, v in expected.items() if k != "detections"}
        assert len(got["detections"]) == len(expected["detections"]) > 0
        # Best first; seeded weights score some detections within float noise of each other
        for g, e in zip(*(sorted(d["detections"], key=lambda d: (d["label"], d["box"]))
                          for d in (got, expected))):
            assert g.keys() == e.keys()
            assert (g["label"], g.get("category"), g["mask"]) == (
                e["label"], e.get("category"), e["mask"])
            assert np.allclose(g["box"], e["box"], rtol=0, atol=0.05)
            assert abs(g["score"] - e["score"]) <= 1e-3


def test_onnx_model_is_told_apart_from_weights(repo_root, tmp_path):
    """An exported model given where weights are loaded (TRAIN.WEIGHTS, `detectron test`) is
    refused naming the file and what runs it; Predictor runs it (content, not suffix)."""
    cfg = _config(repo_root, FAMILIES["faster_rcnn"], ["TEST.SCALE", "128", "TEST.MAX_SIZE", "160"])
    weights = _seeded_weights(cfg, tmp_path / "model.pth")
    exported = export_model(cfg, str(weights), tmp_path / "model.weights")
    with pytest.raises(CheckpointError, match=r"model\.weights' is an exported ONNX model"):
        read_weights_file(exported)
    detections = Predictor(cfg, str(exported))(np.zeros((100, 120, 3), np.uint8))
    assert detections.boxes.tensor.shape[1] == 4 and detections.has("classes")


@pytest.mark.parametrize("name,extra,switch", [
    ("rfcn_R-18-DC5_1x", ["FAST_RCNN.ROI_XFORM_METHOD", "RoIPoolF"], "ROI_XFORM_METHOD"),
    ("e2e_keypoint_rcnn_R-18-FPN_1x", ["MODEL.RESCALE_PER_AXIS", "True"], "RESCALE_PER_AXIS"),
])
def test_export_refuses_what_it_does_not_cover(repo_root, tmp_path, name, extra, switch):
    """(PS-)RoIPool and detectron2's per-axis rescaling are not exported: one ConfigError
    naming the key."""
    cfg = _config(repo_root, name, extra)
    weights = _seeded_weights(cfg, tmp_path / "model.pth")
    with pytest.raises(ConfigError, match=switch):
        export_model(cfg, str(weights), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_corrupt_onnx_file_names_the_file(tmp_path):
    """A truncated .onnx: one CheckpointError naming the file and what to do."""
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07\x12\x03abc")
    with pytest.raises(CheckpointError, match=r"broken\.onnx' cannot be loaded.*detectron export"):
        OnnxRuntimeDetector(path)
