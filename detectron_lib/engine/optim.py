"""SGD with Detectron's parameter groups and learning-rate policies.

Parameter groups follow Detectron's solver: biases get twice the learning rate and no weight
decay (SOLVER.BIAS_DOUBLE_LR-style behaviour of its Caffe2 update ops), GroupNorm's affine
parameters get SOLVER.WEIGHT_DECAY_GN, everything else SOLVER.WEIGHT_DECAY.

Detectron's Caffe2 momentum update (v = m v + lr g) needed "momentum correction" when the LR
changed (SOLVER.SCALE_MOMENTUM). torch.optim.SGD keeps lr outside the buffer (v = m v + g,
w -= lr v), which is what that correction emulates, so no correction is applied here.
"""
import bisect
import math

import torch
from torch import nn

from detectron_lib.config.names import LR_POLICIES
from detectron_lib.errors import ConfigError


def lr_at_iter(it, *, policy, base_lr, gamma, step_size, steps, lrs, max_iter,
               warm_up_iters, warm_up_factor, warm_up_method):
    """Learning rate at iteration ``it`` (0-based), warm-up included (Detectron's lr_policy)."""
    lr = _policy_lr(it, policy, base_lr, gamma, step_size, steps, lrs, max_iter)
    if it < warm_up_iters:
        if warm_up_method == "constant":
            factor = warm_up_factor
        elif warm_up_method == "linear":
            alpha = it / warm_up_iters
            factor = warm_up_factor * (1 - alpha) + alpha
        else:
            raise ConfigError(f"SOLVER.WARM_UP_METHOD: unknown method '{warm_up_method}' "
                              "(use 'linear' or 'constant')")
        lr *= factor
    return lr


def _step_index(it, steps):
    """Index of the last step start <= it (steps[0] is 0 in Detectron's configs)."""
    return max(bisect.bisect_right(list(steps), it) - 1, 0)


def _policy_lr(it, policy, base_lr, gamma, step_size, steps, lrs, max_iter):
    if policy == "step":
        return base_lr * gamma ** (it // step_size)
    if policy == "steps_with_decay":
        return base_lr * gamma ** _step_index(it, steps)
    if policy == "steps_with_lrs":
        return lrs[_step_index(it, steps)]
    if policy == "steps_with_relative_lrs":
        return base_lr * lrs[_step_index(it, steps)]
    if policy == "cosine_decay":
        return 0.5 * base_lr * (math.cos(math.pi * it / max_iter) + 1.0)
    if policy == "exp_decay":
        return base_lr * math.exp(math.log(gamma) * it / max_iter)
    raise ConfigError(f"SOLVER.LR_POLICY: unknown policy '{policy}' (one of {', '.join(LR_POLICIES)})")


def lr_schedule_from_cfg(cfg):
    """``it -> lr`` for the config's SOLVER section."""
    s = cfg.SOLVER
    if s.LR_POLICY in ("steps_with_decay", "steps_with_lrs", "steps_with_relative_lrs") and not s.STEPS:
        raise ConfigError(f"SOLVER.LR_POLICY '{s.LR_POLICY}' needs SOLVER.STEPS")
    if s.LR_POLICY in ("steps_with_lrs", "steps_with_relative_lrs") and len(s.LRS) != len(s.STEPS):
        raise ConfigError("SOLVER.LRS must have one entry per SOLVER.STEPS entry")
    kwargs = dict(policy=s.LR_POLICY, base_lr=s.BASE_LR, gamma=s.GAMMA, step_size=s.STEP_SIZE,
                  steps=tuple(s.STEPS), lrs=tuple(s.LRS), max_iter=s.MAX_ITER,
                  warm_up_iters=s.WARM_UP_ITERS, warm_up_factor=s.WARM_UP_FACTOR,
                  warm_up_method=s.WARM_UP_METHOD)
    return lambda it: lr_at_iter(it, **kwargs)


def parameter_groups(model, weight_decay, weight_decay_gn, bias_lr_factor=2.0, bias_weight_decay=0.0):
    """Split trainable parameters into Detectron's groups. Each group carries ``lr_factor``."""
    norm_types = (nn.GroupNorm,)
    groups = {"weights": [], "biases": [], "norm": []}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, norm_types):
                groups["norm"].append(param)
            elif name == "bias":
                groups["biases"].append(param)
            else:
                groups["weights"].append(param)
    spec = {
        "weights": dict(weight_decay=weight_decay, lr_factor=1.0),
        "biases": dict(weight_decay=bias_weight_decay, lr_factor=bias_lr_factor),
        "norm": dict(weight_decay=weight_decay_gn, lr_factor=1.0),
    }
    return [dict(params=params, name=key, **spec[key]) for key, params in groups.items() if params]


# Devices with PyTorch's fused SGD kernel: one pass over each parameter, its gradient and its
# momentum buffer instead of one per arithmetic op. The update is the same up to float rounding
# (a few weights a few ulps apart), enough for a chaotic training run to end elsewhere.
FUSED_SGD_DEVICES = frozenset(("cpu", "cuda"))


def sgd(groups, lr, momentum):
    """torch.optim.SGD over ``groups``, fused where every parameter's device supports it.

    On the CPU the fused step is 2-6x faster than the per-op loop (benchmarks/RESULTS.md);
    it matters most for VGG16's 120M-weight fc head, a fifth of whose training step it was.
    """
    devices = {param.device.type for group in groups for param in group["params"]}
    fused = bool(devices) and devices <= FUSED_SGD_DEVICES
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=fused)


def build_optimizer(cfg, model):
    """SGD over Detectron's parameter groups; the trainer sets lr every iteration."""
    s = cfg.SOLVER
    groups = parameter_groups(model, s.WEIGHT_DECAY, s.WEIGHT_DECAY_GN)
    return sgd(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)
