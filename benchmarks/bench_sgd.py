"""The solver's SGD step (detectron_lib.engine.optim.sgd: PyTorch's fused kernel on CPU and
CUDA) against torch.optim.SGD's default per-op loop over the same Detectron parameter groups,
alternating in one process: the optimizer step alone, and a whole training step.

For each config the model is built with TRAIN.WEIGHTS emptied (random weights cost the same)
and trained on one batch of 4 shapes_train images as the loader prepares them.
Run: .venv/bin/python benchmarks/bench_sgd.py [--config FILE ...]
"""
import itertools

import torch

from detectron_lib.config import load_config
from detectron_lib.data.loader import build_train_loader
from detectron_lib.engine.optim import parameter_groups, sgd
from detectron_lib.modeling.meta_arch import build_model
from timing import bench_args, compare, sgd_iteration

DEFAULT_CONFIGS = (
    "configs/shapes/e2e_faster_rcnn_VGG16_1x.yaml",
    "configs/shapes/e2e_mask_rcnn_R-50-FPN_1x_gn.yaml",
    "configs/shapes/e2e_faster_rcnn_R-18-FPN_1x.yaml",
)


def solvers(cfg):
    """(model, batch inputs, fused solver, per-op solver) for ``cfg``: one model, both solvers
    over its parameters with their own momentum buffers."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    (batch,) = itertools.islice(build_train_loader(cfg), 1)
    s = cfg.SOLVER

    def groups():
        return parameter_groups(model, s.WEIGHT_DECAY, s.WEIGHT_DECAY_GN)
    ours = sgd(groups(), lr=1e-4, momentum=s.MOMENTUM)
    reference = torch.optim.SGD(groups(), lr=1e-4, momentum=s.MOMENTUM)
    return model, batch.model_inputs("cpu"), ours, reference


def main():
    def extra(parser):
        parser.add_argument("--config", nargs="+", default=list(DEFAULT_CONFIGS))

    args = bench_args(__doc__, repeats=7, extra=extra)
    for config in args.config:
        cfg = load_config(config, ["TRAIN.WEIGHTS", "", "DEVICE", "cpu"])
        model, inputs, ours, reference = solvers(cfg)
        sum(model(**inputs).values()).backward()   # gradients for the step-only timing
        weights = sum(p.numel() for g in ours.param_groups for p in g["params"])
        print(f"{config}: {weights / 1e6:.1f}M trained weights")
        compare("optimizer step", ours.step, reference.step, repeats=args.repeats,
                reference="per-op SGD")
        compare("training step", sgd_iteration(model, inputs, ours),
                sgd_iteration(model, inputs, reference), repeats=args.repeats,
                reference="per-op SGD")


if __name__ == "__main__":
    main()
