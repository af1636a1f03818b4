"""Runs the health rules as a run goes: a callback of the engine.

The monitor copies the newly logged steps into a :class:`Signals` (cheap list
appends), and evaluates the rules:

- at each epoch end, the rules that read short windows (fit, oscillation,
  lr too low, vanishing gradients, dead units: ~0.1-0.2 ms), so what they see
  does not depend on the machine's speed;
- the rules that scan whole step columns (exploding gradients, lr too high)
  at most every ``EVAL_SECONDS`` of wall time, at a log or an epoch end, and
  in the first two epochs;
- every rule once more at the end of the run, including those that need the
  whole run (underfitting). A run stopped by the user is not judged.

A code already raised is updated only at epoch ends and at the end, not at
every evaluation. Symptoms are not raised on top of their cause: when a
cause (exploding/vanishing gradients, dead ReLUs, lr too high/low, NaN) has
been raised, a plateau or underfitting says nothing new; and once the step size
is at fault (lr too high, oscillation, exploding gradients, NaN), the gap between
train and val loss is its doing, so overfitting is not judged.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref
from typing import Callable, Optional

from .. import events as ev
from . import fit, gradients, learning_rate
from ..callbacks.base import Callback
from .baseline import trivial_loss
from .layers import module_labels
from .signals import Context, Signals, fmt, round_lr
from .warning import HealthWarning

EVAL_SECONDS = 0.5

log = logging.getLogger(__name__)

CAUSES = ("nan_loss", "exploding_gradients", "vanishing_gradients", "dead_relu", "lr_too_high", "lr_too_low")

# trivial baselines per training source (computed once per Trainer's data, not per run)
_BASELINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def evaluate(s: Signals, ctx: Context, raised=(), phase: str = "epoch", diverged: bool = False,
             step_rules: bool = True, guard: Optional[Callable] = None) -> list:
    """The warnings the rules give now. ``phase``: "step" (gradient and early-loss rules),
    "epoch" (all rules) or "final" (all, underfitting judged on the whole run).
    ``raised``: codes the run already has, or {code: warning} (a plateau with a raised cause takes
    that cause's fix; underfitting is not raised on top of a cause).
    ``step_rules=False`` skips the rules that scan whole step columns (exploding gradients, lr too
    high: the monitor ran them recently). ``guard(exc)``: called with a rule's exception instead
    of raising it, and the other rules still run (the monitor's: a rule's bug on odd data must not
    fail the user's run)."""
    found: list[HealthWarning] = []
    scans = [lambda: gradients.exploding_gradients(s, ctx, diverged=diverged),
             lambda: learning_rate.lr_too_high(s, ctx)] if step_rules or phase == "step" else []
    # vanishing gradients and dead units read short windows: cheap enough for every epoch, and then
    # a plateau is never raised before the cause that explains it
    checks = scans[:1] + [lambda: gradients.vanishing_gradients(s, ctx),
                          lambda: gradients.dead_relu(s, ctx)] + scans[1:]
    if phase != "step":  # after a divergence too: the epochs before it are evidence
        checks += [lambda: _lr_too_low(s, ctx, set(raised) | {f.code for f in found}),
                   lambda: learning_rate.loss_oscillation(s, ctx),
                   lambda: _overfitting(s, ctx, set(raised) | {f.code for f in found})]
    for check in checks:
        _run(check, found, guard)
    if phase == "step":
        return found
    if diverged and isinstance(raised, dict) and raised.get("nan_loss") is not None:
        _run(lambda: _nan_before_any_update(raised["nan_loss"]), found, guard)
    _after_an_overshoot(found, raised, ctx)
    codes = set(raised) | {w.code for w in found}
    causes = [c for c in CAUSES if c in codes]
    # a plateau is what the user sees, whatever its cause: raised with the cause's fix when a
    # cause is known (two warnings offering opposite lr changes would be worse than one)
    plateau: list = []
    _run(lambda: fit.loss_plateau(s, ctx), plateau, guard)
    if plateau and causes:
        cause = next((w for w in found if w.code == causes[0]), None) or \
            (raised.get(causes[0]) if isinstance(raised, dict) else None)
        w = plateau[0]
        w.suggestion = f"the likely cause is {causes[0].replace('_', ' ')}" + (
            f": {cause.suggestion}" if cause is not None else "")
        w.fix = dict(cause.fix) if cause is not None else {}
    found += plateau
    if phase == "final" and not plateau and isinstance(raised, dict) and "loss_plateau" in raised:
        _run(lambda: fit.plateau_lifted(s, ctx, raised["loss_plateau"]), found, guard)
    if phase == "final" and isinstance(raised, dict) and raised.get("overfitting") is not None \
            and raised["overfitting"].severity != "info" and (codes & STEP_FAULTS):
        _run(lambda: _overfitting_was_the_steps(raised["overfitting"], sorted(codes & STEP_FAULTS)), found, guard)
    if phase == "final" and not causes:  # a run that learns too slowly to get anywhere: its lr
        _run(lambda: learning_rate.slow_progress(s, ctx), found, guard)
        if found and found[-1].code == "lr_too_low":
            causes = ["lr_too_low"]
            for w in plateau:  # the flat loss was this slowness
                w.suggestion = f"the likely cause is lr too low: {found[-1].suggestion}"
                w.fix = dict(found[-1].fix)
    if not causes:  # underfitting is the symptom of a cause when there is one
        _run(lambda: fit.underfitting(s, ctx, final=phase == "final"), found, guard)
        under = next((w for w in found if w.code == "underfitting"), None)
        if under is not None and under.fix:
            for w in plateau:  # both are the regularisation's doing: one fix
                w.suggestion = f"the likely cause is the regularisation: {under.suggestion}"
                w.fix = dict(under.fix)
    return found


STEP_FAULTS = {"lr_too_high", "loss_oscillation", "exploding_gradients", "nan_loss"}


def _after_an_overshoot(found: list, raised, ctx: Context) -> None:
    """Gradients that vanished after the loss rose are the overshoot's doing: steps far too large
    saturate the units (LayerNorm, sigmoid, softmax attention) or silence them, and the gradients to
    the first layers vanish. They take lr_too_high's fix instead of "change the model" (AdamW at lr 1 on
    a small BERT: the word embeddings' gradient falls to 1e-6 of the head's; at lr 1e-3 it trains).
    And an overshoot that saturated or killed units is far beyond what lr ÷ 10 settles (the BERT and a
    GELU tagger at lr 0.1 still rise and stay saturated): lr_too_high's fix becomes lr ÷ 100."""
    high = next((w for w in found if w.code == "lr_too_high"), None)
    stored = raised.get("lr_too_high") if isinstance(raised, dict) else None
    if high is None and stored is not None:
        high = dataclasses.replace(stored, fix=dict(stored.fix))
    if high is None or not high.fix or "lr" not in high.fix:
        return
    others = list(found) + (list(raised.values()) if isinstance(raised, dict) else [])
    killed = any(w.code == "vanishing_gradients" or (w.code == "dead_relu" and "lr" in (w.fix or {})) for w in others)
    if killed and high.fix["lr"] > round_lr(ctx.lr / 100) and "momentum" not in high.fix:
        if high not in found:
            found.append(high)  # raised again with the new fix (engine.warn updates the stored one)
        lr = round_lr(ctx.lr / 100)
        high.fix["lr"] = lr
        high.suggestion = (f"lower the learning rate to {fmt(lr)} (÷ 100: the overshoot saturated or killed units, "
                           f"beyond what ÷ 10 settles)")
    for w in found:
        if w.code in ("vanishing_gradients", "dead_relu") and (not w.fix or w.fix.get("lr", 0) > high.fix["lr"]):
            if w.code == "dead_relu" and not w.fix:
                continue  # dead from the first step: the model's, whatever the lr
            if w.code == "vanishing_gradients" and "overshoot" not in w.message:
                w.message += " — after the loss rose (lr_too_high): the overshoot saturated or silenced the units"
            w.suggestion = f"the likely cause is lr too high: {high.suggestion}"
            w.fix = dict(high.fix)


def _overfitting_was_the_steps(w: HealthWarning, faults: list) -> HealthWarning:
    """Overfitting raised before the run showed that its step size is at fault: the val loss's rise was the
    steps' doing (see _overfitting), so the warning becomes a note without a fix."""
    return HealthWarning(
        code="overfitting", severity="info",
        message=w.message + f" — later the run showed {', '.join(faults)}: the gap came from the steps, not from "
                            "memorising",
        suggestion="fix the step size first (see " + ", ".join(faults) + ")", fix={}, step=w.step, epoch=w.epoch)


def _nan_before_any_update(w: HealthWarning) -> Optional[HealthWarning]:
    """A loss that is already non-finite at the first step came from the initial weights and the first
    batch: no learning rate made it, and none can cure it (a model taking sqrt of a linear output)."""
    if w.step != 1 or not w.fix:
        return None
    return HealthWarning(
        code="nan_loss", severity="error",
        message=w.message + "; that was the first step, before any update: the model or the data make it, "
                            "not the step size",
        suggestion=("check the model's forward for operations that give NaN or Inf on valid inputs (sqrt or log of "
                    "a value that can be negative or zero, a division by zero, exp of large values) and the data; "
                    "a lower learning rate cannot help"),
        fix={}, step=w.step, epoch=w.epoch)


def _ended(run) -> str:
    """How the run ended: its ``outcome`` while the end hooks run (``status`` is set after them)."""
    return getattr(run, "outcome", None) or run.status


def _run(check, found: list, guard) -> None:
    if guard is None:
        w = check()
    else:
        try:
            w = check()
        except Exception as e:  # handed to the guard, which records it; the other rules go on
            guard(e)
            return
    if w is not None:
        found.append(w)


def _lr_too_low(s: Signals, ctx: Context, codes: set) -> Optional[HealthWarning]:
    # weights that stay still are the lr's fault only when gradients reach every layer
    if codes & {"vanishing_gradients", "dead_relu"}:
        return None
    return learning_rate.lr_too_low(s, ctx)


def _overfitting(s: Signals, ctx: Context, codes: set) -> Optional[HealthWarning]:
    # a run whose steps overshoot (or blew up) drives its train and val losses apart by the size of its
    # steps (huge logits: train 1e-5, val 0.8 at 96% val accuracy with SGD at lr 5): the gap says more
    # about the steps than about memorisation, and the step-size fix comes first
    if codes & STEP_FAULTS:
        return None
    return fit.overfitting(s, ctx)


class HealthMonitor(Callback):
    """A callback of the engine that evaluates the health rules and raises their warnings."""

    def __init__(self, task, loss_name: str):
        self.task = task
        self.loss_name = loss_name
        self.signals = Signals()
        self.ctx: Optional[Context] = None
        self._first = self._last = None
        self._next_eval = 0.0
        self._config = None
        self._labels: dict = {}
        self.errors: list = []  # exceptions raised by rules (logged too); the run goes on

    # -- engine callbacks ---------------------------------------------------------
    def on_run_start(self, run, engine) -> None:
        self.signals = Signals()
        self._first = self._last = None
        mats = [i for i, p in enumerate(engine.params) if p.dim() > 1]
        if len(mats) >= 2:
            self._first, self._last = mats[0], mats[-1]
        self._baseline = self._trivial_loss(engine)
        self._names = list(engine.param_names)
        self._has_dropout = bool(engine.dropout_p) or _has_dropout(engine)
        self._labels = module_labels(engine.model)
        self._update_ctx(run)
        self._next_eval = time.perf_counter() + EVAL_SECONDS

    def on_log(self, run, engine, new: dict) -> None:
        self._take(new)
        if time.perf_counter() >= self._next_eval:
            self._evaluate(run, engine, "step")

    def on_probe(self, run, engine, probe: dict) -> None:
        self.signals.probes.append(probe)
        if len(self.signals.probes) > 512:
            del self.signals.probes[1:257:2]  # keep the first (the state at the start) and the recent ones

    def on_epoch_end(self, run, engine, record: dict) -> None:
        self.signals.epochs.append(record)
        val = record.get("val_loss")
        if (val is not None and not math.isfinite(val) and math.isfinite(record.get("train_loss", float("nan")))
                and run.warning("bad_input_data") is None):  # NaN in the val data says it already
            engine.warn(HealthWarning(
                code="nan_loss", severity="error",
                message=(f"the val loss is {val} at epoch {record['epoch']} while the train loss is "
                         f"{record['train_loss']:.4g}: the model's outputs overflow on the val data"),
                suggestion=f"lower the learning rate to {self.ctx.lr / 10:.2g} and clip gradients at 1.0",
                fix={"lr": float(f"{self.ctx.lr / 10:.2g}"), "grad_clip": 1.0} if self.ctx.grad_clip == 0
                else {"lr": float(f"{self.ctx.lr / 10:.2g}")},
                step=run.step, epoch=record["epoch"]))
        # the window rules every epoch, the scanning ones on their clock (see the module docstring)
        self._evaluate(run, engine, "epoch",
                       step_rules=record["epoch"] <= 2 or time.perf_counter() >= self._next_eval)

    def on_run_end(self, run, engine) -> None:
        if self.ctx is None or _ended(run) == "failed":
            return
        if _ended(run) == "stopped" and not run.stop_reason.startswith("early stopping"):
            return  # cut short by the user (or a restart): the evidence is incomplete
        self._catch_up(run)
        self._evaluate(run, engine, "final", diverged=_ended(run) == "diverged")

    # -- internals -----------------------------------------------------------------
    def _take(self, new: dict) -> None:
        cols = {k: new[k] for k in ("step", "epoch", "loss", "grad_norm") if k in new}
        layers = new.get("layer_norms") or []
        if self._first is not None and layers:
            cols["g_first"] = [r[self._first] for r in layers]
            cols["g_last"] = [r[self._last] for r in layers]
        self.signals.extend(**cols)

    def _catch_up(self, run) -> None:
        """Steps the engine logged without calling on_log (the chunk in which the loss went NaN)."""
        last = self.signals.step[-1] if self.signals.step else 0
        if run.history.last("step", 1) and run.history.last("step", 1)[0] > last:
            cols = run.history.columns()
            i = next(k for k, st in enumerate(cols["step"]) if st > last)
            self._take({k: v[i:] for k, v in cols.items()})

    def _update_ctx(self, run) -> None:
        if run.config is self._config:
            return
        self._config = run.config
        self.ctx = Context.from_config(
            run.config, task=getattr(self.task, "task", str(self.task)), loss_name=self.loss_name,
            baseline=self._baseline, steps_per_epoch=run.steps_per_epoch, has_dropout=self._has_dropout,
            first_layer=self._names[self._first] if self._first is not None else "",
            last_layer=self._names[self._last] if self._last is not None else "", labels=self._labels)

    def _evaluate(self, run, engine, phase: str, diverged: bool = False, step_rules: bool = True) -> None:
        self._update_ctx(run)
        raised = {w.code: w for w in run.warnings}
        for w in evaluate(self.signals, self.ctx, raised, phase, diverged, step_rules, guard=self._rule_failed):
            if w.code in raised and phase == "step":
                continue  # already shown; updated at the epoch end
            if w.code in raised and w.severity == "info":
                # a finding the end of the run lifted (a plateau it left): a note now, without a fix
                stored = raised[w.code]
                stored.severity, stored.message, stored.suggestion, stored.fix = "info", w.message, w.suggestion, {}
                engine.bus.publish(ev.WARNING, run, warning=stored, new=False)
                continue
            engine.warn(w)
        if step_rules:
            self._next_eval = time.perf_counter() + EVAL_SECONDS

    def _rule_failed(self, exc: BaseException) -> None:
        self.errors.append(exc)
        log.error("a health rule failed; the run goes on without it", exc_info=exc)

    def _trivial_loss(self, engine) -> Optional[float]:
        src = engine.train_src
        try:
            return _BASELINES[src]
        except (KeyError, TypeError):
            pass
        y = engine.target_sample() if hasattr(engine, "target_sample") else None
        if y is None:
            return None
        n_classes = getattr(self.task, "n_classes", 2)
        value = trivial_loss(y, getattr(self.task, "task", ""), self.loss_name, n_classes)
        try:
            _BASELINES[src] = value
        except TypeError:
            pass
        return value


def _has_dropout(engine) -> bool:
    return any("Dropout" in type(m).__name__ for m in engine.model.modules())
