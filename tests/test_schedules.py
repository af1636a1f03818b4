"""LR schedules equal torch.optim.lr_scheduler's step by step (warmup included), in the engine too."""
from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as S

import nb_trainer as nbt
from nb_trainer.schedules import Schedule, plateau_patience

LR = 0.01


def torch_lrs(make, steps, optimizer="adam"):
    """lr (and momentum) at each step of a real optimizer driven by a torch scheduler."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = {"adam": lambda: torch.optim.Adam([p], lr=LR, betas=(0.9, 0.999)),
           "momentum": lambda: torch.optim.SGD([p], lr=LR, momentum=0.9),
           "sgd": lambda: torch.optim.SGD([p], lr=LR)}[optimizer]()
    sched = make(opt)
    lrs, moms = [], []
    for _ in range(steps):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        moms.append(g["betas"][0] if "betas" in g else g.get("momentum"))
        opt.step()
        sched.step()
    return lrs, moms


def ours(schedule, steps, warmup=0.0, optimizer="adam"):
    s = Schedule(nbt.TrainConfig(schedule=schedule, warmup=warmup, lr=LR, optimizer=optimizer), steps)
    return [LR * s.factor(t) for t in range(steps)], [s.momentum(t) for t in range(steps)]


def with_warmup(opt, w, main):
    if w == 0:
        return main(opt)
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=1 / (w + 1), end_factor=1.0, total_iters=w),
                                main(opt)], milestones=[w])


@pytest.mark.parametrize("steps", [40, 97])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 0.25])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "step"])
def test_schedule_with_warmup_equals_torch_at_every_step(schedule, warmup, steps):
    w = int(round(warmup * steps))
    n = steps - w
    main = {"constant": lambda o: S.ConstantLR(o, factor=1.0, total_iters=0),
            "cosine": lambda o: S.CosineAnnealingLR(o, T_max=n),
            "linear": lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=n),
            "step": lambda o: S.MultiStepLR(o, milestones=[int(0.5 * steps) - w, int(0.75 * steps) - w],
                                            gamma=0.1)}[schedule]
    want, _ = torch_lrs(lambda o: with_warmup(o, w, main), steps)
    got, _ = ours(schedule, steps, warmup)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
@pytest.mark.parametrize("warmup", [0.0, 0.2])
def test_onecycle_equals_torch_lr_and_momentum(optimizer, warmup):
    steps = 60
    cycle = optimizer != "sgd"   # plain SGD stays plain: no momentum is cycled into it
    want_lr, want_m = torch_lrs(lambda o: S.OneCycleLR(o, max_lr=LR, total_steps=steps,
                                                       pct_start=warmup or 0.3, cycle_momentum=cycle),
                                steps, optimizer)
    got_lr, got_m = ours("onecycle", steps, warmup, optimizer)
    assert got_lr == pytest.approx(want_lr, rel=1e-9)
    if cycle:
        assert got_m == pytest.approx(want_m, rel=1e-9)
    else:
        assert got_m == [None] * steps


def test_plateau_equals_reduce_lr_on_plateau_on_a_scripted_val_loss():
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.85, 0.85, 0.86, 0.86, 0.87, 0.8, 0.8, 0.8, 0.8]
    cfg = nbt.TrainConfig(schedule="plateau", lr=LR)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    ref = S.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=plateau_patience(cfg))
    s = Schedule(cfg, 10)
    for v in losses:
        ref.step(v)
        s.epoch_end(v)
        assert LR * s.factor(0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert s.plateau < 1  # it did drop on this sequence


def test_a_schedule_that_needs_the_run_length_is_refused_for_a_stream():
    with pytest.raises(ValueError, match="schedule='cosine'.*stream"):
        Schedule(nbt.TrainConfig(schedule="cosine"), None)
    Schedule(nbt.TrainConfig(schedule="plateau"), None)  # epoch-driven: fine
