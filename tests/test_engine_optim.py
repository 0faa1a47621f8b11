"""Detectron's LR policies and warm-up, hand-computed; parameter groups of the SGD solver."""
import math

import pytest
import torch
from torch import nn

from detectron_lib.config import get_default_cfg
from detectron_lib.engine.optim import (
    build_optimizer,
    lr_schedule_from_cfg,
    parameter_groups,
    set_lr,
)
from detectron_lib.errors import ConfigError


def schedule(**solver):
    cfg = get_default_cfg()
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return lr_schedule_from_cfg(cfg)


def test_steps_with_decay_and_linear_warmup():
    # 12_2017 1x schedule at BASE_LR 0.02: warm-up from 0.02/3 over 500 its, x0.1 at 60k and 80k.
    lr = schedule(LR_POLICY="steps_with_decay", BASE_LR=0.02, GAMMA=0.1, STEPS=[0, 60000, 80000],
                  MAX_ITER=90000, WARM_UP_ITERS=500, WARM_UP_FACTOR=1 / 3, WARM_UP_METHOD="linear")
    assert lr(0) == pytest.approx(0.02 / 3)
    # it 250: alpha 0.5, factor 1/3 * 0.5 + 0.5 = 2/3
    assert lr(250) == pytest.approx(0.02 * 2 / 3)
    assert lr(500) == pytest.approx(0.02)
    assert lr(59999) == pytest.approx(0.02)
    assert lr(60000) == pytest.approx(0.002)
    assert lr(80000) == pytest.approx(0.0002)


def test_constant_warmup_step_lrs_and_cosine():
    lr = schedule(LR_POLICY="step", BASE_LR=0.1, GAMMA=0.5, STEP_SIZE=100, WARM_UP_ITERS=10,
                  WARM_UP_FACTOR=0.1, WARM_UP_METHOD="constant")
    assert [lr(0), lr(9), lr(10), lr(150), lr(250)] == pytest.approx([0.01, 0.01, 0.1, 0.05, 0.025])
    lr = schedule(LR_POLICY="steps_with_lrs", STEPS=[0, 10, 20], LRS=[0.3, 0.2, 0.1], WARM_UP_ITERS=0)
    assert [lr(0), lr(10), lr(25)] == pytest.approx([0.3, 0.2, 0.1])
    lr = schedule(LR_POLICY="cosine_decay", BASE_LR=0.2, MAX_ITER=100, WARM_UP_ITERS=0)
    assert [lr(0), lr(50), lr(100)] == pytest.approx([0.2, 0.1, 0.0])
    lr = schedule(LR_POLICY="exp_decay", BASE_LR=1.0, GAMMA=0.01, MAX_ITER=100, WARM_UP_ITERS=0)
    assert lr(50) == pytest.approx(0.1)


def test_bad_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.LR_POLICY"):
        schedule(LR_POLICY="linear_decay", WARM_UP_ITERS=0)(0)
    with pytest.raises(ConfigError, match="SOLVER.STEPS"):
        schedule(LR_POLICY="steps_with_decay", STEPS=[])


def test_parameter_groups_follow_detectron():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    cfg = get_default_cfg()
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_GN = 0.0
    opt = build_optimizer(cfg, model)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["weights"]["params"]} == {id(model[2].weight)}
    assert {id(p) for p in groups["biases"]["params"]} == {id(model[0].bias), id(model[2].bias)}
    assert {id(p) for p in groups["norm"]["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert groups["weights"]["weight_decay"] == 1e-4 and groups["biases"]["weight_decay"] == 0.0
    set_lr(opt, 0.01)
    assert groups["biases"]["lr"] == pytest.approx(0.02) and groups["weights"]["lr"] == pytest.approx(0.01)


def test_fused_sgd_on_cpu_matches_the_per_op_loop():
    """The solver's fused step gives the weights of torch's reference SGD loop up to float
    rounding, with Detectron's groups (weight decay, double bias LR), a frozen parameter and
    one without a gradient."""
    def trained(fused, steps=5):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(),
                              nn.Linear(64, 2), nn.Linear(2, 2))
        model[0].weight.requires_grad_(False)
        cfg = get_default_cfg()
        cfg.SOLVER.WEIGHT_DECAY = 1e-2
        if fused:
            opt = build_optimizer(cfg, model)
            assert all(group["fused"] for group in opt.param_groups)
        else:
            groups = parameter_groups(model, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_GN)
            opt = torch.optim.SGD(groups, lr=0.0, momentum=cfg.SOLVER.MOMENTUM, foreach=False)
        inputs = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
        for it in range(steps):
            set_lr(opt, 0.01 / (it + 1))
            opt.zero_grad(set_to_none=True)
            model[:4](inputs).square().mean().backward()  # model[4] gets no gradient
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    fused, reference, initial = trained(True), trained(False), trained(True, steps=0)
    for p, q in zip(fused, reference):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    assert not all(torch.equal(p, q) for p, q in zip(fused, initial))


def test_resume_from_a_snapshot_of_another_layout_names_the_file(tmp_path):
    """A snapshot whose optimizer state has other parameters (e.g. written when frozen-BN
    scale and shift still trained) stops the resume with one error naming the file."""
    from detectron_lib.engine.checkpoint import (
        CheckpointError,
        load_latest_checkpoint,
        save_checkpoint,
    )
    from detectron_lib.engine.trainer import _resume

    cfg = get_default_cfg()
    cfg.TRAIN.AUTO_RESUME = True
    old = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    save_checkpoint(tmp_path / "model_iter9.pth", old, build_optimizer(cfg, old), iteration=9)
    new = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    new[1].requires_grad_(False)                       # fewer trainable parameters now
    path, state = load_latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*model_iter9\.pth.*AUTO_RESUME"):
        _resume(path, state, new, build_optimizer(cfg, new))
    assert _resume(path, state, old, build_optimizer(cfg, old)) == 10
