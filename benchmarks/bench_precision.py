"""MODEL.BODY_PRECISION / MODEL.HEAD_PRECISION: one training step of a shapes baseline with
the body (or the heads) in bfloat16 against the same model with them in float32 (the
reference), alternating in one process; the other key keeps the config's value.

The batch is 4 shapes_train images as the loader prepares them (256 px scale); the model
is built from the config with TRAIN.WEIGHTS emptied (random weights cost the same).
Run: .venv/bin/python benchmarks/bench_precision.py [--part body|heads] [--config FILE]
"""
import itertools

import torch

from detectron_lib.config import load_config
from detectron_lib.data.loader import build_train_loader
from detectron_lib.modeling.meta_arch import build_model
from timing import bench_args, compare, sgd_iteration

DEFAULT_CONFIG = "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml"
PRECISION_KEYS = {"body": "MODEL.BODY_PRECISION", "heads": "MODEL.HEAD_PRECISION"}


def training_step(config, key, precision, batch):
    cfg = load_config(config, [key, precision, "TRAIN.WEIGHTS", "", "DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9)
    return sgd_iteration(model, batch.model_inputs("cpu"), optimizer)


def main():
    def extra(parser):
        parser.add_argument("--config", default=DEFAULT_CONFIG)
        parser.add_argument("--part", choices=sorted(PRECISION_KEYS), default="body")

    args = bench_args(__doc__, repeats=7, extra=extra)
    key = PRECISION_KEYS[args.part]
    cfg = load_config(args.config, ["TRAIN.WEIGHTS", ""])
    (batch,) = itertools.islice(build_train_loader(cfg), 1)
    compare(f"train step, {args.config}, bfloat16 {args.part}",
            training_step(args.config, key, "bfloat16", batch),
            training_step(args.config, key, "float32", batch),
            repeats=args.repeats, warmup=2, reference="float32")


if __name__ == "__main__":
    main()
