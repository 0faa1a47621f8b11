"""Weights from Detectron, detectron2 and torchvision (and our own checkpoints) into our models.

``load_weights(model, weights, for_training=...)`` takes a path or URL, reads the file, tells
its format from the content (not the suffix), renames its tensors onto the model and loads
them. Formats and an example of their names:

  detectron             Detectron .pkl: model-zoo models and the ImageNet MSRA backbones
                        (res2_0_branch2a_w, res2_0_branch2a_bn_s, fpn_inner_res5_2_sum_w,
                        conv_rpn_fpn2_w, fc6_w, cls_score_w, _[mask]_fcn1_w, conv5_mask_w,
                        conv_fcn1_w, kps_score_lowres_w)
  detectron2            detectron2 .pkl / .pth (backbone.bottom_up.res2.0.conv1.weight,
                        proposal_generator.rpn_head.conv.weight, roi_heads.box_predictor...)
  torchvision           torchvision detection state dicts (backbone.body.layer1.0.conv1.weight,
                        backbone.fpn.inner_blocks.0.0.weight, rpn.head.conv.0.0.weight ...)
  torchvision_imagenet  torchvision ResNet / ResNeXt classifiers (layer1.0.conv1.weight)
  detectron_lib         our own checkpoints (engine.checkpoint)

On the way, BatchNorm statistics fold into frozen BN (AffineChannel: scale = gamma /
sqrt(var + eps), shift = beta - mean * scale), and detectron2's class layout (background last
in cls_score, no background rows in bbox_pred or the mask predictor) becomes Detectron's
(background first, with rows); torchvision's RetinaNet loses the background logit it keeps
per anchor. Conventions the weights do not carry (pixel order, means and stds, the +1 box
width, RoIAlign alignment, mask paste, heatmap upsampling, RetinaNet's anchors and P6 input)
are config keys: see configs/torchvision/.

Every tensor is accounted for. Inference (``for_training=False``): a model tensor the file
lacks, or one of another shape, is an error listing them all. Training initialization
(TRAIN.WEIGHTS): layers the file lacks keep their initialization (an ImageNet backbone has no
heads), class-dependent predictors of another shape are skipped for fine-tuning, and other
mis-shaped tensors are an error. File tensors nothing takes are listed in a warning (or, for
our own checkpoints in inference, an error).

Files are data, never code: .pkl files go through a restricted unpickler
(utils.safe_pickle: numpy arrays of plain dtypes, numbers, strings, lists, tuples, dicts) and
torch files through ``torch.load(weights_only=True)``; a file holding anything else (a
function, a class, an array of Python objects) is refused with a CheckpointRefusedError naming
the file and the object, and nothing of it runs.
"""
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectron_lib.engine.checkpoint import CheckpointError, CheckpointRefusedError, load_torch_file
from detectron_lib.modeling.backbone.norms import FrozenBatchNorm2d
from detectron_lib.utils import safe_pickle
from detectron_lib.utils.download import DownloadError, cached_path

logger = logging.getLogger(__name__)

DETECTRON = "detectron"
DETECTRON2 = "detectron2"
TORCHVISION = "torchvision"
TORCHVISION_IMAGENET = "torchvision_imagenet"
OURS = "detectron_lib"
FORMATS = (DETECTRON, DETECTRON2, TORCHVISION, TORCHVISION_IMAGENET, OURS)

# Predictors whose shape depends on the dataset (classes, keypoints): skipped, not an error,
# when a model is fine-tuned from weights trained on another dataset.
DATASET_DEPENDENT_PREFIXES = (
    "roi_heads.predictor.", "mask_heads.predictor.", "keypoint_heads.predictor.",
    "head.cls_pred.", "head.box_pred.",
)
# Names of a file that are not weights of any model: optimizer state, input normalization.
_NOT_WEIGHTS = re.compile(r"(_momentum$|^pixel_(mean|std)$|(^|\.)num_batches_tracked$)")
# How many names of a kind a message lists before "... and N more"
_LISTED = 40


@dataclass
class WeightsFile:
    """A weights file read into memory: ``tensors`` {name in the file: tensor} of ``format``;
    ``ignored``: names deliberately not loaded (optimizer state, normalization constants)."""

    path: str
    format: str
    tensors: dict
    ignored: list = field(default_factory=list)


@dataclass
class ImportReport:
    """What ``load_weights`` did. Keys are the model's state-dict keys unless noted.

    loaded: keys set from the file. missing: keys the file has nothing for. mis_shaped /
    skipped: (key, file name, file shape, model shape), the latter the dataset-dependent
    predictors left out for fine-tuning. unused: file names nothing took. ignored: file names
    that are not weights (optimizer state ...).
    """

    source: str
    format: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    mis_shaped: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    ignored: list = field(default_factory=list)


# ---- reading and recognizing files ----------------------------------------------------------
def read_weights_file(path):
    """Read a weights file of any supported format; a CheckpointError if it cannot be read or
    is of no known format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist")
    obj = _load_object(path)
    fmt, tensors = _recognize(obj, path)
    state, ignored = {}, []
    for name, value in tensors.items():
        if _NOT_WEIGHTS.search(name) or not isinstance(value, (np.ndarray, torch.Tensor)):
            ignored.append(name)
            continue
        state[name] = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(
            value, np.ndarray) else value.detach()
    return WeightsFile(str(path), fmt, state, sorted(ignored))


# An ONNX ModelProto starts with its ir_version: protobuf field 1, a varint (tag byte 0x08).
# No weights file read here does: a torch.save zip starts 'PK', a pickle 0x80 or '('.
ONNX_FIRST_BYTE = b"\x08"


def is_onnx_file(path):
    """Whether ``path`` holds a model `detectron export` wrote (told by content, not suffix)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == ONNX_FIRST_BYTE
    except OSError:
        return False


def _load_object(path):
    """The data stored in ``path``: a torch.save zip or legacy file (torch.load with
    weights_only=True), or a (Python 2) pickle (the restricted unpickler of utils.safe_pickle).
    Anything but data in it: a CheckpointRefusedError naming the file and the object."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == ONNX_FIRST_BYTE:
        raise CheckpointError(f"'{path}' is an exported ONNX model, not weights: `detectron "
                              "infer` and Predictor run it; other uses need the .pth it was "
                              "exported from")
    is_zip = head == b"PK\x03\x04"
    try:
        if not is_zip:
            with open(path, "rb") as f:
                obj = safe_pickle.load(f, encoding="latin1")
            if not isinstance(obj, int):  # torch.save's legacy format starts with a magic int
                return obj
        return load_torch_file(path, "weights file")
    except safe_pickle.RefusedObject as e:
        raise CheckpointRefusedError(safe_pickle.refusal_message(path, e.what, "weights file")) from None
    except CheckpointRefusedError:
        raise
    except CheckpointError as e:  # load_torch_file's, which names the file already
        raise CheckpointError(f"{e}; expected a .pkl or .pth checkpoint") from e
    except Exception as e:  # truncated, or not a weights file at all: say which file
        raise CheckpointError(f"weights file '{path}' cannot be read ({type(e).__name__}: {e}); "
                              "expected a .pkl or .pth checkpoint") from e


def _recognize(obj, path):
    """(format, {name: array or tensor}) of a loaded file object."""
    if isinstance(obj, dict):
        if isinstance(obj.get("blobs"), dict):
            return DETECTRON, obj["blobs"]
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                inner = obj[key]
                fmt = detect_format(inner.keys())
                if fmt is not None:
                    return fmt, inner
        fmt = detect_format(obj.keys())
        if fmt is not None:
            return fmt, obj
    keys = list(obj.keys())[:6] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"weights file '{path}' is of no format this library reads (its first entries: {keys}); "
        "expected a Detectron .pkl, a detectron2 .pkl/.pth, a torchvision state dict or a "
        "checkpoint of ours")


def detect_format(keys):
    """The format whose naming ``keys`` follow, or None."""
    keys = [k for k in keys if isinstance(k, str)]
    if not keys:
        return None
    if any(k.startswith("backbone.body.") for k in keys):
        return TORCHVISION
    if any(k.startswith(("proposal_generator.", "roi_heads.box_predictor."))
           or re.search(r"(^|\.)res\d\.\d+\.(conv\d|shortcut)\.", k) for k in keys):
        return DETECTRON2
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return TORCHVISION_IMAGENET
    if all("." not in k for k in keys) and any(k.endswith(("_w", "_b", "_s")) for k in keys):
        return DETECTRON
    if any(".branch2a." in k or k.startswith(("rpn.head.", "roi_heads.predictor.", "backbone."))
           for k in keys):
        return OURS
    return None


# ---- the layers of our model ----------------------------------------------------------------
@dataclass
class _Layer:
    """A module that owns tensors: ``kind`` conv (conv / transposed conv / linear), frozen_bn,
    bn, gn or other; ``params``: its own state-dict names (weight, bias, running_mean ...)."""

    path: str
    module: nn.Module
    kind: str
    params: tuple


def _layer_kind(module):
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        return "conv"
    if isinstance(module, FrozenBatchNorm2d):
        return "frozen_bn"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.GroupNorm):
        return "gn"
    return "other"


def _layers(model):
    """Every tensor-owning module of ``model``; a shared module under each of its paths."""
    layers = []
    for path, module in model.named_modules(remove_duplicate=False):
        params = tuple(k for k in module.state_dict(keep_vars=True) if "." not in k)
        if params:
            layers.append(_Layer(path, module, _layer_kind(module), params))
    return layers


class _Layout:
    """Facts about the model that the name rules need beyond a layer's own path."""

    def __init__(self, model):
        self.model = model
        # 1-based number of each conv in a ``convs`` Sequential (and of the norm after it)
        self.conv_number = {}
        self.has_norm = {}
        for path, module in model.named_modules(remove_duplicate=False):
            if path.endswith("convs") and isinstance(module, nn.Sequential):
                number = 0
                for index, child in enumerate(module):
                    number += isinstance(child, nn.Conv2d)
                    if _layer_kind(child) != "other":
                        self.conv_number[f"{path}.{index}"] = number
                self.has_norm[path] = any(_layer_kind(c) in ("gn", "bn") for c in module)
        rpn = getattr(model, "rpn", None)
        names = list(getattr(rpn, "in_features", []))
        levels = [int(n[1:]) for n in names if re.fullmatch(r"p\d", n)]
        # FPN RPN blobs carry the finest level (conv_rpn_fpn2); a single-map RPN's do not
        self.rpn_min_level = min(levels) if levels and len(levels) == len(names) else None
        lateral = getattr(getattr(model, "backbone", None), "lateral_convs", {})
        self.fpn_index = {name: i for i, name in enumerate(sorted(lateral, key=lambda n: int(n[3:])))}

    def is_norm(self, path):
        return _layer_kind(self.model.get_submodule(path)) in ("frozen_bn", "bn", "gn")

    def detectron_name(self, path):
        """The Detectron name a Conv2dNorm / FC at ``path`` carries (for its norm at
        ``path`` + '.norm': the norm's name); None for layers without one."""
        owner_path = path[: -len(".norm")] if path.endswith(".norm") else path
        owner = self.model.get_submodule(owner_path)
        name = getattr(owner, "detectron_norm_name" if owner_path != path else "detectron_name", "")
        return name or None


# ---- name rules, one per format: our layer path -> candidate source prefixes ----------------
_RESNET_BLOCK = re.compile(r"^(?P<stage>res\d)\.(?P<block>\d+)\.(?P<conv>branch2[abc]|branch1)"
                           r"(?P<norm>\.norm)?$")


def _detectron_prefixes(path, layout):
    """Detectron blob prefixes (before _w / _b / _s)."""
    name = layout.detectron_name(path)
    if name:
        # the mask head's own res5 (v0up) is Detectron's '_[mask]_res5_*'
        return [("_[mask]_" + name) if path.startswith("mask_heads.head.res5.") else name]
    if path.startswith("rpn.head."):
        suffix = f"_fpn{layout.rpn_min_level}" if layout.rpn_min_level is not None else ""
        blob = {"conv": "conv_rpn", "cls_logits": "rpn_cls_logits",
                "bbox_pred": "rpn_bbox_pred"}[path.split(".")[-1]]
        return [blob + suffix]
    if path in ("roi_heads.box_head.fc6", "roi_heads.box_head.fc7"):
        return [path.split(".")[-1]]
    if path in ("roi_heads.predictor.cls_score", "roi_heads.predictor.bbox_pred"):
        return [path.split(".")[-1]]
    if path.startswith("roi_heads.box_head.convs."):
        return [f"head_conv{layout.conv_number[path]}" + ("_gn" if layout.is_norm(path) else "")]
    if path.startswith("mask_heads.head.convs."):
        # Detectron's GN mask head names its convs '_mask_fcn<n>', the plain one '_[mask]_fcn<n>'
        n = layout.conv_number[path]
        if layout.has_norm["mask_heads.head.convs"]:
            return [f"_mask_fcn{n}" + ("_gn" if layout.is_norm(path) else "")]
        return [f"_[mask]_fcn{n}"]
    if path == "mask_heads.head.upsample":
        return ["conv5_mask"]
    if path == "mask_heads.predictor.logits":
        return ["mask_fcn_logits"]
    if path.startswith("keypoint_heads.head.convs."):
        return [f"conv_fcn{layout.conv_number[path]}"]
    if path == "keypoint_heads.predictor.deconv":
        return ["kps_deconv"]
    if path == "keypoint_heads.predictor.score":
        # Detectron names the heatmaps 'kps_score_lowres' when UP_SCALE upsamples them
        upsampled = layout.model.keypoint_heads.predictor.upsample is not None
        return ["kps_score_lowres" if upsampled else "kps_score"]
    return []


def _resnet_body_and_rest(path):
    """(body-relative path, where the body is) for paths inside a ResNet body or res5 head."""
    for prefix, where, stage in (("backbone.bottom_up.", "body", ""), ("backbone.", "body", ""),
                                 ("roi_heads.box_head.", "res5_head", ""),
                                 ("mask_heads.shared_res5.", "res5_head", "res5."),
                                 ("mask_heads.head.res5.", "res5_head", "res5.")):
        if path.startswith(prefix):
            return stage + path[len(prefix):], where
    return None, None


def _torchvision_resnet_name(rest):
    """torchvision ResNet name of a body-relative path, e.g. res2.0.branch2a -> layer1.0.conv1."""
    if rest == "stem.conv1":
        return "conv1"
    if rest == "stem.conv1.norm":
        return "bn1"
    match = _RESNET_BLOCK.match(rest)
    if not match:
        return None
    layer = f"layer{int(match['stage'][3]) - 1}.{match['block']}"
    if match["conv"] == "branch1":
        return f"{layer}.downsample.{1 if match['norm'] else 0}"
    index = "abc".index(match["conv"][-1]) + 1
    return f"{layer}.{'bn' if match['norm'] else 'conv'}{index}"


def _torchvision_prefixes(path, layout, imagenet=False):
    rest, where = _resnet_body_and_rest(path)
    if rest is not None:
        name = _torchvision_resnet_name(rest)
        if name is not None:
            if imagenet:
                return [name]
            return ["backbone.body." + name] if where == "body" else []
    if imagenet:
        return []
    match = re.fullmatch(r"backbone\.(lateral|output)_convs\.(res\d)", path)
    if match:
        blocks = "inner_blocks" if match[1] == "lateral" else "layer_blocks"
        index = layout.fpn_index[match[2]]
        return [f"backbone.fpn.{blocks}.{index}.0", f"backbone.fpn.{blocks}.{index}"]
    if path == "rpn.head.conv":
        return ["rpn.head.conv.0.0", "rpn.head.conv"]
    if path.startswith("rpn.head."):
        return [path]
    if path in ("roi_heads.box_head.fc6", "roi_heads.box_head.fc7"):
        return [path]
    if path.startswith("roi_heads.predictor."):
        return ["roi_heads.box_predictor." + path.split(".")[-1]]
    if path.startswith("mask_heads.head.convs."):
        n = layout.conv_number[path]
        return [f"roi_heads.mask_head.{n - 1}.0", f"roi_heads.mask_head.mask_fcn{n}"]
    if path == "mask_heads.head.upsample":
        return ["roi_heads.mask_predictor.conv5_mask"]
    if path == "mask_heads.predictor.logits":
        return ["roi_heads.mask_predictor.mask_fcn_logits"]
    if path.startswith("keypoint_heads.head.convs."):
        return [f"roi_heads.keypoint_head.{2 * (layout.conv_number[path] - 1)}"]
    if path == "keypoint_heads.predictor.score":
        return ["roi_heads.keypoint_predictor.kps_score_lowres"]
    match = re.fullmatch(r"backbone\.extra_convs\.(p\d)", path)
    if match:
        return [f"backbone.fpn.extra_blocks.{match[1]}"]
    match = re.fullmatch(r"head\.(cls|box)_tower\.(\d+)", path)
    if match:  # RetinaNet towers, in Conv2dNormActivation blocks or (older) conv/ReLU pairs
        tower, index = ("classification_head" if match[1] == "cls" else "regression_head"), int(match[2])
        return [f"head.{tower}.conv.{index}.0", f"head.{tower}.conv.{2 * index}"]
    if path in ("head.cls_pred", "head.box_pred"):
        return ["head.classification_head.cls_logits" if path == "head.cls_pred"
                else "head.regression_head.bbox_reg"]
    return []


def _detectron2_resnet_name(rest):
    """detectron2 ResNet name of a body-relative path, e.g. res2.0.branch2a -> res2.0.conv1."""
    if rest.startswith("stem."):
        return rest
    match = _RESNET_BLOCK.match(rest)
    if not match:
        return None
    conv = "shortcut" if match["conv"] == "branch1" else "conv" + str("abc".index(match["conv"][-1]) + 1)
    return f"{match['stage']}.{match['block']}.{conv}" + (match["norm"] or "")


def _detectron2_prefixes(path, layout):
    rest, where = _resnet_body_and_rest(path)
    if rest is not None:
        name = _detectron2_resnet_name(rest)
        if name is not None:
            if where == "body":
                # FPN models keep the ResNet under backbone.bottom_up, C4 models under backbone
                return ["backbone.bottom_up." + name, "backbone." + name]
            return ["roi_heads." + name]
    match = re.fullmatch(r"backbone\.(lateral|output)_convs\.res(\d)(\.norm)?", path)
    if match:
        return [f"backbone.fpn_{match[1]}{match[2]}" + (match[3] or "")]
    match = re.fullmatch(r"backbone\.extra_convs\.(p\d)", path)
    if match:
        return [f"backbone.top_block.{match[1]}"]
    if path.startswith("rpn.head."):
        return ["proposal_generator.rpn_head." + {"conv": "conv", "cls_logits": "objectness_logits",
                                                  "bbox_pred": "anchor_deltas"}[path.split(".")[-1]]]
    if path in ("roi_heads.box_head.fc6", "roi_heads.box_head.fc7"):
        has_convs = any(p.startswith("roi_heads.box_head.convs.") for p in layout.conv_number)
        number = int(path[-1]) - 5 if not has_convs else 1
        return [f"roi_heads.box_head.fc{number}"]
    if path.startswith("roi_heads.box_head.convs."):
        norm = ".norm" if layout.is_norm(path) else ""
        return [f"roi_heads.box_head.conv{layout.conv_number[path]}{norm}"]
    if path.startswith("roi_heads.predictor."):
        return ["roi_heads.box_predictor." + path.split(".")[-1]]
    if path.startswith("mask_heads.head.convs."):
        norm = ".norm" if layout.is_norm(path) else ""
        return [f"roi_heads.mask_head.mask_fcn{layout.conv_number[path]}{norm}"]
    if path == "mask_heads.head.upsample":
        return ["roi_heads.mask_head.deconv"]
    if path == "mask_heads.predictor.logits":
        return ["roi_heads.mask_head.predictor"]
    if path.startswith("keypoint_heads.head.convs."):
        return [f"roi_heads.keypoint_head.conv_fcn{layout.conv_number[path]}"]
    if path == "keypoint_heads.predictor.score":
        return ["roi_heads.keypoint_head.score_lowres"]
    match = re.fullmatch(r"head\.(cls|box)_tower\.(\d+)(\.norm)?", path)
    if match:  # RetinaNet towers: conv, ReLU or (with a norm) conv, norm, ReLU per layer
        subnet, index = f"head.{'cls' if match[1] == 'cls' else 'bbox'}_subnet", int(match[2])
        if match[3]:
            return [f"{subnet}.{3 * index + 1}"]
        with_norm = getattr(layout.model.get_submodule(path), "norm", None) is not None
        return [f"{subnet}.{3 * index if with_norm else 2 * index}"]
    if path in ("head.cls_pred", "head.box_pred"):
        return ["head.cls_score" if path == "head.cls_pred" else "head.bbox_pred"]
    return []


def _own_prefixes(path, layout):
    return [path]


_RULES = {
    DETECTRON: _detectron_prefixes,
    DETECTRON2: _detectron2_prefixes,
    TORCHVISION: _torchvision_prefixes,
    TORCHVISION_IMAGENET: lambda path, layout: _torchvision_prefixes(path, layout, imagenet=True),
    OURS: _own_prefixes,
}


def _gather(fmt, layer, prefix, tensors):
    """{our param: (tensor, file name)} of one layer under the file prefix ``prefix``; params
    the file lacks are left out. BatchNorm statistics are folded into a frozen BN."""
    if layer.kind == "frozen_bn" and fmt != DETECTRON and f"{prefix}.running_var" in tensors:
        mean, var = tensors[f"{prefix}.running_mean"], tensors[f"{prefix}.running_var"]
        gamma = tensors.get(f"{prefix}.weight", torch.ones_like(mean))
        beta = tensors.get(f"{prefix}.bias", torch.zeros_like(mean))
        scale = gamma * torch.rsqrt(var + layer.module.eps)
        folded = f"{prefix}.* (BatchNorm folded)"
        return {"weight": (scale, folded), "bias": (beta - mean * scale, folded)}
    if layer.kind == "gn" and f"{prefix}.running_var" in tensors:
        return {}  # a BatchNorm in the file is no GroupNorm: leave it unused, the GN missing
    if fmt == DETECTRON:
        suffix = {"weight": "_w", "bias": "_b"} if layer.kind == "conv" else {"weight": "_s", "bias": "_b"}
        names = {p: prefix + suffix[p] for p in layer.params if p in suffix}
    else:
        names = {p: f"{prefix}.{p}" for p in layer.params}
    return {p: (tensors[n], n) for p, n in names.items() if n in tensors}


def _used_names(values, prefix):
    """File names behind gathered values (all four statistics for a folded BatchNorm)."""
    used = set()
    for _, name in values.values():
        if name.endswith("(BatchNorm folded)"):
            used.update(f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var"))
        else:
            used.add(name)
    return used


def _detectron2_class_layout(path, tensor, model_rows, layout):
    """detectron2 -> Detectron class layout: background first in cls_score, and zero rows for
    the background in bbox_pred and in a class-specific mask predictor (``model_rows``: the
    model's row count, which tells class-specific from class-agnostic)."""
    if path == "roi_heads.predictor.cls_score":
        return torch.cat([tensor[-1:], tensor[:-1]])
    rows = {"roi_heads.predictor.bbox_pred": 4, "mask_heads.predictor.logits": 1}.get(path)
    if rows and model_rows == len(tensor) + rows:
        return torch.cat([tensor.new_zeros((rows,) + tuple(tensor.shape[1:])), tensor])
    return tensor


def _torchvision_class_layout(path, tensor, model_rows, layout):
    """torchvision's RetinaNet scores a background class 0 per anchor that never trains (its
    labels are COCO category ids); Detectron's sigmoid RetinaNet has no such channel: drop it."""
    anchors = getattr(getattr(layout.model, "head", None), "num_anchors", 0)
    if path == "head.cls_pred" and anchors and len(tensor) == model_rows + anchors:
        grouped = tensor.view(anchors, len(tensor) // anchors, *tensor.shape[1:])
        return grouped[:, 1:].reshape(model_rows, *tensor.shape[1:])
    return tensor


_CLASS_LAYOUT = {DETECTRON2: _detectron2_class_layout, TORCHVISION: _torchvision_class_layout}


# ---- matching a file onto a model -----------------------------------------------------------
def match_weights(model, weights_file):
    """Rename ``weights_file`` onto ``model``: ({our key: tensor} of the right shapes, report).

    Nothing is loaded yet; the report lists what is missing, mis-shaped and unused.
    """
    fmt, tensors = weights_file.format, weights_file.tensors
    layout = _Layout(model)
    own = model.state_dict()
    report = ImportReport(weights_file.path, fmt, ignored=list(weights_file.ignored))
    state, used = {}, set()
    for layer in _layers(model):
        candidates = _RULES[fmt](layer.path, layout)
        if fmt == DETECTRON:
            # Detectron's rule for shared initialization: '_[mask]_x' falls back to 'x'
            candidates = candidates + [c.split("]_", 1)[1] for c in candidates if "]_" in c]
        values = {}
        for prefix in candidates:
            values = _gather(fmt, layer, prefix, tensors)
            if values:
                used |= _used_names(values, prefix)
                break
        for param in layer.params:
            key = f"{layer.path}.{param}" if layer.path else param
            if param not in values:
                if param != "num_batches_tracked":
                    report.missing.append(key)
                continue
            tensor, source = values[param]
            if fmt in _CLASS_LAYOUT:
                rows = own[key].shape[0] if own[key].dim() else 0
                tensor = _CLASS_LAYOUT[fmt](layer.path, tensor, rows, layout)
            if tuple(tensor.shape) != tuple(own[key].shape):
                entry = (key, source, tuple(tensor.shape), tuple(own[key].shape))
                dataset_dependent = key.startswith(DATASET_DEPENDENT_PREFIXES)
                (report.skipped if dataset_dependent else report.mis_shaped).append(entry)
                continue
            state[key] = tensor.to(own[key].dtype)
            report.loaded.append(key)
    report.unused = sorted(set(tensors) - used)
    return state, report


def load_weights(model, weights, for_training=False, cache_dir="/tmp/detectron-download-cache"):
    """Load ``weights`` (a path or URL of any supported format; URLs are cached in
    ``cache_dir``, the config's DOWNLOAD_CACHE) into ``model``; returns the ImportReport.

    for_training: TRAIN.WEIGHTS semantics (missing layers keep their initialization,
    dataset-dependent predictors of another shape are skipped) instead of inference's, where
    both are errors. See the module docstring.
    """
    try:
        path = cached_path(weights, cache_dir)
    except DownloadError as e:
        raise CheckpointError(str(e)) from None
    weights_file = read_weights_file(path)
    model = getattr(model, "module", model)
    state, report = match_weights(model, weights_file)
    if str(weights) != str(path):
        report.source = f"{weights} ({path})"
    if for_training:
        errors = _describe(report, "mis_shaped")
        warnings = _describe(report, "skipped") + _describe(report, "missing")
    else:
        errors = _describe(report, "missing") + _describe(report, "mis_shaped") + _describe(
            report, "skipped")
        warnings = []
    # our own checkpoints fit their config exactly, so extra tensors mean another model
    (errors if report.format == OURS and not for_training else warnings).extend(
        _describe(report, "unused") + _switch_hints(report))
    head = f"weights '{report.source}' ({report.format} format)"
    if errors:
        raise CheckpointError(f"{head} do not fit the model:\n" + "\n".join(errors + warnings))
    model.load_state_dict(state, strict=False)
    if warnings:
        logger.warning("%s: loaded %d tensors;\n%s", head, len(report.loaded), "\n".join(warnings))
    else:
        logger.info("%s: loaded all %d tensors", head, len(report.loaded))
    if report.ignored:
        logger.debug("%s: entries that are not weights (optimizer state, BatchNorm counters, "
                     "pixel normalization), ignored: %s", head, _listing(report.ignored))
    return report


_DESCRIPTIONS = {
    "missing": ("missing from the file", "kept their initialization"),
    "mis_shaped": ("of another shape in the file (file vs model)", None),
    "skipped": ("dataset-dependent predictors of another shape (file vs model), e.g. another "
                "class count", "not loaded; they start from their initialization for fine-tuning"),
    "unused": ("in the file but taken by no layer of the model", "not loaded"),
}


# Unused file tensors that a convention switch of the config would take: (pattern, hint).
_SWITCH_HINTS = (
    (re.compile(r"head\.(cls|bbox)_subnet\.\d+\.bias"),
     "the unused *_subnet biases are detectron2's RetinaNet tower conv biases before GroupNorm: "
     "set RETINANET.TOWER_CONV_BIAS True (configs/detectron2/ says which switches its models need)"),
)


def _switch_hints(report):
    """Lines naming the config switch that would take some of the report's unused tensors."""
    return [f"  {hint}" for pattern, hint in _SWITCH_HINTS
            if any(pattern.fullmatch(name) for name in report.unused)]


def _describe(report, kind):
    """Lines describing one kind of problem, [] if the report has none of it."""
    entries = getattr(report, kind)
    if not entries:
        return []
    title, outcome = _DESCRIPTIONS[kind]
    if kind in ("mis_shaped", "skipped"):
        names = [f"{key} <- {source}: {list(src)} vs {list(dst)}" for key, source, src, dst in entries]
    else:
        names = list(entries)
    suffix = f" ({outcome})" if outcome else ""
    return [f"  {len(entries)} {title}{suffix}: {_listing(names)}"]


def _listing(names):
    shown = ", ".join(names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")
