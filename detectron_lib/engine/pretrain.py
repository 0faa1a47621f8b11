"""Backbone pretraining by object classification: the CPU zoo's stand-in for ImageNet.

Detectron's baselines fine-tune bodies pretrained on ImageNet classification (R-50.pkl,
R-50-GN.pkl, VGG16.pkl, ...). With no ImageNet here, ``pretrain_backbone`` trains the
config's ResNet conv5 or VGG16 conv5 body to classify square crops of the training set's
objects, plus background crops, and writes the body in the format of Detectron's ImageNet
weights: a pickle of {"blobs": {blob name: array}}, blob names as Detectron's
(``res2_0_branch2a_w``, ``res2_0_branch2a_gn_s``, ``conv1_w``, ``conv5_3_w``, ...; the
classifier is ``pred_w`` / ``pred_b``). TRAIN.WEIGHTS loads it as it would load Detectron's
files, into C4 and FPN models alike.

Crops are cut from the normalized image with RoIAlign (bilinear, zero = pixel mean outside
the image), so a batch is one op per image. Everything random is drawn from (RNG_SEED,
iteration): a run is reproducible.
"""
import json
import logging
import pickle
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from detectron_lib import ops
from detectron_lib.config.names import CONV_BODY
from detectron_lib.data.catalog import register_datasets_from_cfg
from detectron_lib.data.loader import load_datasets
from detectron_lib.data.transforms import image_tensor, read_image_bgr
from detectron_lib.engine.optim import lr_at_iter, parameter_groups, set_lr, sgd
from detectron_lib.engine.distributed import resolve_device
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.backbone import body_features, detectron_blob_names
from detectron_lib.modeling.backbone.build import resnet_body_from_config, resnet_depth
from detectron_lib.modeling.image_io import normalize_image
from detectron_lib.utils.io import atomic_write
from detectron_lib.utils.progress import Progress

logger = logging.getLogger(__name__)

# A background crop overlaps no object by more than this IoU, nor holds more than this
# fraction of any object's box (a large crop around a small object is not background).
BACKGROUND_MAX_IOU = 0.3
BACKGROUND_MAX_OBJECT_FRACTION = 0.3
# Object crops: square side = longer box side x U(range), centre jittered by this fraction.
OBJECT_CONTEXT_RANGE = (1.2, 1.6)
OBJECT_CENTER_JITTER = 0.1


class BodyClassifier(nn.Module):
    """Body -> global average pool of its ``feature`` map (res5, conv5_3) -> linear classifier."""

    def __init__(self, body, feature, num_classes, precision="float32"):
        super().__init__()
        self.body = body
        self.feature = feature
        self.precision = precision
        self.pred = nn.Linear(body.out_channels[feature], num_classes)
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)

    def forward(self, crops):
        """crops: (N, 3, S, S) normalized -> (N, num_classes) logits."""
        features = body_features(self.body, crops, self.precision)[self.feature]
        return self.pred(features.mean(dim=(2, 3)))


def build_body_classifier(cfg, num_classes):
    """The classifier on MODEL.CONV_BODY's body: a ResNet / ResNeXt name (conv4, conv5 or FPN)
    pretrains the conv5 body it is made of; a VGG16 conv5 body pretrains as it is."""
    conv_body = cfg.MODEL.CONV_BODY
    depth = resnet_depth(conv_body)
    if depth is not None:
        body, feature = resnet_body_from_config(cfg, depth, 4, freeze_at=0), "res5"
    elif conv_body.startswith("VGG16."):  # VGG16.add_VGG16[_gn]_conv5_body
        body, feature = CONV_BODY.get(conv_body)(cfg, freeze_at=0), "conv5_3"
    else:
        raise ConfigError(f"MODEL.CONV_BODY '{conv_body}' is neither a ResNet nor a VGG16 body; "
                          "classification pretraining supports ResNet / ResNeXt and VGG16 bodies")
    return BodyClassifier(body, feature, num_classes, cfg.MODEL.BODY_PRECISION)


def _square_boxes(centers, sides):
    half = sides[:, None] / 2
    return torch.cat([centers - half, centers + half], dim=1)


def _covered_fraction(objects, crops):
    """(C, O): the fraction of each object box's area inside each crop box."""
    top_left = torch.maximum(crops[:, None, :2], objects[None, :, :2])
    bottom_right = torch.minimum(crops[:, None, 2:], objects[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area = (objects[:, 2:] - objects[:, :2]).prod(dim=1).clamp(min=1e-6)
    return inter / area


def sample_crop_boxes(record, num_crops, background_fraction, generator):
    """Crop boxes (num_crops, 4) x1y1x2y2 in ``record``'s image pixels and their labels
    (num_crops,): object crops labeled with their class, background crops labeled 0."""
    boxes = torch.from_numpy(record["boxes"]).float()
    classes = torch.from_numpy(record["classes"])
    height, width = record["height"], record["width"]
    num_background = int(sum(torch.rand(num_crops, generator=generator) < background_fraction))
    if len(boxes) == 0:
        num_background = num_crops
    num_objects = num_crops - num_background

    pick = torch.randint(len(boxes), (num_objects,), generator=generator) if num_objects else \
        torch.zeros(0, dtype=torch.long)
    picked = boxes[pick]
    sizes = (picked[:, 2:] - picked[:, :2]).amax(dim=1).clamp(min=1.0)
    low, high = OBJECT_CONTEXT_RANGE
    sides = sizes * (low + (high - low) * torch.rand(num_objects, generator=generator))
    jitter = (torch.rand(num_objects, 2, generator=generator) * 2 - 1) * OBJECT_CENTER_JITTER
    centers = (picked[:, :2] + picked[:, 2:]) / 2 + jitter * sizes[:, None]
    object_boxes = _square_boxes(centers, sides)

    # Background: random squares, kept if they overlap no object much; candidates are drawn
    # in surplus and, if too few survive, the rest of the batch becomes object crops.
    candidates = 8 * num_background
    sides = 16 + (min(height, width) - 16) * torch.rand(candidates, generator=generator)
    centers = torch.rand(candidates, 2, generator=generator) * torch.tensor([width, height])
    background = _square_boxes(centers, sides)
    if len(boxes):
        clean = (ops.box_iou(background, boxes).amax(dim=1) < BACKGROUND_MAX_IOU) & (
            _covered_fraction(boxes, background).amax(dim=1) < BACKGROUND_MAX_OBJECT_FRACTION)
        background = background[clean]
    background = background[:num_background]
    crop_boxes = torch.cat([object_boxes, background])
    labels = torch.cat([classes[pick], torch.zeros(len(background), dtype=torch.long)])
    return crop_boxes, labels


def crop_batch(images, crop_boxes, crop_size):
    """Crops resized to (crop_size, crop_size) by RoIAlign: images [(3, H, W)], crop_boxes
    [(K_i, 4)] per image -> (sum K_i, 3, S, S)."""
    return torch.cat([
        ops.roi_align(image[None], [boxes], crop_size, spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)
        for image, boxes in zip(images, crop_boxes)
    ])


class CropSampler:
    """Batches of (crops (N, 3, S, S), labels (N,)) drawn from ``records``; batch ``it`` is a
    pure function of (seed, it). Crops are flipped horizontally with probability 0.5."""

    def __init__(self, records, pixel_means, pixel_stds, pixel_order, crop_size, crops_per_image,
                 images_per_batch, background_fraction, seed):
        self.records = records
        self.normalize = dict(pixel_means=pixel_means, pixel_stds=pixel_stds,
                              channel_order=pixel_order)
        self.crop_size = crop_size
        self.crops_per_image = crops_per_image
        self.images_per_batch = images_per_batch
        self.background_fraction = background_fraction
        self.seed = seed

    def batch(self, it):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + it)
        chosen = torch.randint(len(self.records), (self.images_per_batch,), generator=generator)
        images, boxes, labels = [], [], []
        for index in chosen.tolist():
            record = self.records[index]
            images.append(normalize_image(image_tensor(read_image_bgr(record["file_name"])),
                                          **self.normalize))
            b, l = sample_crop_boxes(record, self.crops_per_image, self.background_fraction, generator)
            boxes.append(b)
            labels.append(l)
        crops = crop_batch(images, boxes, self.crop_size)
        flip = torch.rand(len(crops), generator=generator) < 0.5
        crops[flip] = crops[flip].flip(-1)
        return crops, torch.cat(labels)


def _sampler(cfg, dataset_names, seed):
    records, categories, _ = load_datasets(dataset_names, cfg.DATA_ROOT or None)
    p = cfg.PRETRAIN
    return CropSampler(records, cfg.PIXEL_MEANS, cfg.PIXEL_STDS, cfg.PIXEL_ORDER, p.CROP_SIZE,
                       p.CROPS_PER_IMAGE, p.IMAGES_PER_BATCH, p.BACKGROUND_FRACTION, seed), categories


@torch.no_grad()
def evaluate_accuracy(model, sampler, num_batches, device="cpu"):
    """Top-1 accuracy of ``model`` on ``num_batches`` batches of ``sampler``."""
    model.eval()
    correct = total = 0
    for it in range(num_batches):
        crops, labels = sampler.batch(it)
        correct += int((model(crops.to(device)).argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    model.train()
    return correct / max(total, 1)


def body_blobs(model):
    """{Detectron blob name: float32 array} of the body and the classifier (``pred_*``).

    Trainable BatchNorm is folded into the scale and shift of Detectron's AffineChannel
    (``_bn_s = gamma / sqrt(var + eps)``, ``_bn_b = beta - mean * _bn_s``), as Detectron's
    ImageNet weights store it; GroupNorm keeps its own gamma and beta.
    """
    names = detectron_blob_names(model.body)
    state = {k: v.detach().float().cpu() for k, v in model.body.state_dict().items()}
    for path, layer in model.body.named_modules():
        if isinstance(layer, nn.BatchNorm2d):
            scale = state[f"{path}.weight"] / torch.sqrt(state[f"{path}.running_var"] + layer.eps)
            state[f"{path}.bias"] = state[f"{path}.bias"] - state[f"{path}.running_mean"] * scale
            state[f"{path}.weight"] = scale
    blobs = {blob: state[key].numpy() for key, blob in names.items()}
    blobs["pred_w"] = model.pred.weight.detach().float().cpu().numpy()
    blobs["pred_b"] = model.pred.bias.detach().float().cpu().numpy()
    return blobs


def pretrain_backbone(cfg, output_file, log_period=20, on_records=None):
    """Train the body of ``cfg`` (PRETRAIN.*) and write its weights to ``output_file`` (.pkl).

    Returns a dict of the run's summary (iterations, time, validation accuracy), also
    written next to the weights as ``<output_file>.json``. Every ``log_period`` iterations
    the loss, lr and time go to the console and to ``on_records([record])`` (a live tracker).
    """
    output_file = Path(output_file)
    p = cfg.PRETRAIN
    datasets = tuple(p.DATASETS) or tuple(cfg.TRAIN.DATASETS)
    register_datasets_from_cfg(cfg)
    torch.manual_seed(cfg.RNG_SEED)
    sampler, categories = _sampler(cfg, datasets, cfg.RNG_SEED)
    device = resolve_device(cfg.DEVICE)
    model = build_body_classifier(cfg, len(categories.names) + 1).to(device)
    optimizer = sgd(parameter_groups(model, p.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_GN),
                    lr=p.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)
    schedule = dict(policy="cosine_decay", base_lr=p.BASE_LR, gamma=0.0, step_size=0, steps=(),
                    lrs=(), max_iter=p.MAX_ITER, warm_up_iters=p.WARM_UP_ITERS,
                    warm_up_factor=cfg.SOLVER.WARM_UP_FACTOR, warm_up_method="linear")
    logger.info("pretraining %s on crops of %s for %d iterations", cfg.MODEL.CONV_BODY,
                ", ".join(datasets), p.MAX_ITER)
    model.train()
    start = time.perf_counter()
    progress = Progress(p.MAX_ITER, device_type=device.type)
    for it in range(p.MAX_ITER):
        step_start = time.perf_counter()
        crops, labels = sampler.batch(it)
        lr = lr_at_iter(it, **schedule)
        set_lr(optimizer, lr)
        loss = F.cross_entropy(model(crops.to(device)), labels.to(device))
        if not torch.isfinite(loss):
            raise ConfigError(f"pretraining loss became {loss.item()} at iteration {it}; lower "
                              "PRETRAIN.BASE_LR or lengthen PRETRAIN.WARM_UP_ITERS")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.step()
        if (it + 1) % log_period == 0 or it == 0 or it + 1 == p.MAX_ITER:
            record = {"iter": it, "loss": loss.item(), "lr": lr,
                      "time": time.perf_counter() - step_start}
            logger.info("%s", progress.line("pretrain iter", loss=record["loss"], lr=lr,
                                            time=record["time"]))
            if on_records:
                on_records([record])
    train_seconds = time.perf_counter() - start

    summary = {"conv_body": cfg.MODEL.CONV_BODY, "iterations": p.MAX_ITER,
               "train_time_s": train_seconds, "train_datasets": list(datasets),
               "categories": ["__background__", *categories.names]}
    if p.VAL_DATASETS:
        val_sampler, _ = _sampler(cfg, tuple(p.VAL_DATASETS), cfg.RNG_SEED + 1)
        summary["val_accuracy"] = evaluate_accuracy(model, val_sampler, p.VAL_BATCHES, device)
        summary["val_datasets"] = list(p.VAL_DATASETS)
        logger.info("pretrained body: %.3f top-1 accuracy on crops of %s",
                    summary["val_accuracy"], ", ".join(p.VAL_DATASETS))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output_file.with_name(output_file.name + ".json")) as f:
        json.dump(summary, f, indent=1)
    with atomic_write(output_file, "wb") as f:
        pickle.dump({"blobs": body_blobs(model), "pretrain": summary}, f, protocol=4)
    return summary
