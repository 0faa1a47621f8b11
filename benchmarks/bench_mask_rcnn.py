"""Whole-model speed against torchvision on CPU: Mask R-CNN R-50-FPN inference on the nine
demo images, one training iteration of it at 1 and 2 images, and one training iteration of
the shapes baseline (Faster R-CNN R-18-GN-FPN) against torchvision's equivalent; peak memory
of each side measured in a process of its own.

Both sides get the same weights (torchvision's, seeded, imported into ours through
configs/torchvision/maskrcnn_resnet50_fpn.yaml; BN statistics calibrated on a photo as in
tests/test_torchvision_parity.py) and the same pixels: the demo images are resized once
(PIL bilinear) to Detectron's TEST.SCALE 800 / MAX_SIZE 1333 size rounded to multiples of 64
(torchvision places anchors at multiples of padded size // feature size, so other sizes
shift its anchors off ours), and neither model resizes them again. Timings alternate ours /
torchvision in one process; detections are paired as the parity test pairs them.

Run (each mode a few minutes on 2 cores):
    .venv/bin/python benchmarks/bench_mask_rcnn.py --mode inference
    .venv/bin/python benchmarks/bench_mask_rcnn.py --mode training --images 1 2
    .venv/bin/python benchmarks/bench_mask_rcnn.py --mode shapes
Options: --threads (2), --repeats, --no-memory (skip the peak-memory child processes),
--profile (torch.profiler table of ours), --precision (MODEL.BODY_PRECISION and HEAD_PRECISION
of ours; several, e.g. `--precision float32 bfloat16`, are timed side by side, each against
torchvision's float32). The first line gives the CPU (lscpu's model, its AVX-512 / bf16 / AMX
flags).
"""
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from detectron_lib.config import load_config  # noqa: E402
from detectron_lib.data.transforms import compute_resize_scale, image_tensor  # noqa: E402
from detectron_lib.engine.checkpoint_formats import load_weights  # noqa: E402
from detectron_lib.engine.optim import build_optimizer  # noqa: E402
from detectron_lib.inference.predictor import Predictor  # noqa: E402
from detectron_lib.modeling.backbone.precision import native_cpu_bfloat16  # noqa: E402
from detectron_lib.modeling.meta_arch import build_model  # noqa: E402
from detectron_lib.structures.boxes import Boxes  # noqa: E402
from detectron_lib.structures.instances import Instances  # noqa: E402
from detectron_lib.structures.masks import polygons_to_bitmap  # noqa: E402
from timing import alternating_medians, bench_args  # noqa: E402
from torchvision_reference import (  # noqa: E402
    match_detections,
    rgb_to_tensor,
    torchvision_model,
)

DEMO_IMAGES = REPO.parent / "shared" / "reference" / "demo_images"
MASK_RCNN_CONFIG = REPO / "configs" / "torchvision" / "maskrcnn_resnet50_fpn.yaml"
SHAPES_CONFIG = REPO / "configs" / "shapes" / "e2e_faster_rcnn_R-18-FPN_1x.yaml"
ANCHOR_STRIDE = 64  # the coarsest FPN stride (P6)
TRAIN_SIZE = (800, 1200)
SHAPES_SIZE = (256, 384)
SHAPES_IMAGES = 4  # TRAIN.IMS_PER_BATCH of the shapes baseline
PRECISIONS = ("float32", "bfloat16", "auto")  # --precision: ours' body and heads


# ---- inputs ---------------------------------------------------------------------------------
def demo_files():
    return sorted(DEMO_IMAGES.glob("*.jpg"))


def inference_rgb(path, scale=800, max_size=1333):
    """The image at Detectron's TEST.SCALE / MAX_SIZE size, each side rounded to the nearest
    multiple of 64 (halves up): (H, W, 3) uint8 RGB."""
    image = Image.open(path).convert("RGB")
    s = compute_resize_scale(image.height, image.width, scale, max_size)
    height, width = (int(math.floor(side * s / ANCHOR_STRIDE + 0.5)) * ANCHOR_STRIDE
                     for side in (image.height, image.width))
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def training_rgb(path, size):
    image = Image.open(path).convert("RGB")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))


def random_targets(height, width, count, num_classes, seed):
    """``count`` boxes with elliptic polygon masks inside them: [(box (4,), label, polygon)]."""
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(count):
        w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        polygon = np.stack([x1 + w / 2 * (1 + np.cos(angles)), y1 + h / 2 * (1 + np.sin(angles))],
                           axis=1).ravel().tolist()
        targets.append(((x1, y1, x1 + w, y1 + h), int(rng.integers(1, num_classes)), polygon))
    return targets


def ours_targets(targets, height, width, with_masks):
    # Both benchmarked configs use continuous boxes (MODEL.BBOX_LEGACY_PLUS_ONE False).
    boxes = Boxes(torch.tensor([t[0] for t in targets], dtype=torch.float32))
    classes = torch.tensor([t[1] for t in targets], dtype=torch.int64)
    fields = dict(boxes=boxes, classes=classes)
    if with_masks:
        fields["segms"] = [[t[2]] for t in targets]
    return Instances((height, width), **fields)


def torchvision_targets(targets, height, width, with_masks):
    out = {"boxes": torch.tensor([t[0] for t in targets], dtype=torch.float32),
           "labels": torch.tensor([t[1] for t in targets], dtype=torch.int64)}
    if with_masks:
        out["masks"] = torch.from_numpy(np.stack(
            [polygons_to_bitmap([t[2]], height, width) for t in targets]))
    return out


# ---- models ---------------------------------------------------------------------------------
def torchvision_mask_rcnn(min_size, max_size, **kwargs):
    """torchvision's maskrcnn_resnet50_fpn as it builds around pretrained weights: frozen BN,
    stem and res2 frozen (trainable_backbone_layers=3), 91 classes."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    return MaskRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size, **kwargs)


def torchvision_shapes_model():
    """torchvision's counterpart of configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml: ResNet-18
    with GroupNorm (32 groups) in the body and the 64-channel FPN, stem and res2 frozen,
    anchors 16..256 on P2..P6, a 512-d 2-fc box head, 7 classes, 256 / 384 px images, 1000 /
    500 RPN proposals and 128 RoIs per image in training."""
    def gn(channels):
        return nn.GroupNorm(32, channels)

    body = torchvision.models.resnet18(weights=None, norm_layer=gn)
    for name, param in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            param.requires_grad_(False)
    backbone = BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in range(1, 5)},
                               [64, 128, 256, 512], 64, extra_blocks=LastLevelMaxPool(),
                               norm_layer=gn)
    anchors = AnchorGenerator(tuple((16 * 2 ** k,) for k in range(5)), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(
        backbone, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        box_head=TwoMLPHead(64 * 7 * 7, 512), box_predictor=FastRCNNPredictor(512, 7),
        min_size=SHAPES_SIZE[0], max_size=SHAPES_SIZE[1], rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500, box_batch_size_per_image=128)


def ours_config(path, opts, precision):
    return load_config(path, list(opts) + ["TRAIN.WEIGHTS", "", "DEVICE", "cpu",
                                           "MODEL.BODY_PRECISION", precision,
                                           "MODEL.HEAD_PRECISION", precision])


def inference_config(height, max_side, precision):
    return ours_config(MASK_RCNN_CONFIG, [
        "TEST.SCALE", str(height), "TEST.MAX_SIZE", str(max_side), "TEST.SCORE_THRESH", "0.0",
        "TEST.DETECTIONS_PER_IM", "100"], precision)


def test_sizes(images):
    """(short, long): TEST.SCALE / MAX_SIZE (torchvision's min_size / max_size) under which
    neither model resizes any of ``images``."""
    return (max(min(i.shape[:2]) for i in images), max(max(i.shape[:2]) for i in images))


# ---- sides: each builds its model and returns a step function -------------------------------
def ours_side(precision):
    return f"ours {precision}"


def inference_sides(images, weights, precisions):
    """{side: builder of image_rgb -> detections} for Mask R-CNN inference at the images' size:
    ours in each of ``precisions``, torchvision."""
    height, max_side = test_sizes(images)

    def ours(precision):
        predictor = Predictor(inference_config(height, max_side, precision), weights)
        return lambda rgb: predictor(np.ascontiguousarray(rgb[:, :, ::-1]))

    def theirs():
        model = torchvision_mask_rcnn(height, max_side, box_score_thresh=0.0,
                                      box_detections_per_img=100)
        model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
        model.eval()

        def run(rgb):
            with torch.no_grad():
                return model([rgb_to_tensor(rgb)])[0]
        return run
    return {**{ours_side(p): partial(ours, p) for p in precisions}, "torchvision": theirs}


def training_sides(num_images, weights, precisions, shapes=False):
    """{side: builder of a function running one SGD iteration} on ``num_images`` images: ours
    in each of ``precisions``, torchvision."""
    size = SHAPES_SIZE if shapes else TRAIN_SIZE
    num_classes = 7 if shapes else 91
    files = demo_files()
    rgbs = [training_rgb(files[i % len(files)], size) for i in range(num_images)]
    targets = [random_targets(*size, 4, num_classes, seed=i) for i in range(num_images)]

    def ours(precision):
        if shapes:
            cfg = ours_config(SHAPES_CONFIG, [], precision)
        else:
            cfg = ours_config(MASK_RCNN_CONFIG, [], precision)
        torch.manual_seed(0)
        model = build_model(cfg)
        if weights:
            load_weights(model, weights, for_training=True)
        model.train()
        optimizer = build_optimizer(cfg, model)
        gts = [ours_targets(t, *size, with_masks=not shapes) for t in targets]

        def step():
            images = [image_tensor(rgb[:, :, ::-1]) for rgb in rgbs]
            losses = model(images, [1.0] * num_images, gts, seeds=list(range(num_images)))
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
        return step

    def theirs():
        torch.manual_seed(0)
        if shapes:
            model = torchvision_shapes_model()
        else:
            model = torchvision_mask_rcnn(*TRAIN_SIZE[:1], 1333)
            if weights:
                model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                    lr=1e-4, momentum=0.9, weight_decay=1e-4)
        gts = [torchvision_targets(t, *size, with_masks=not shapes) for t in targets]

        def step():
            losses = model([rgb_to_tensor(rgb) for rgb in rgbs], gts)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
        return step
    return {**{ours_side(p): partial(ours, p) for p in precisions}, "torchvision": theirs}


# ---- peak memory: one side alone in a child process -----------------------------------------
def child_peak_rss(argv):
    """Run this script with ``argv`` in a child process; its peak resident memory in GiB.

    The child reports its own high-water mark (VmHWM): the rusage of a forked child would
    include the pages of this (larger) parent it started as."""
    out = subprocess.run([sys.executable, __file__] + argv, check=True, capture_output=True,
                         text=True).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 2 ** 20  # kB


def run_child(args):
    """The --child entry: build one side and run it twice (warm-up + measured)."""
    if args.mode == "inference":
        images = [inference_rgb(p) for p in demo_files()[:2]]
        run = inference_sides(images, args.weights, args.precision)[args.child]()
        for rgb in images:
            run(rgb)
    else:
        step = training_sides(args.images[0], args.weights, args.precision,
                              shapes=args.mode == "shapes")[args.child]()
        step()
        step()
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(line for line in status if line.startswith("VmHWM:")), flush=True)


def memory_row(args, mode, weights, precision, images=None):
    """Peak resident memory (GiB) of ours in ``precision`` and of torchvision, each alone."""
    common = ["--mode", mode, "--threads", str(args.threads), "--precision", precision]
    if weights:
        common += ["--weights", str(weights)]
    if images is not None:
        common += ["--images", str(images)]
    return {side: child_peak_rss(common + ["--child", child])
            for side, child in (("ours", ours_side(precision)), ("torchvision", "torchvision"))}


# ---- reporting ------------------------------------------------------------------------------
def print_row(name, ours, theirs, memory=None, unit="s"):
    line = (f"{name:<40} ours {ours:7.2f} {unit}   torchvision {theirs:7.2f} {unit}   "
            f"speed-up x{theirs / ours:5.2f}")
    if memory:
        line += f"   peak RSS ours {memory['ours']:.2f} GiB, torchvision {memory['torchvision']:.2f} GiB"
    print(line, flush=True)


def profile(fn, rows=25):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def agreement(expected, mine):
    """(agreeing detections, all of torchvision's, max score difference, mask IoUs) of ours
    against torchvision's on one image, paired as the parity test pairs them."""
    order, close = match_detections(expected, mine)
    pairs = order[close]
    if not len(pairs):
        return 0, len(close), 0.0, torch.zeros(0)
    score_error = float((mine.scores[pairs] - expected["scores"][close]).abs().max())
    theirs_masks = expected["masks"][close, 0] > 0.5
    ours_masks = mine.masks[pairs]
    inter = (theirs_masks & ours_masks).flatten(1).sum(1).float()
    union = (theirs_masks | ours_masks).flatten(1).sum(1).float().clamp(min=1)
    return int(close.sum()), len(close), score_error, inter / union


def bench_inference(args, workdir):
    files = demo_files()
    images = [inference_rgb(p) for p in files]
    print("inference inputs (H x W): " + ", ".join(f"{i.shape[0]}x{i.shape[1]}" for i in images))
    height, max_side = test_sizes(images)
    reference, _ = torchvision_model("maskrcnn_resnet50_fpn", images[0], min_size=height,
                                     max_size=max_side)
    weights = workdir / "maskrcnn_resnet50_fpn.pth"
    torch.save(reference.state_dict(), weights)
    del reference
    runs = {name: build() for name, build in
            inference_sides(images, weights, args.precision).items()}
    for run in runs.values():
        run(images[0])  # warm-up
    if args.profile:
        profile(lambda: runs[ours_side(args.precision[0])](images[1]))
    times = {name: [] for name in runs}
    agreements = {precision: [] for precision in args.precision}  # one tuple per image
    for rgb, path in zip(images, files):
        outputs = {}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                outputs[name] = run(rgb)
                times[name].append(time.perf_counter() - start)
        line = []
        for precision, per_image in agreements.items():
            mine = outputs[ours_side(precision)]
            per_image.append(agreement(outputs["torchvision"], mine))
            matched, total = per_image[-1][:2]
            line.append(f"ours {precision} {times[ours_side(precision)][-1]:.2f} s "
                        f"({matched}/{total} agree, {len(mine)} detections)")
        print(f"  {path.name}: torchvision {times['torchvision'][-1]:.2f} s, " + ", ".join(line),
              flush=True)
    theirs = statistics.median(times["torchvision"])
    for precision, per_image in agreements.items():
        memory = None if args.no_memory else memory_row(args, "inference", weights, precision)
        print_row(f"Mask R-CNN R-50-FPN inference ({precision}), s/image",
                  statistics.median(times[ours_side(precision)]), theirs, memory)
        matched, total, score_errors, ious = zip(*per_image)
        matched, total, score_error = sum(matched), sum(total), max(score_errors)
        ious = torch.cat(ious)
        masks = (f"{int((ious > 0.99).sum())}/{len(ious)} (mean IoU {ious.mean():.4f}, "
                 f"min {ious.min():.4f})" if len(ious) else "none")
        print(f"  detections agreeing (same label, box within 0.01 px): {matched}/{total}; "
              f"max score difference {score_error:.2e}; masks of agreeing detections with "
              f"IoU > 0.99: {masks}", flush=True)


def bench_training(args, workdir, shapes=False):
    weights = None
    if not shapes:
        torch.manual_seed(0)
        weights = workdir / "maskrcnn_train.pth"
        torch.save(torchvision_mask_rcnn(800, 1333).state_dict(), weights)
    counts = [SHAPES_IMAGES] if shapes else args.images
    for count in counts:
        sides = training_sides(count, weights, args.precision, shapes=shapes)
        steps = {name: build() for name, build in sides.items()}
        if args.profile:
            first = steps[ours_side(args.precision[0])]
            first()
            profile(first)
        medians = dict(zip(steps, alternating_medians(tuple(steps.values()), args.repeats)))
        del steps
        name = (f"shapes R-18-FPN training, {count} x {SHAPES_SIZE[0]}x{SHAPES_SIZE[1]}" if shapes
                else f"Mask R-CNN training, {count} x {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}")
        for precision in args.precision:
            memory = None if args.no_memory else memory_row(
                args, "shapes" if shapes else "training", weights, precision, count)
            print_row(f"{name} ({precision}), s/iter", medians[ours_side(precision)],
                      medians["torchvision"], memory)


def main():
    def options(parser):
        parser.add_argument("--mode", choices=("inference", "training", "shapes", "all"),
                            default="all")
        parser.add_argument("--images", type=int, nargs="+", default=[1, 2])
        parser.add_argument("--precision", nargs="+", default=["float32"], choices=PRECISIONS,
                            help="MODEL.BODY_PRECISION and HEAD_PRECISION of ours, each timed "
                                 "(float32 keeps detections identical)")
        parser.add_argument("--no-memory", action="store_true")
        parser.add_argument("--profile", action="store_true")
        parser.add_argument("--child", choices=[ours_side(p) for p in PRECISIONS] + ["torchvision"],
                            help=argparse_hidden)
        parser.add_argument("--weights", help=argparse_hidden)

    argparse_hidden = "internal: peak-memory child process"
    args = bench_args(__doc__, repeats=1, extra=options)
    if args.child:
        run_child(args)
        return
    print(f"load average {os.getloadavg()[0]:.2f}, precision of ours {' '.join(args.precision)} "
          f"('auto' picks {'bfloat16' if native_cpu_bfloat16() else 'float32'} here)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.mode in ("inference", "all"):
            bench_inference(args, workdir)
        if args.mode in ("training", "all"):
            bench_training(args, workdir)
        if args.mode in ("shapes", "all"):
            bench_training(args, workdir, shapes=True)
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
