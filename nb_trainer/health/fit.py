"""Rules on how well the model fits: overfitting, underfitting, a loss plateau.

They read the epoch records only (train loss, val loss), so they cost nothing
per step. "Poor" is judged against the trivial baseline (the loss of the best
constant prediction; see ``baseline.py``): a loss near it means the model has
learnt next to nothing from the inputs.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..tasks import main_metric
from .signals import Context, Signals, fmt, heavy_regularisation, latest_epoch, latest_step
from .warning import HealthWarning

# Overfitting: the val loss (median of 3 epochs) has risen 20% above its best
# and by a tenth of the baseline, stayed 10% above it for the last 3 epochs
# (one bad epoch is noise on a small val set), while the train loss fell 10%
# or more since that best epoch, so the gap between them widened. A 64-unit
# MLP on the 442-example diabetes data trained 40 epochs at lr 3e-3 rises 24%
# (val R² 0.39 -> 0.25) and fires; one drifting up ~15% / 0.1 of its baseline
# and stays quiet; a net memorising 60 examples rises 40% and fires.
# The train side is read as a median of 3 epochs too: a train loss that swings
# (0, 1.2, 0, 1.3 with SGD momentum 0.98) has not "fallen" because one epoch read 0.
OVERFIT_RISE = 0.20
OVERFIT_ABS = 0.10
OVERFIT_HOLD = 0.10
OVERFIT_EPOCHS = 3
OVERFIT_TRAIN_DROP = 0.10
# Underfitting, judged at the end of the run: train and val loss at 80% of
# the trivial baseline or more (R² <= 0.2 for MSE), flat over the last epochs
# (falling by less than 1% of the baseline per epoch over the last third of
# the run; a short run still falling faster is merely unfinished), with at
# least 3 epochs.
# Real noisy problems converge well below: the diabetes data at R² 0.5 sits
# at 0.5 of its baseline.
# Overfitting, second form (the val loss flat rather than rising, common with
# MSE and with Adam on CE): the val loss has not improved 3% in the last P
# epochs (a third of the run, 3 to 10), the train loss fell 30% over them,
# and val is 5x train and above it by a fifth of the baseline. A healthy
# digits MLP sits near val 0.1 / train 0.02 (gap 0.04 of the 2.3 baseline).
GAP_VAL_STALL = 0.03
GAP_TRAIN_DROP = 0.30
GAP_RATIO = 5.0
GAP_ABS = 0.2
UNDERFIT_LEVEL = 0.8
FLAT = 0.01
# ... 5% when strong regularisation (weight decay >= 1e-2, L1 >= 1e-3, dropout
# >= 0.5) holds the loss up: there the level is the evidence and the fix is plain.
# And the run must have had 5 epochs or 50 steps: 3 epochs of 4 steps say nothing.
FLAT_REGULARISED = 0.05
# ... and at 50% of the baseline (not 80%) when the regularisation is heavy, 100x
# the usual (see signals.heavy_regularisation). There the level a noisy problem
# could explain is not the likely story: a 3-output regression that reaches R² 0.97
# sits at R² 0.35-0.40 (61-64% of its baseline) under adam + weight decay 0.5,
# moons at 60% under momentum + 0.1, and the fix (turn it down) is one click.
UNDERFIT_LEVEL_HEAVY = 0.5
# Plateau: the best train loss of the last P epochs is within 1% of the best
# before them (Keras ReduceLROnPlateau's idea; P scales with the run: a third
# of its epochs, 4 to 10), the val loss did not improve 1% either, and the
# loss is still above 70% of the baseline ("not yet good"). A converged noisy
# problem can sit at half its baseline (diabetes at R² 0.5): that is done, not
# stuck, and the loss alone cannot tell the two apart lower down.
# A loss below the baseline that falls at every one of those P epochs is
# descending, however slowly: a plateau's epoch-to-epoch changes go both ways. (A
# CNN with global average pooling and SGD+momentum crept 0.692 -> 0.685 over 5
# epochs, every epoch lower, then took off to 100% val accuracy.) Above the
# baseline a steady fall is the output bias settling towards the constant
# prediction (0.704 -> 0.694 against ln 2 = 0.693), not learning. The val loss is
# read when there is one (no dropout noise in it).
PLATEAU_MIN_DELTA = 0.01
PLATEAU_FLAT = 0.10  # ... and flat: the median of those P epochs within 10% of the best before
PLATEAU_LEVEL = 0.7
SADDLE_ADAM_LR = 3e-3
# "Stopped" must be true of the validation metric too: a loss that creeps down by 0.001 an epoch
# (SGD at a tiny lr: 2.308 -> 2.295 over 15 epochs, 0.05% of ln 10 an epoch, "flat") while the val
# accuracy climbs 0.10 -> 0.18 is a run that learns, slowly. The metric (accuracy, F1, R²) is still
# rising when the mean of the last k epochs (3 or more) is METRIC_RISE above the mean of the k
# before, and by twice the standard error of that difference: a flat run's val accuracy on a few
# hundred examples jitters by 0.03 from epoch to epoch (a linear model on radial classes: 0.28-0.41),
# which moves a mean of 6 epochs by more than METRIC_RISE now and then.
METRIC_RISE = 0.02


def _pairs(s: Signals) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) losses of the epochs that have both, finite; cached per number of epochs."""
    cached = getattr(s, "_pairs_cache", None)
    if cached is not None and cached[0] == len(s.epochs):
        return cached[1], cached[2]
    tr, va = [], []
    for e in s.epochs:
        t, v = e.get("train_loss"), e.get("val_loss")
        if t is None or v is None or not (math.isfinite(t) and math.isfinite(v)):
            continue
        tr.append(t)
        va.append(v)
    out = np.asarray(tr, float), np.asarray(va, float)
    s._pairs_cache = (len(s.epochs), *out)
    return out


def metric_rise(s: Signals, ctx: Context, k: int) -> Optional[tuple]:
    """``(before, after)``: the main val metric's mean over the k epochs before the last k and over
    the last k, when it rose by METRIC_RISE or more (lower-is-better metrics: fell); else None."""
    name, higher = main_metric(ctx.task)
    x = [e.get(name) for e in s.epochs]
    k = max(k, 3)
    if len(x) < 2 * k or any(v is None or not math.isfinite(v) for v in x[-2 * k:]):
        return None
    a, b = np.asarray(x[-2 * k:-k], float), np.asarray(x[-k:], float)
    before, after = float(a.mean()), float(b.mean())
    gain = (after - before) if higher else (before - after)
    # the rise must stand out of the epoch-to-epoch noise: twice the standard error of the difference
    noise = 2 * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / k)
    if not higher and before > 0:
        gain, noise = gain / before, noise / before  # perplexity: relative
    return (before, after) if gain >= max(METRIC_RISE, noise) else None


def _has_metric(s: Signals, ctx: Context) -> bool:
    return bool(s.epochs) and s.epochs[-1].get(main_metric(ctx.task)[0]) is not None


def _metric_name(ctx: Context) -> str:
    return main_metric(ctx.task)[0].replace("val_", "val ").replace("r2", "R²")


def _rolling_median3(x: np.ndarray) -> np.ndarray:
    """Each point the median of itself and its neighbours; the last, of the last three."""
    if len(x) < 3:
        return x.copy()
    v = x.tolist()  # plain Python: faster than numpy on the few dozen epochs a run has
    out = [v[0]] + [sorted(v[i - 1:i + 2])[1] for i in range(1, len(v) - 1)] + [sorted(v[-3:])[1]]
    return np.asarray(out)


def overfitting(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """Val loss rising over several epochs while the train loss falls, the gap widening
    (or the val loss stuck far above a train loss that keeps falling)."""
    tr, va = _pairs(s)
    if len(va) < 5 or (va[-1] < va.min() * (1 + OVERFIT_HOLD) and va[-1] < GAP_RATIO * tr[-1]):
        return None  # the usual case, cheaply: val near its best, and not far above train
    rising = _val_rising(s, ctx, tr, va)
    return rising if rising is not None else _gap_widening(s, ctx, tr, va)


def _val_rising(s: Signals, ctx: Context, tr: np.ndarray, va: np.ndarray) -> Optional[HealthWarning]:
    sm = _rolling_median3(va)  # one noisy epoch neither makes the best nor the rise
    tr = _rolling_median3(tr)  # nor the fall of the train loss
    b = int(np.argmin(sm))
    since = len(va) - 1 - b
    if b == 0 or since < OVERFIT_EPOCHS or not sm[b] > 0:
        return None  # b == 0: the first epoch's train loss averages the untrained start, no reference
    if 0 < ctx.patience and len(va) - 1 - int(np.argmin(va)) <= ctx.patience:
        return None  # early stopping is on: it will stop and restore the best weights
    rise = sm[-1] / sm[b] - 1
    held = bool((va[-OVERFIT_EPOCHS:] >= sm[b] * (1 + OVERFIT_HOLD)).all())
    if rise < OVERFIT_RISE or not held:
        return None
    if ctx.baseline and sm[-1] - sm[b] < OVERFIT_ABS * ctx.baseline:
        return None  # a rise too small to matter against the loss scale
    if not tr[-1] <= tr[b] * (1 - OVERFIT_TRAIN_DROP):
        return None
    gap_best, gap_now = va[b] - tr[b], va[-1] - tr[-1]
    if gap_now <= max(gap_best, 0.0):
        return None
    e_best = s.epochs[-1 - since]["epoch"] if len(s.epochs) == len(va) else b + 1
    return _overfit_warning(
        s, ctx, since,
        f"val loss rose from {fmt(sm[b])} at epoch {e_best} to {fmt(sm[-1])} at epoch {latest_epoch(s)} "
        f"(+{rise:.0%}) while the train loss fell from {fmt(tr[b])} to {fmt(tr[-1])}: the gap grew from "
        f"{fmt(gap_best)} to {fmt(gap_now)}")


def _gap_widening(s: Signals, ctx: Context, tr: np.ndarray, va: np.ndarray) -> Optional[HealthWarning]:
    """The val loss stopped improving P epochs ago; the train loss kept falling and is now a fraction of it."""
    if not ctx.baseline or ctx.baseline <= 0:
        return None
    p = max(3, min(10, len(va) // 3))
    if 0 < ctx.patience and len(va) - 1 - int(np.argmin(va)) <= ctx.patience:
        return None  # early stopping is on: it will stop and restore the best weights
    if len(va) < 2 * p:
        return None
    if va[-p:].min() < va[:-p].min() * (1 - GAP_VAL_STALL):
        return None  # val still improving
    tr = _rolling_median3(tr)
    if not tr[-1] <= tr[-p - 1] * (1 - GAP_TRAIN_DROP):
        return None
    gap = va[-1] - tr[-1]
    if va[-1] < GAP_RATIO * tr[-1] or gap < GAP_ABS * ctx.baseline:
        return None
    return _overfit_warning(
        s, ctx, p,
        f"the val loss has not improved for {p} epochs (best {fmt(va[:-p].min())}, now {fmt(va[-1])}) while the "
        f"train loss kept falling, {fmt(tr[-p - 1])} → {fmt(tr[-1])}: val is {va[-1] / max(tr[-1], 1e-12):.0f}x "
        f"the train loss at epoch {latest_epoch(s)}, the model memorises the training set")


def _overfit_warning(s: Signals, ctx: Context, since: int, message: str) -> HealthWarning:
    fix, what = {}, []
    wd = 1e-3 if ctx.weight_decay == 0 else min(ctx.weight_decay * 10, 0.1)
    fix["weight_decay"] = float(f"{wd:.2g}")
    what.append(f"weight decay {fmt(fix['weight_decay'])}")
    if ctx.has_dropout and (ctx.dropout or 0.0) < 0.5:
        fix["dropout"] = 0.5 if (ctx.dropout or 0.0) >= 0.2 else 0.3
        what.append(f"dropout {fix['dropout']}")
    if ctx.patience == 0 or ctx.patience > OVERFIT_EPOCHS:
        fix["patience"] = OVERFIT_EPOCHS
        what.append(f"early stopping (patience {fix['patience']}: stops and keeps the best weights)")
    return HealthWarning(
        code="overfitting", severity="warning", message=message,
        suggestion="regularise: " + ", ".join(what) + "; more training data or a smaller model also help",
        fix=fix, step=latest_step(s), epoch=latest_epoch(s))


def _less_regularisation(ctx: Context) -> tuple[dict, list]:
    fix, what = {}, []
    if ctx.weight_decay >= 1e-3:
        fix["weight_decay"] = float(f"{ctx.weight_decay / 100:.2g}") if ctx.weight_decay >= 1e-2 else 0.0
        what.append(f"weight decay {fmt(fix['weight_decay'])}")
    if ctx.l1 > 0:
        fix["l1"] = 0.0
        what.append("L1 off")
    if ctx.dropout is not None and ctx.dropout >= 0.3:
        fix["dropout"] = 0.1
        what.append("dropout 0.1")
    return fix, what


def underfitting(s: Signals, ctx: Context, final: bool = False) -> Optional[HealthWarning]:
    """Train and val loss stay near the trivial baseline, and have stopped falling."""
    base = ctx.baseline
    if not final or not base or base <= 0:
        return None  # judged on the whole run: a slow start can still take off
    tr, va = _pairs(s)
    if len(tr) == 0:
        tr = np.asarray([e["train_loss"] for e in s.epochs if e.get("train_loss") is not None
                         and math.isfinite(e["train_loss"])], float)
        va = None
    n = len(tr)
    if n < 3 or (n < 5 and len(s.loss) < 50):
        return None
    level = UNDERFIT_LEVEL_HEAVY if heavy_regularisation(ctx) else UNDERFIT_LEVEL
    t_now = float(min(tr[-2:]))  # dropout inflates a single epoch's train loss
    if t_now < level * base:
        return None
    if va is not None and len(va) and float(min(va[-2:])) < level * base:
        return None
    third = max(2, n // 3)
    watched = va if va is not None and len(va) == n else tr  # val: no dropout noise in it
    fix, what = _less_regularisation(ctx)
    flat = FLAT_REGULARISED if _strong_regularisation(ctx) else FLAT
    if (watched[-third] - watched[-1]) / (third - 1) >= flat * base:
        return None  # still falling: more epochs may do it
    if va is not None and not heavy_regularisation(ctx) and metric_rise(s, ctx, third) is not None:
        # the val metric still climbs: learning, slowly (learning_rate.slow_progress judges that). Under
        # heavy regularisation the level is the evidence: it creeps towards a ceiling the penalty sets
        return None
    vtxt = f", val loss {fmt(float(va[-1]))}" if va is not None and len(va) else ""
    kind = {"regression": "predicting the mean target", "binary": "predicting the positive rate"}.get(
        ctx.task, "predicting the class frequencies")
    msg = (f"after {n} epochs the train loss is {fmt(t_now)}{vtxt}, against {fmt(base)} for {kind} "
           f"({t_now / base:.0%} of it), and it has stopped falling: the model has learnt little from the inputs")
    if fix:
        sugg = "the regularisation holds the model back: " + ", ".join(what)
    else:
        sugg = ("give the model more capacity (wider or more layers, a non-linearity between layers), "
                "or check that the inputs carry the signal (features, scaling)")
    return HealthWarning(code="underfitting", severity="warning", message=msg, suggestion=sugg, fix=fix,
                         step=latest_step(s), epoch=latest_epoch(s))


def plateau_patience(ctx: Context) -> int:
    return int(min(10, max(4, ctx.epochs // 3)))


def loss_plateau(s: Signals, ctx: Context) -> Optional[HealthWarning]:
    """No train (nor val) improvement over the last P epochs while the loss is still poor."""
    p = plateau_patience(ctx)
    ref = ctx.baseline if ctx.baseline and ctx.baseline > 0 else None
    last = s.epochs[-1].get("train_loss") if s.epochs else None
    if ref is None or last is None or not last >= PLATEAU_LEVEL * ref:
        return None  # no reference, or already good (the cheap test first: it runs every epoch)
    tr = [e.get("train_loss") for e in s.epochs]
    if len(tr) < p + 2 or any(v is None or not math.isfinite(v) for v in tr):
        return None
    tr = np.asarray(tr, float)
    before, recent = float(tr[:-p].min()), float(tr[-p:].min())
    if not before > 0 or recent < before * (1 - PLATEAU_MIN_DELTA):
        return None
    if float(np.median(tr[-p:])) > before * (1 + PLATEAU_FLAT):
        return None  # climbing, not flat: lr_too_high / loss_oscillation judge that
    va = [e.get("val_loss") for e in s.epochs]
    watched = tr
    if all(v is not None and math.isfinite(v) for v in va):
        va = np.asarray(va, float)
        if va[-p:].min() < va[:-p].min() * (1 - PLATEAU_MIN_DELTA):
            return None
        watched = va
    if watched[-1] < ref and bool((np.diff(watched[-p - 1:]) < 0).all()):
        return None  # still descending (see PLATEAU_MIN_DELTA)
    if recent < PLATEAU_LEVEL * ref:
        return None
    if not heavy_regularisation(ctx) and metric_rise(s, ctx, max(3, p // 2)) is not None:
        return None  # the loss is flat but the val metric still climbs: not stuck
    # The fix: what can move a loss stuck near the constant prediction. Lowering the lr (Keras'
    # ReduceLROnPlateau) settles a loss that bounces in a valley; here the loss is flat far above
    # any valley, and a smaller step only makes it slower (L1 0.05 with AdamW: lr ÷ 10 took val
    # accuracy from 0.55 to 0.33). Strong regularisation holding it up: less of it. Plain SGD on a
    # saddle (small initial weights: tiny gradients everywhere): an adaptive optimizer rescales the
    # tiny steps and leaves it (a Tanh net at 0.1x init on XOR: 50% -> 92-94% val accuracy with Adam
    # at 3e-3, while momentum 0.9 or lr x10 stayed at 50%). Otherwise no setting is known to help:
    # the model (capacity, initialisation, output layer) or the data.
    fix, what = _less_regularisation(ctx) if _strong_regularisation(ctx) else ({}, [])
    if fix:
        sugg = "the regularisation holds the loss up: " + ", ".join(what)
    elif ctx.optimizer == "sgd":
        fix = {"optimizer": "adam", "lr": SADDLE_ADAM_LR}
        sugg = (f"switch to Adam at lr {fmt(SADDLE_ADAM_LR)}: plain SGD creeps along a saddle (tiny gradients "
                f"everywhere), Adam rescales the steps")
    else:
        sugg = ("no training setting is known to move a loss stuck this close to a constant prediction: give the "
                "model more capacity, check its initialisation and output layer, and that the inputs carry the signal")
    return HealthWarning(
        code="loss_plateau", severity="warning",
        message=(f"the train loss has not improved for {p} epochs (best {fmt(before)} before, {fmt(recent)} "
                 f"since), still {recent / ref:.0%} of the {fmt(ref)} a constant prediction scores"
                 + (f", and the {_metric_name(ctx)} has stopped rising too" if _has_metric(s, ctx) else "")),
        suggestion=sugg + ("; if it stays flat, the model may need more capacity" if fix else ""),
        fix=fix, step=latest_step(s), epoch=latest_epoch(s))


def plateau_lifted(s: Signals, ctx: Context, raised: HealthWarning) -> Optional[HealthWarning]:
    """A plateau raised earlier that the end of the run contradicts: the val metric rose (or the val loss
    fell 1%) since. The warning stays (it was true then) but says so, as an "info" note without a fix:
    the run found its way off the plateau."""
    since = [e for e in s.epochs if raised.epoch is not None and e.get("epoch", 0) >= raised.epoch]
    if len(since) < 2:
        return None
    name, higher = main_metric(ctx.task)
    a, b = since[0].get(name), since[-1].get(name)
    va, vb = since[0].get("val_loss"), since[-1].get("val_loss")
    moved = []
    if isinstance(a, float) and isinstance(b, float) and ((b - a) if higher else (a - b)) >= METRIC_RISE:
        moved.append(f"the {_metric_name(ctx)} went {fmt(a)} → {fmt(b)}")
    if isinstance(va, float) and isinstance(vb, float) and va > 0 and vb < va * (1 - PLATEAU_MIN_DELTA):
        moved.append(f"the val loss {fmt(va)} → {fmt(vb)}")
    if not moved:
        return None
    base = raised.message.split(" — by the end")[0]
    return HealthWarning(
        code="loss_plateau", severity="info",
        message=(f"{base} — by the end it moved again ({', '.join(moved)} since epoch {raised.epoch}): slow rather "
                 f"than stuck"),
        suggestion="nothing to do for the plateau itself: the run found its way off it",
        fix={}, step=latest_step(s), epoch=raised.epoch)


def _strong_regularisation(ctx: Context) -> bool:
    """10x the usual strength (AdamW's decoupled decay is usually 1e-2 itself)."""
    wd = 0.1 if ctx.optimizer == "adamw" else 1e-2
    return ctx.weight_decay >= wd or ctx.l1 >= 1e-3 or (ctx.dropout or 0.0) >= 0.5
