"""ONNX Runtime against our PyTorch path: the same exported detector, one image at a time.

A shapes baseline (default the Mask R-CNN R-18-FPN; --config another of configs/shapes/) with
seeded weights, float32, is exported with `detectron export`'s code; ONNX Runtime runs the
.onnx and our PyTorch model runs the .pth on the nine demo photos (shrunk to TEST.SCALE by
both: the whole call, image in, detections with pasted masks out), alternately in one process,
each with --threads threads. Prints the medians per image, their ratio, and the largest box
and score differences of the detections both find.
Run: .venv/bin/python benchmarks/bench_onnx.py
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from detectron_lib.config import load_config
from detectron_lib.data.transforms import image_tensor, read_image_bgr
from detectron_lib.engine.checkpoint import save_checkpoint
from detectron_lib.export.onnx import export_model
from detectron_lib.inference.engine import load_model_for_inference
from detectron_lib.inference.onnx_runtime import OnnxRuntimeDetector
from detectron_lib.modeling.meta_arch import build_model
from timing import bench_args

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO.parent / "shared" / "reference" / "demo_images"


def main():
    args = bench_args(__doc__, repeats=3, extra=lambda p: p.add_argument(
        "--config", default="e2e_mask_rcnn_R-18-FPN_1x", help="a config of configs/shapes/"))
    cfg = load_config(str(REPO / "configs" / "shapes" / f"{args.config}.yaml"), [
        "MODEL.BODY_PRECISION", "float32", "MODEL.HEAD_PRECISION", "float32", "TRAIN.WEIGHTS", ""])
    images = [image_tensor(read_image_bgr(p)) for p in sorted(DEMO_IMAGES.glob("*.jpg"))]
    if not images:
        sys.exit(f"no demo photos in {DEMO_IMAGES}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        weights = Path(tmp) / "model.pth"
        save_checkpoint(weights, build_model(cfg))
        model = load_model_for_inference(cfg, str(weights), torch.device("cpu"))
        runtime = OnnxRuntimeDetector(export_model(cfg, str(weights), Path(tmp) / "model.onnx"),
                                      threads=args.threads)
        times = {"pytorch": [], "onnxruntime": []}
        box_diff = score_diff = 0.0
        for image in images:
            for _ in range(args.repeats):
                for name, run in (("pytorch", model), ("onnxruntime", runtime)):
                    start = time.perf_counter()
                    with torch.no_grad():
                        (result,) = run([image])
                    times[name].append(time.perf_counter() - start)
                    if name == "pytorch":
                        expected = result
            if len(result) == len(expected):
                box_diff = max(box_diff, (result.boxes.tensor - expected.boxes.tensor).abs().max().item())
                score_diff = max(score_diff, (result.scores - expected.scores).abs().max().item())
    ours, theirs = (statistics.median(times[k]) for k in ("pytorch", "onnxruntime"))
    print(f"{args.config}, {len(images)} demo photos x {args.repeats}: PyTorch {ours:.3f} s/image, "
          f"ONNX Runtime {theirs:.3f} s/image, ONNX Runtime / PyTorch time x{theirs / ours:.2f}")
    print(f"max |box difference| {box_diff:.2e} px, max |score difference| {score_diff:.2e}")


if __name__ == "__main__":
    main()
