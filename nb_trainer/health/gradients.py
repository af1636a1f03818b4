"""Rules on the gradients and activations: vanishing, exploding, dead ReLU units.

Each rule is a pure function of (:class:`Signals`, :class:`Context`) that
returns a :class:`HealthWarning` or None. The gradient rules are gated on the
loss not improving, as AUTOTRAINER does: a small first-layer gradient or a
growing gradient norm in a run whose loss falls is not a problem worth a
warning, and the gate is what keeps healthy runs quiet.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .signals import (Context, Signals, arr, early_level, fmt, heavy_regularisation, improvement, latest_epoch,
                      latest_step, median, recent_level, round_lr, window)
from .warning import HealthWarning

# Vanishing: first/last weight-matrix gradient-norm ratio below 1e-3 with the
# first below 1e-4 (AUTOTRAINER's thresholds). Healthy MLPs and CNNs sit
# within 1e-1..1e1 of each other; a 10-layer sigmoid net sits near 1e-8.
VANISH_RATIO = 1e-3
VANISH_FIRST = 1e-4
# Exploding: first/last ratio above 70 (AUTOTRAINER), or the gradient norm
# 100x its value at the start, or non-finite. Healthy runs grow their
# gradient norm by up to ~10x (logits sharpening); 100x while the loss does
# not improve is runaway growth.
EXPLODE_RATIO = 70.0
EXPLODE_GROWTH = 100.0
# "The loss is not improving": it fell by less than 10% from the start, or from the
# trivial baseline when the start was worse than that (an untrained net whose outputs
# are off-centre starts above the baseline; learning the output bias brings it down to
# the baseline without learning anything from the inputs: a 10-layer sigmoid net on
# circles goes 0.86 -> 0.693 = ln 2 and stays there).
STALLED = 0.10
# Dead ReLU: a layer whose units output 0 on every probe example, for at
# least 70% of its units (DeepDiagnosis / AUTOTRAINER), on two probes in a
# row (one probe can catch a transient).
DEAD_FRACTION = 0.70
# A unit can only be called dead on enough examples: below this many, a unit
# active on a third of the inputs looks dead on a batch by chance.
DEAD_MIN_EXAMPLES = 16
# Dead units seen in the gradients: the first weight matrix's gradient is exactly 0 on
# most recent steps while the last layer's is not. Only units that output a constant 0
# for every example of the batch pass exactly no gradient (a sigmoid/tanh net's
# vanishing gradient is tiny, never exactly 0), so this sees dead ReLUs the probes
# cannot: F.relu called in a user's forward() has no module to hook.
ZERO_GRAD_SHARE = 0.5
# A forward pass that already overflows: in a run that diverged, a first-step loss
# 100x the trivial baseline means the activations (and so the gradients) were blowing
# up before any update (a 10-layer linear net at 1.5x gain starts at 9e3 x the
# baseline, a ReLU RNN with a 3x recurrent matrix at 3e16 x), and the NaN follows
# within a step or two, too soon for a growth ratio to be measured.
EXPLODE_INIT_LOSS = 100.0


# From the start: the gradient norm of the first step (before any update) EXPLODE_START_GRAD times the
# loss of a constant prediction (the baseline, at least EXPLODE_START_FLOOR), with that first loss at least
# EXPLODE_START_LOSS times the baseline. A model at unit scale starts with a gradient of the loss's order:
# healthy runs measured at most 10x (180 runs: MLPs, CNNs, RNNs, LayerNorm and residual nets, 0..16 pixel
# counts); inputs in raw units, an initialisation 5x He or 24 residual blocks without normalisation start
# at 100x to 1e4x. Adam's normalised steps still learn there (the run does not stall, so the rules above
# stay quiet), but the activations are far off scale and no one step size suits every layer.
EXPLODE_START_GRAD = 30.0
EXPLODE_START_FLOOR = 0.1
EXPLODE_START_LOSS = 2.0


def _stalled(s: Signals, frac: float = STALLED, baseline: Optional[float] = None) -> bool:
    start = early_level(s.loss)
    if baseline is not None and baseline > 0 and start > baseline:
        start = baseline  # coming down to the baseline is no progress (see STALLED)
    drop = improvement(start, recent_level(s.loss))
    return not (drop >= frac)  # NaN (no data) counts as stalled only together with the other evidence


def _dead_layers(probe: dict) -> dict:
    return {name: d for name, d in (probe.get("dead_relu") or {}).items()
            if d.get("units", 0) >= 2 and d.get("dead_units", 0.0) >= DEAD_FRACTION}


def _latest_dead_probe(s: Signals) -> Optional[dict]:
    """The latest probe that looked at dead units (update-ratio-only probes have none)."""
    for p in reversed(s.probes):
        if p.get("dead_relu"):
            return p
    return None


def _zero_first_gradient(s: Signals) -> Optional[tuple]:
    """(zero steps, steps, last-layer norm) when the first matrix got exactly 0 gradient on
    most of the recent steps while the last did not; else None."""
    n = min(len(s.g_first), len(s.g_last))
    if n < 10:
        return None
    w = window(n)
    gf, gl = s.g_first[-w:], s.g_last[-w:]
    zeros = sum(1 for v in gf if v == 0.0)
    last = median(gl)
    if zeros < ZERO_GRAD_SHARE * w or not last > 0:
        return None
    return zeros, w, last


def vanishing_gradients(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """First-layer gradients orders of magnitude below the last layer's, loss not improving."""
    n = min(len(s.g_first), len(s.g_last))
    if n < 10:
        return None
    w = window(n)
    gf, gl = median(s.g_first[-w:]), median(s.g_last[-w:])
    if not gl > 0 or not np.isfinite(gf):
        return None
    ratio = gf / gl
    if ratio >= VANISH_RATIO or gf >= VANISH_FIRST * max(1.0, gl):
        return None
    probe = _latest_dead_probe(s)
    if probe is not None and _dead_layers(probe):
        return None  # no gradient passes a dead ReLU layer: dead_relu says why
    if _zero_first_gradient(s) is not None:
        return None  # exactly 0 is dead units, not a small gradient: dead_relu says so
    if heavy_regularisation(ctx):
        return None  # the regulariser shrank the later weights: underfitting says so, with its fix
    if not _stalled(s, baseline=ctx.baseline):
        return None
    return HealthWarning(
        code="vanishing_gradients", severity="warning",
        message=(f"first-layer gradient norm {fmt(gf)} vs last layer {fmt(gl)} (ratio {fmt(ratio)}) at epoch "
                 f"{latest_epoch(s)}, and the loss is not improving ({fmt(early_level(s.loss))} at the start, "
                 f"{fmt(recent_level(s.loss))} now): the early layers are barely learning"),
        suggestion=("change the model: ReLU/LeakyReLU/GELU instead of sigmoid/tanh, fewer layers, BatchNorm/"
                    "LayerNorm or residual connections, He/Xavier initialisation (no training setting fixes "
                    "this: Adam rescales the tiny steps but a 10-layer sigmoid net still barely learns)"),
        fix={}, step=latest_step(s), epoch=latest_epoch(s))


def exploding_gradients(s: Signals, ctx: Context, diverged: bool = False) -> Optional[HealthWarning]:
    """Non-finite or runaway gradient norms (or first layer >> last) while the loss does not improve.

    ``diverged``: the loss already went non-finite (the engine said nan_loss);
    then growth in the last steps before it is the evidence.
    """
    g, loss = arr(s.grad_norm), arr(s.loss)
    n = len(g)
    fix = _clip_fix(s, ctx)
    where = f"at step {latest_step(s)} (epoch {latest_epoch(s)})"
    start = _explodes_from_the_start(s, ctx, diverged)
    if start is not None:
        return start
    bad = ~np.isfinite(g) & np.isfinite(loss[:n]) if n else np.zeros(0, bool)
    if bad.any():
        i = int(np.argmax(bad))
        return _explode(f"the gradient norm became {g[i]} at step {s.step[i]} while the loss was {fmt(loss[i])}",
                        fix, s, severity="error")
    base = ctx.baseline
    if diverged and n >= 1 and base and base > 0 and loss[0] >= EXPLODE_INIT_LOSS * base:
        l0, g0 = float(loss[0]), float(g[0])
        return HealthWarning(
            code="exploding_gradients", severity="error",
            message=(f"the loss was already {fmt(l0)} at the first step, {fmt(l0 / base)}x the {fmt(base)} of a "
                     f"constant prediction, with a gradient norm of {fmt(g0)}, and it became non-finite a few steps "
                     f"later: the activations overflow from the start"),
            suggestion=_FROM_THE_START, fix={}, step=latest_step(s), epoch=latest_epoch(s))
    if diverged and n >= 2:
        g0, peak = float(g[0]), float(np.nanmax(g[-min(10, n):]))
        if g0 > 0 and peak >= EXPLODE_GROWTH * g0:
            return _explode(f"the gradient norm grew from {fmt(g0)} at the first step to {fmt(peak)} in the last "
                            f"steps before the loss became non-finite", fix, s, severity="error")
        return None
    if n < 6:
        return None
    g0 = median(g[:3])
    if not g0 > 0:
        return None
    w = window(n)
    g_now = median(g[-w:])
    stalled = _stalled(s, baseline=ctx.baseline)
    if g_now >= EXPLODE_GROWTH * g0 and stalled:
        return _explode(f"the gradient norm grew from {fmt(g0)} at the start to {fmt(g_now)} {where} while the "
                        f"loss did not improve ({fmt(early_level(s.loss))} → {fmt(recent_level(s.loss))})", fix, s)
    m = min(len(s.g_first), len(s.g_last))
    if m >= 10 and stalled:
        gf, gl = median(s.g_first[-min(w, m):]), median(s.g_last[-min(w, m):])
        if gl > 0 and gf / gl >= EXPLODE_RATIO and g_now > g0:
            return _explode(f"first-layer gradient norm {fmt(gf)} vs last layer {fmt(gl)} (ratio {fmt(gf / gl)}) "
                            f"{where}, growing towards the input, while the loss did not improve", fix, s)
    return None


_FROM_THE_START = ("change the data or the model, not a training setting: standardize the inputs (and regression "
                   "targets), use PyTorch's default or He/Xavier initialisation instead of larger weights, add "
                   "normalisation layers (LayerNorm/BatchNorm) to a deep or residual stack; clipping or a smaller lr "
                   "only hides it")


def _explodes_from_the_start(s: Signals, ctx: Context, diverged: bool = False) -> Optional[HealthWarning]:
    """See EXPLODE_START_GRAD. No config fix: the scale of the inputs, the initialisation or the
    architecture makes it, and clipping or a smaller lr only hides it (the first step stays as it is)."""
    base = ctx.baseline
    if not s.grad_norm or not s.loss or not base or base <= 0 or s.step[0] > 1:
        return None
    g0, l0 = float(s.grad_norm[0]), float(s.loss[0])
    if not (np.isfinite(g0) and np.isfinite(l0)):
        return None
    ref = max(base, EXPLODE_START_FLOOR)
    if g0 < EXPLODE_START_GRAD * ref or l0 < EXPLODE_START_LOSS * base:
        return None
    return HealthWarning(
        code="exploding_gradients", severity="error" if diverged else "warning",
        message=(f"at the first step, before any update, the gradient norm was {fmt(g0)}, {fmt(g0 / ref)}x the "
                 f"{fmt(base)} loss of a constant prediction (a model at unit scale starts within about 10x), and "
                 f"the loss was {fmt(l0)}, {fmt(l0 / base)}x it: the activations are far above unit scale from the "
                 f"start" + ("; the loss became non-finite a few steps later" if diverged else
                             "; the run still learns, but no one step size suits every layer")),
        suggestion=_FROM_THE_START, fix={}, step=latest_step(s), epoch=latest_epoch(s))


def _clip_fix(s: Signals, ctx: Context) -> dict:
    """Clip the global gradient norm at 1.0 (the usual value, and what nan_loss offers) and lower
    the lr ten times; only the lr when the run already clips."""
    if ctx.grad_clip > 0:
        return {"lr": round_lr(ctx.lr / 10)}
    return {"grad_clip": 1.0, "lr": round_lr(ctx.lr / 10)}


def _explode(seen: str, fix: dict, s: Signals, severity: str = "warning") -> HealthWarning:
    parts = []
    if "grad_clip" in fix:
        parts.append(f"clip gradients at {fmt(fix['grad_clip'])}")
    parts.append(f"lower the learning rate to {fmt(fix['lr'])}")
    return HealthWarning(
        code="exploding_gradients", severity=severity, message=seen,
        suggestion=(" and ".join(parts) + "; if it persists, normalise the inputs and targets, use a smaller "
                    "weight initialisation, or add normalisation layers"),
        fix=fix, step=latest_step(s), epoch=latest_epoch(s))


def dead_relu(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """A ReLU layer with >= 70% of its units silent on every probe example, on the last two probes;
    or (no ReLU module to probe) a first weight matrix that gets exactly zero gradient."""
    probes = [p for p in s.probes if p.get("dead_relu")
              and p.get("examples", min(ctx.batch_size, 256)) >= DEAD_MIN_EXAMPLES]
    if len(probes) < 2:
        return _dead_from_gradients(s, ctx) if not probes else None
    now, before = _dead_layers(probes[-1]), _dead_layers(probes[-2])
    both = [name for name in now if name in before]
    if not both:
        return None
    name = max(both, key=lambda k: now[k]["dead_units"])
    d = now[name]
    first = (probes[0].get("dead_relu") or {}).get(name, {})
    from_start = first.get("dead_units", 0.0) >= DEAD_FRACTION and probes[0].get("step", 0) <= 1
    first_ratio = median(list((probes[0].get("update_ratio") or {}).values()))
    seen = (f"{d['dead_units']:.0%} of the {d['units']} units of {ctx.label(name)} output 0 for every probe "
            f"example at epoch {probes[-1].get('epoch')}")
    others = [k for k in now if k != name]
    if others:
        seen += f" (also {', '.join(ctx.label(k) for k in others)})"
    if from_start and not (first_ratio > 0.1):
        return HealthWarning(
            code="dead_relu", severity="warning",
            message=seen + ", and they were dead from the first step: no gradient reaches them",
            suggestion=("change the model or data: check the layer's bias initialisation (large negative biases "
                        "silence ReLUs), normalise the inputs, or use LeakyReLU/GELU"),
            fix={}, step=latest_step(s), epoch=latest_epoch(s))
    lr = round_lr(ctx.lr / 10)
    return HealthWarning(
        code="dead_relu", severity="warning",
        message=seen + (f" (it was {first.get('dead_units', 0.0):.0%} at step {probes[0].get('step')})"
                        if first else ""),
        suggestion=(f"large updates pushed the units into the zero region: lower the learning rate to {fmt(lr)}; "
                    "LeakyReLU or a smaller init also keep units alive"),
        fix={"lr": lr}, step=latest_step(s), epoch=latest_epoch(s))


def _dead_from_gradients(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """Dead units seen in the gradients (see ZERO_GRAD_SHARE), for models the probes cannot see into.
    Only while the loss is not improving: a loss at 1e-10 makes every gradient underflow to 0 too."""
    found = _zero_first_gradient(s)
    if found is None or not _stalled(s, baseline=ctx.baseline):
        return None
    zeros, w, last = found
    first = ctx.label(ctx.first_layer) if ctx.first_layer else "the first weight matrix"
    seen = (f"{first} got a gradient of exactly 0 on {zeros} of the last {w} steps (last layer: {fmt(last)}) at "
            f"epoch {latest_epoch(s)}: the units after it output 0 for every example, so no gradient reaches it")
    start = s.g_first[:5]
    if len(start) >= 3 and median(start) > 0:
        # it had a gradient at the start: the units died during training, as large updates kill them
        lr = round_lr(ctx.lr / 10)
        return HealthWarning(
            code="dead_relu", severity="warning",
            message=seen + f" (it had {fmt(median(start))} at the first steps: they died during training)",
            suggestion=f"large updates pushed the units into the zero region: lower the learning rate to {fmt(lr)}",
            fix={"lr": lr}, step=latest_step(s), epoch=latest_epoch(s))
    return HealthWarning(
        code="dead_relu", severity="warning",
        message=seen + " from the first step (dead ReLUs; F.relu in forward() is not probed, the gradients show it)",
        suggestion=("change the model or data: check the bias initialisation of the layers before the ReLUs (large "
                    "negative biases silence them), normalise the inputs, or use LeakyReLU/GELU"),
        fix={}, step=latest_step(s), epoch=latest_epoch(s))
