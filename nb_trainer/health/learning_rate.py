"""Rules on the step size: learning rate too high, too low, and an oscillating loss.

What is "too high" depends on the optimizer, the model and the data, so none
of these rules looks at the configured value: they judge what the run does
(the loss going up instead of down, the weights hardly moving, the loss
swinging) and only then say which value to try.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..tasks import main_metric
from .signals import (Context, Signals, arr, early_level, fmt, improvement, latest_epoch, latest_step, median,
                      recent_level, round_lr, train_losses)
from .warning import HealthWarning

# Too high (any of):
# - early rise: the first epoch's mean train loss is 1.5x the loss of the
#   first step (before any update); before the first epoch ends, the median
#   of the next 8 to 50 steps is. A healthy run's loss falls from its first
#   step; a few overshooting or unlucky small batches do not move a median of
#   8 (the mean weighs every batch, so it decides once there is one).
EARLY_RISE = 1.5
EARLY_STEPS = 8
# ... and when that first epoch (or early median) is HUGE_RISE x the start, the fix lowers the lr
# 100x instead of 10x (see lr_too_high)
HUGE_RISE = 1e3
# - blow-up: two or more steps with a loss 10x the larger of the initial loss
#   and the trivial baseline. No healthy batch is 10x worse than guessing.
BLOWUP = 10.0
# - slow divergence: the epoch train loss at 2x its best so far, two epochs
#   running, and by a quarter of the baseline (near convergence a loss of
#   0.02 doubling to 0.04 is noise, not divergence).
RISE_EPOCHS = 2.0
RISE_EPOCHS_ABS = 0.25
# - worse than guessing: over the epochs after the first (3 or more), the
#   median train loss is 1.15x the larger of the first step's loss and the
#   trivial baseline, and the epoch loss rose 10% or more from one epoch to the
#   next at least once. The model does worse than a constant prediction and
#   than its own untrained start, and it is moving: the steps undo what it
#   learns. Healthy runs measured at most 0.94x (360 runs); a model that learns
#   nothing (tiny lr, dead or saturated units) sits flat at 1.0-1.05x (a lucky
#   first batch can make that read higher; it does not make it rise); a GRU at
#   lr 3 with momentum sat at 1.19-2.3x without ever rising 1.5x in its first
#   epoch, a CNN at SGD lr 10 at 1.3x, bouncing 0.91-1.24.
WORSE_THAN_START = 1.15
WORSE_EPOCHS = 3
WORSE_RISE = 1.10
# A rise must also be worth noticing against the loss scale: 10% of the
# baseline (or of the initial loss when there is no baseline).
MIN_RISE = 0.1
# Too low: median update/weight ratio ||dW||/||W|| per step below 1e-4
# (TheDeepChecker: log10 < -4 is too slow; cs231n's rule of thumb is ~1e-3)
# and the loss moved less than 5% of its start. Once there are two epochs the
# move is measured between epoch means (first vs latest): single small batches
# differ by 10-20% (three batches of 32 read 1.19, 1.10, 0.86 on a regression
# whose epoch means were 1.005 and 1.003), which is more than the 5%.
LOW_RATIO = 1e-4
LOW_MOVED = 0.05
# The raise is at most this factor: SGD at lr 1e-6 on a CNN needs x1e5 to reach a healthy ratio (x1e4
# still moved it too little); MAX_RAISED_LR keeps it from overshooting.
LOW_MAX_FACTOR = 1e5
# The suggested lr scales the step to the update ratio of healthy runs
# (medians measured over 180 healthy MLP runs: Adam/AdamW/RMSprop 2e-3..1e-2,
# SGD 3e-3..9e-2; a step's ratio grows more slowly than the lr, hence the
# higher target for SGD).
TARGET_RATIO = 4e-3
TARGET_RATIO_SGD = 3e-2
# ... and the raised lr at most: plain SGD's usual 0.1, with momentum 0.9 the same effective step, 0.01 for
# the adaptive optimizers (their step is about the lr itself)
MAX_RAISED_LR = {"sgd": 0.1, "momentum": 0.03}
# Slow progress (a run that learns, too slowly to get anywhere in its epochs): an update ratio below
# the smallest a healthy run measured, and the loss still near the baseline (see slow_progress).
SLOW_RATIO = 1e-3
# Oscillation: in the last 12 epochs, at least 2 rises and 2 falls of half
# the series' level and of a fifth of the baseline (loss), or of 0.2
# (accuracy, R²), the big moves alternating 3 times. Epoch-to-epoch val-loss
# noise of a healthy run on a few hundred examples stays under ~40% of its
# level (measured on moons/sin/regression MLPs with SGD); near convergence
# the level is tiny, hence the floor relative to the baseline. AUTOTRAINER's
# 0.03 in accuracy fires on healthy runs with small val sets.
OSC_WINDOW = 12
OSC_LOSS_SWING = 0.5
OSC_LOSS_FLOOR = 0.2
OSC_METRIC_SWING = 0.20
OSC_MIN_MOVES = 2
OSC_BALANCE = 0.3  # (see _swings)
# ... or spikes: a loss that keeps jumping far above its own level and back, which
# the swing test misses once the level is low (the floor above is a fifth of the
# baseline). A spike: an epoch (after the first) at 3x the median of the epochs
# around it (3 either side: the level follows the trend of a falling loss), 2x the
# epoch before it (a jump, not a slow descent), and above that level by a tenth of
# the baseline; two separate spikes (consecutive spiking epochs are one) in the
# last 50 epochs. RMSprop at lr 0.03 on a regression: val loss ~0.02 spiking to
# 0.15-0.85 three or four times (R² 0.98 -> 0.46), 3.3-26x the level. Healthy runs
# (360 measured, Adam/RMSprop/SGD, small val sets) reach at most one such spike
# (an Adam bump) and otherwise 2.3x.
# Under-damped heavy ball (see heavy_ball_ringing): SGD momentum 0.99 on a full batch rings with a
# period of ~8 epochs for the whole run (val R² 0.83 -> 0.43 -> 0.91 -> 0.58 -> 0.89 ...), each epoch
# moving it less than the swing test's threshold; at momentum 0.9 the same run rings twice early and
# settles (healthy momentum runs measured at most 2 such cycles).
RING_MOMENTUM = 0.9
RING_MIN_EPOCHS = 20
RING_WINDOW = 100
RING_CYCLES = 3
RING_METRIC = 0.10
RING_LOSS_FLOOR = 0.10
RING_LEG_EPOCHS = 2
SPIKE_FACTOR = 3.0
SPIKE_JUMP = 2.0
SPIKE_ABS = 0.1
SPIKE_HALF_WIDTH = 3
SPIKE_EPOCHS = 50
SPIKE_MIN = 2


def lr_too_high(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """The loss goes up instead of down: early, in bursts 10x above the start, or epoch over epoch."""
    loss = arr(s.loss)
    loss = loss[np.isfinite(loss)]
    if len(loss) < 4:
        return None
    l0 = float(loss[0])
    if not l0 > 0:
        return None
    ref = ctx.baseline if ctx.baseline and ctx.baseline > 0 else l0
    # the first step's loss is one batch: a lucky one reads low, so a rise is measured from the
    # larger of it and the baseline (an untrained model scores about the baseline)
    start = max(l0, ref)
    seen = None
    k = int(min(50, max(EARLY_STEPS, ctx.steps_per_epoch or 20)))
    early = median(loss[1:k + 1])
    first_epoch = next((e.get("train_loss") for e in s.epochs if e.get("epoch") == 1), None)
    if first_epoch is not None and math.isfinite(first_epoch):
        # the first epoch's mean is the better evidence once there is one: it weighs every batch
        if first_epoch >= EARLY_RISE * start and first_epoch - start >= MIN_RISE * ref:
            seen = (f"the loss rose from {fmt(l0)} at the first step to a mean of {fmt(first_epoch)} over "
                    f"the first epoch")
    elif len(loss) > k and early >= EARLY_RISE * start and early - start >= MIN_RISE * ref:
        seen = (f"the loss rose from {fmt(l0)} at the first step to a median of {fmt(early)} over the next "
                f"{len(loss[1:k + 1])} steps")
    if seen is None:
        big = loss >= BLOWUP * max(l0, ref)
        if int(big.sum()) >= 2:
            seen = (f"{int(big.sum())} steps had a loss above {fmt(BLOWUP * max(l0, ref))} (peak {fmt(loss.max())}), "
                    f"against {fmt(l0)} at the first step")
    climbed = False
    if seen is None:
        # any two epochs in a row at 2x the best before them (the whole run: a rise that later
        # calms down was still a rise, whenever the rules happen to look)
        tl = [v for v in train_losses(s.epochs) if math.isfinite(v)]
        best = tl[0] if tl else float("nan")
        for i in range(1, len(tl) - 1):
            low = min(tl[i], tl[i + 1])
            if best > 0 and low >= RISE_EPOCHS * best and low - best >= RISE_EPOCHS_ABS * ref:
                seen = (f"the train loss climbed from its best {fmt(best)} to {fmt(tl[i])} and {fmt(tl[i + 1])} "
                        f"at epochs {i + 1}-{i + 2}")
                climbed = True
                break
            best = min(best, tl[i])
        later = tl[1:]
        if (seen is None and len(later) >= WORSE_EPOCHS and median(later) >= WORSE_THAN_START * start
                and any(b >= WORSE_RISE * a for a, b in zip(tl, tl[1:]))):
            seen = (f"after the first epoch the train loss stayed at a median of {fmt(median(later))} over "
                    f"{len(later)} epochs, going up and down, above both its start ({fmt(l0)}) and the "
                    f"{fmt(ref)} of a constant prediction")
    if seen is None:
        return None
    if climbed:
        ring = heavy_ball_ringing(s, ctx)
        if ring is not None:  # the climb is one of the heavy ball's swings: damp it, the lr is not the fault
            return HealthWarning(
                code="lr_too_high", severity="warning",
                message=f"{seen} (lr {fmt(ctx.lr)}, {ctx.optimizer} {fmt(ctx.momentum)}): one of the swings of an "
                        f"under-damped heavy ball (see loss_oscillation)",
                suggestion=ring.suggestion, fix=dict(ring.fix), step=latest_step(s), epoch=latest_epoch(s))
    # how far the loss went says how far the lr is from a stable one: a first epoch 1e3x (or more)
    # above the start took a step 100x too large (Adam at lr 1 on digits: 2.3 -> 5e3, fine at 0.01
    # and still rising at 0.1; RMSprop at 0.3 on friedman: 1.1 -> 3e9, fine at 0.003 and rising at 0.03)
    peak = first_epoch if first_epoch is not None and math.isfinite(first_epoch) else early
    peak = peak if math.isfinite(peak) else 0.0
    factor = 100.0 if peak >= HUGE_RISE * start else 10.0
    lr = round_lr(ctx.lr / factor)
    return HealthWarning(
        code="lr_too_high", severity="warning",
        message=f"{seen} (lr {fmt(ctx.lr)}, {ctx.optimizer}): the steps overshoot",
        suggestion=f"lower the learning rate to {fmt(lr)}" + (
            f" (÷ 100: a loss {fmt(peak / start)}x its start is far beyond what ÷ 10 settles)" if factor > 10 else ""),
        fix={"lr": lr}, step=latest_step(s), epoch=latest_epoch(s))


def update_ratio(s: Signals) -> Optional[float]:
    """Median over probes of the median ||dW||/||W|| of the weight matrices; None without probes.

    Matrices that did not move at all (exactly 0: all-zero weights, no gradient
    through dead units) say nothing about the step size and are left out; the
    monitor does not judge the lr when vanishing gradients or dead ReLUs explain
    the stillness."""
    per_probe = []
    for p in s.probes:
        moved = [v for v in (p.get("update_ratio") or {}).values() if v > 0 and math.isfinite(v)]
        if moved:
            per_probe.append(median(moved))
    return median(per_probe) if per_probe else None


def lr_too_low(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """The weights hardly move (update/weight ratio < 1e-4) and the loss barely moves."""
    tl = [v for v in train_losses(s.epochs[-1:]) if math.isfinite(v)]
    first = s.epochs[0].get("train_loss") if s.epochs else None
    if len(s.epochs) >= 2 and tl and first is not None and math.isfinite(first):
        start, now = first, tl[-1]
    elif len(s.loss) >= 30:
        start, now = early_level(s.loss), recent_level(s.loss)
    else:
        return None
    moved = improvement(start, now)
    if not (moved < LOW_MOVED):
        return None
    if ctx.baseline and now < 0.3 * ctx.baseline:
        return None  # already good: a small step is fine-tuning, not a fault
    r = update_ratio(s)  # after the cheap loss checks: it reads every probe
    if r is None or r >= LOW_RATIO:
        return None
    lr = _raised_lr(ctx, r, 10.0, LOW_MAX_FACTOR)
    if lr <= ctx.lr:
        return None
    return HealthWarning(
        code="lr_too_low", severity="warning",
        message=(f"each step changes the weights by {fmt(r)} of their size (median ||ΔW||/||W||; healthy runs "
                 f"move 1e-3 to 1e-1) and the loss moved {max(moved, 0):.1%} ({fmt(start)} → {fmt(now)}) by epoch "
                 f"{latest_epoch(s)} (lr {fmt(ctx.lr)}, {ctx.optimizer})"),
        suggestion=f"raise the learning rate to {fmt(lr)}",
        fix={"lr": lr}, step=latest_step(s), epoch=latest_epoch(s))


def _raised_lr(ctx: Context, ratio: float, low: float, high: float) -> float:
    """The lr that brings the update ratio to a healthy run's, the factor kept in [low, high] and the lr at
    most MAX_RAISED_LR of the optimizer (the ratio does not grow in proportion to the lr all the way: SGD at
    lr 1e-3 on digits moved 2.5e-5 a step, and the lr 1.0 that the proportion asks for swings; 0.1 trains)."""
    plain = ctx.optimizer in ("sgd", "momentum")
    factor = min(high, max(low, (TARGET_RATIO_SGD if plain else TARGET_RATIO) / max(ratio, 1e-12)))
    return float(f"{min(ctx.lr * factor, MAX_RAISED_LR.get(ctx.optimizer, 1e-2)):.1g}")


def slow_progress(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """At the end of a run: the loss still near a constant prediction's, but the run is learning
    (the val metric still rising, or the val loss falling at every epoch of the last third) and the
    weights move less than a healthy run's: the steps are too small for the epochs given.

    What underfitting would call "stopped falling" (SGD at lr 1e-3 on digits: the val loss 2.308 ->
    2.295 in 15 epochs while the val accuracy climbs 0.10 -> 0.18) is a run that needs a larger lr."""
    from .fit import UNDERFIT_LEVEL, metric_rise
    base = ctx.baseline
    n = len(s.epochs)
    if not base or base <= 0 or n < 5:
        return None
    tr = [e.get("train_loss") for e in s.epochs]
    va = [e.get("val_loss") for e in s.epochs]
    if any(v is None or not math.isfinite(v) for v in tr + va):
        return None
    if min(tr[-2:]) < UNDERFIT_LEVEL * base or min(va[-2:]) < UNDERFIT_LEVEL * base:
        return None  # already learnt something: slow is fine
    third = max(2, n // 3)
    rise = metric_rise(s, ctx, third)
    falling = all(b < a for a, b in zip(va[-third - 1:], va[-third:]))
    if rise is None and not falling:
        return None
    r = update_ratio(s)
    if r is None or r >= SLOW_RATIO:
        return None  # the weights move as much as a healthy run's: the problem is hard, not the step small
    lr = _raised_lr(ctx, r, 3.0, 100.0)
    if lr <= ctx.lr:
        return None
    from .fit import _metric_name
    trend = (f"the {_metric_name(ctx)} still rising ({fmt(rise[0])} → {fmt(rise[1])} between the last two "
             f"stretches of {third} epochs)" if rise else f"the val loss still falling at every one of the last "
             f"{third} epochs ({fmt(va[-third - 1])} → {fmt(va[-1])})")
    return HealthWarning(
        code="lr_too_low", severity="warning",
        message=(f"after {n} epochs the loss is {fmt(min(va[-2:]))}, {min(va[-2:]) / base:.0%} of a constant "
                 f"prediction's {fmt(base)}, with {trend}: it is learning, slowly; each step changes the weights by "
                 f"{fmt(r)} of their size (healthy runs move 1e-3 to 1e-1) (lr {fmt(ctx.lr)}, {ctx.optimizer})"),
        suggestion=f"raise the learning rate to {fmt(lr)} (or train for more epochs)",
        fix={"lr": lr}, step=latest_step(s), epoch=latest_epoch(s))


def _swings(x: list, threshold: float, better: int = -1) -> tuple[int, int, int]:
    """(big rises, big falls, alternations between consecutive big moves) of a series.

    A series that mostly improves is a trend with noise, not a swing: the big moves against the
    improvement (``better``: -1 for a loss, +1 for accuracy/R²) must add up to at least OSC_BALANCE
    of those with it (val R² -83, -22, -14, -16.5, -11.5, -13.7, -6.5, -5 is a run recovering from a
    bad start: +83 up against 4.7 down). A series that swings while it worsens stays a swing."""
    big = [b - a for a, b in zip(x, x[1:]) if abs(b - a) >= threshold]
    ups = sum(1 for d in big if d > 0)
    up_sum, down_sum = sum(d for d in big if d > 0), -sum(d for d in big if d < 0)
    with_, against = (up_sum, down_sum) if better > 0 else (down_sum, up_sum)
    if against < OSC_BALANCE * with_:
        return 0, 0, 0
    flips = sum(1 for a, b in zip(big, big[1:]) if (a > 0) != (b > 0))
    return ups, len(big) - ups, flips


def loss_oscillation(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """The val loss, train loss or val metric swings up and down by large amounts."""
    recent = s.epochs[-OSC_WINDOW:]
    if len(recent) < 5:
        return None
    key = "val_r2" if ctx.task == "regression" else "val_accuracy"
    series = []
    for label, k, is_loss in (("val loss", "val_loss", True), ("train loss", "train_loss", True),
                              (key.replace("_", " "), key, False)):
        x = [e.get(k) for e in recent]
        if all(v is not None and math.isfinite(v) for v in x):
            series.append((label, x, is_loss))
    for label, x, is_loss in series:
        level = median(x)
        if is_loss and not level > 0:
            continue
        if not is_loss and level < -1:
            continue  # R² far below 0 (an MSE twice the variance and more): swings of 0.2 say nothing there
        floor = OSC_LOSS_FLOOR * ctx.baseline if ctx.baseline and ctx.baseline > 0 else 0.0
        threshold = max(OSC_LOSS_SWING * level, floor) if is_loss else OSC_METRIC_SWING
        ups, downs, flips = _swings(x, threshold, -1 if is_loss else 1)
        if ups >= OSC_MIN_MOVES and downs >= OSC_MIN_MOVES and flips >= 3:
            return _oscillation(label, x, ups, downs, threshold, is_loss, s, ctx)
    spiking = _spiking(s, ctx) if ctx.baseline and ctx.baseline > 0 else None
    return spiking if spiking is not None else heavy_ball_ringing(s, ctx)


def zigzag(x: list, threshold: float) -> list:
    """The legs of a series between its turning points, each a move of ``threshold`` or more:
    ``[(start index, end index, change)]``, alternating up and down. Moves smaller than the
    threshold are noise inside a leg."""
    legs: list = []
    if not x:
        return legs
    lo = hi = 0  # before the first leg: the extremes so far, either can be where it starts
    pivot, ext, trend = 0, 0, 0
    for i in range(1, len(x)):
        if trend == 0:
            lo = i if x[i] < x[lo] else lo
            hi = i if x[i] > x[hi] else hi
            if x[i] - x[lo] >= threshold:
                pivot, ext, trend = lo, i, 1
            elif x[hi] - x[i] >= threshold:
                pivot, ext, trend = hi, i, -1
        elif (x[i] - x[ext]) * trend > 0:
            ext = i
        elif abs(x[ext] - x[i]) >= threshold:
            legs.append((pivot, ext, x[ext] - x[pivot]))
            pivot, ext, trend = ext, i, -trend
    if trend and abs(x[ext] - x[pivot]) >= threshold:
        legs.append((pivot, ext, x[ext] - x[pivot]))
    return legs


def heavy_ball_ringing(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """SGD with heavy momentum, under-damped: the val loss (or metric) rises and falls every few epochs,
    cycle after cycle. Each epoch moves it a little, so the epoch-to-epoch swing test misses it; the
    turning points show it: RING_CYCLES legs up and as many down, each RING_METRIC of accuracy/R² (or
    half the loss's level and RING_LOSS_FLOOR of the baseline), lasting RING_LEG_EPOCHS or more on
    average (a slow swing, not epoch-to-epoch noise), over the last RING_WINDOW epochs."""
    if ctx.optimizer != "momentum" or ctx.momentum < RING_MOMENTUM or len(s.epochs) < RING_MIN_EPOCHS:
        return None
    recent = s.epochs[-RING_WINDOW:]
    key = main_metric(ctx.task)[0]
    base = ctx.baseline if ctx.baseline and ctx.baseline > 0 else None
    for label, k, is_loss in (("val loss", "val_loss", True), (key.replace("_", " ").replace("r2", "R²"), key, False)):
        x = [e.get(k) for e in recent]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in x):
            continue
        if is_loss:
            level = median(x)
            if not level > 0 or base is None:
                continue
            threshold = max(OSC_LOSS_SWING * level, RING_LOSS_FLOOR * base)
        else:
            threshold = RING_METRIC
        legs = zigzag(x, threshold)
        ups = [g for g in legs if g[2] > 0]
        downs = [g for g in legs if g[2] < 0]
        if len(ups) < RING_CYCLES or len(downs) < RING_CYCLES:
            continue
        up_sum, down_sum = sum(g[2] for g in ups), -sum(g[2] for g in downs)
        if min(up_sum, down_sum) < OSC_BALANCE * max(up_sum, down_sum):
            continue
        span = median([g[1] - g[0] for g in legs])
        if span < RING_LEG_EPOCHS:
            continue
        fix = {"momentum": 0.9 if ctx.momentum > 0.9 else 0.5}
        first = recent[0]["epoch"]
        turns = ", ".join(f"{fmt(x[g[1]])} at epoch {first + g[1]}" for g in legs[-6:])
        return HealthWarning(
            code="loss_oscillation", severity="warning",
            message=(f"the {label} rose and fell {min(len(ups), len(downs))} times over the last {len(x)} epochs, "
                     f"a cycle every {fmt(2 * span)} epochs or so (turning points: {turns}): SGD with momentum "
                     f"{fmt(ctx.momentum)} is under-damped, the heavy ball swings through the valley and back"),
            suggestion=(f"lower the momentum to {fix['momentum']} (it damps the swing; a lower lr only slows it "
                        f"down)"),
            fix=fix, step=latest_step(s), epoch=latest_epoch(s))
    return None


def _spikes(x: list, baseline: float) -> list:
    """Indices of the spikes of a loss series (see SPIKE_FACTOR); one per run of consecutive spikes."""
    # the jumps first (one pass, no medians): a healthy run rarely doubles its loss from one epoch to the next
    jumps = [i for i in range(1, len(x)) if x[i - 1] > 0 and x[i] >= SPIKE_JUMP * x[i - 1]
             and x[i] >= SPIKE_ABS * baseline]
    if len(jumps) < SPIKE_MIN:
        return []
    found: list = []
    h = SPIKE_HALF_WIDTH
    for i in jumps:
        around = median(x[max(1, i - h):i + h + 1])
        if around > 0 and x[i] >= SPIKE_FACTOR * around and x[i] - around >= SPIKE_ABS * baseline:
            if found and found[-1][-1] == i - 1:
                found[-1].append(i)
            else:
                found.append([i])
    return [max(run, key=lambda j: x[j]) for run in found]


def _spiking(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    recent = s.epochs[-SPIKE_EPOCHS:]
    if len(recent) < 5:
        return None
    for label, key in (("val loss", "val_loss"), ("train loss", "train_loss")):
        x = [e.get(key) for e in recent]
        if not all(v is not None and math.isfinite(v) for v in x):
            continue
        spikes = _spikes(x, ctx.baseline)
        if len(spikes) < SPIKE_MIN:
            continue
        fix = {"lr": round_lr(ctx.lr / 3)}
        shown = ", ".join(f"{fmt(x[i])} at epoch {recent[i]['epoch']}" for i in spikes[-4:])
        return HealthWarning(
            code="loss_oscillation", severity="warning",
            message=(f"the {label} spiked {len(spikes)} times to 3x or more the level around it ({shown}; median "
                     f"{fmt(median(x))}) over the last {len(x)} epochs: some steps throw the model far off before "
                     f"it recovers"),
            suggestion=f"lower the learning rate to {fmt(fix['lr'])}",
            fix=fix, step=latest_step(s), epoch=latest_epoch(s))
    return None


def _oscillation(label, x, ups, downs, threshold, is_loss, s, ctx) -> HealthWarning:
    fix = {"lr": round_lr(ctx.lr / 3)}
    extra = ""
    if ctx.optimizer == "momentum" and ctx.momentum > 0.95:
        fix["momentum"] = 0.9
        extra = " and momentum to 0.9"
    if ctx.batch_size < 16:
        fix["batch_size"] = 32
        extra += " and use batches of 32 (tiny batches give noisy steps)"
    size = fmt(threshold) + (f" ({threshold / max(median(x), 1e-12):.0%} of its level)" if is_loss else "")
    shown = ", ".join(fmt(v) for v in x[-8:])
    return HealthWarning(
        code="loss_oscillation", severity="warning",
        message=(f"the {label} swung up {ups} and down {downs} times by more than {size} over the last {len(x)} "
                 f"epochs ({shown}): the steps bounce across the valley instead of settling"),
        suggestion=f"lower the learning rate to {fmt(fix['lr'])}{extra}",
        fix=fix, step=latest_step(s), epoch=latest_epoch(s))
