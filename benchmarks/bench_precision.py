"""MODEL.BODY_PRECISION: one training step of a shapes baseline with its body in bfloat16
against the same model with a float32 body (the reference), alternating in one process.

The batch is 4 shapes_train images as the loader prepares them (256 px scale); the model
is built from the config with TRAIN.WEIGHTS emptied (random weights cost the same).
Run: .venv/bin/python benchmarks/bench_body_precision.py [--config FILE]
"""
import itertools

import torch

from detectron_lib.config import load_config
from detectron_lib.data.loader import build_train_loader
from detectron_lib.modeling.meta_arch import build_model
from timing import bench_args, compare

DEFAULT_CONFIG = "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"


def training_step(config, precision, batch):
    cfg = load_config(config, ["MODEL.BODY_PRECISION", precision, "TRAIN.WEIGHTS", "",
                               "DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)
    inputs = batch.model_inputs("cpu")

    def step():
        losses = model(**inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def main():
    args = bench_args(__doc__, repeats=7, extra=lambda parser: parser.add_argument(
        "--config", default=DEFAULT_CONFIG))
    cfg = load_config(args.config, ["TRAIN.WEIGHTS", ""])
    (batch,) = itertools.islice(build_train_loader(cfg), 1)
    compare(f"train step, {cfg.MODEL.CONV_BODY}, bfloat16 body",
            training_step(args.config, "bfloat16", batch),
            training_step(args.config, "float32", batch),
            repeats=args.repeats, warmup=2, reference="float32")


if __name__ == "__main__":
    main()
