"""One verdict per cause: a run's warnings grouped by what causes them, one fix each.

Several codes often describe one cause: a learning rate far too high shows as
``lr_too_high``, ``exploding_gradients``, ``dead_relu`` (units killed by the
overshoot) and a ``loss_plateau`` after it, each with the same "lower the lr"
fix. Shown as four warnings with four buttons they read as four problems. A
:class:`Verdict` is one cause: its strongest warning first, the others as
evidence under it, and one fix, the union of its members' fixes.

The rules, each tested on scripted warnings in ``tests/test_health_verdict.py``:

1. **Same cause, one verdict.** Codes map to a cause (:func:`cause_of`); a
   warning's fix says which when a code can have several (``dead_relu`` from
   the first step is the model's doing, units that died during training the
   step size's). Symptoms (a plateau, underfitting) join the cause the run
   has when there is one.
2. **Data before training.** Gradients that explode or a loss that goes NaN
   (or rises) next to inputs in raw units are the inputs' doing, and next to
   gradients far off scale from the first step the model's; a plateau or
   underfitting next to probabilities fed to a loss that expects logits are
   that mistake's. None of these offers a config fix: a smaller lr only hides it.
3. **No contradictions side by side.** Two verdicts whose fixes move one field
   in opposite directions (one lowers the lr, the other raises it) are not
   both offered: the one with the stronger evidence stays, the other joins it
   as evidence with its fix set aside, and the verdict says why.
4. **No no-op fixes.** A fix whose values the config already has is dropped.
5. **Fixes that know what was tried** (the run's parent, what changed since):
   a change that cured its cause but overshot (lr 1 → 0.1 stopped the loss
   rising, and now the steps are too small) is halved back, not reverted; a
   change that did not cure its cause escalates (lr ÷ 10 did not help: ÷ 100
   of where it started), and when config changes were tried twice for one
   cause and it persists, the verdict says that the cause is in the model or
   data instead of offering a third.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..config import format_value

# what each cause is, in a user's words
TITLES = {
    "label_mismatch": "the targets do not fit the loss",
    "bad_input_data": "the data has NaN or Inf values",
    "probability_outputs": "the model outputs probabilities where the loss expects logits",
    "unscaled_data": "the inputs (or regression targets) are not standardized",
    "step_too_large": "the learning rate is too high: the steps overshoot",  # (see Verdict.title)
    "model": "the model cannot learn this as it is built",
    "step_too_small": "the steps are too small: training barely moves",
    "regularisation": "the regularisation holds the model back",
    "memorising": "the model memorises the training set",
    "class_imbalance": "the classes are imbalanced",
}
# the order verdicts are shown in (and auto-fix tries them): what was found in the data first
CAUSE_ORDER = tuple(TITLES)
# how strongly a code is evidence of its cause, for choosing between contradicting fixes: a loss that
# rose or went NaN is seen directly; a still run or a flat loss has other explanations
STRENGTH = {
    "label_mismatch": 100, "bad_input_data": 95, "probability_outputs": 90, "unscaled_data": 85,
    "nan_loss": 80, "exploding_gradients": 75, "lr_too_high": 70, "dead_relu": 60, "vanishing_gradients": 60,
    "lr_too_low": 55, "underfitting": 52, "overfitting": 50, "loss_oscillation": 40, "loss_plateau": 20,
    "class_imbalance": 10,
}
SYMPTOMS = ("loss_plateau", "underfitting")
# causes only a change to the model or the data cures
NO_CONFIG_FIX = ("unscaled_data", "probability_outputs", "model")
# what a step too large for the model shows: explained by inputs or activations far off scale when those are seen
BLOWUP = ("exploding_gradients", "nan_loss", "lr_too_high", "loss_oscillation")
# causes found in the data that do not explain how training went (a rare class, NaN in the val split)
NOT_TRAINING = ("class_imbalance", "bad_input_data", "label_mismatch")
REGULARISERS = ("weight_decay", "l1", "dropout")
# fields whose values are compared on a log scale when a change is halved back
LOG_FIELDS = ("lr", "weight_decay", "l1", "grad_clip")


@dataclass
class Verdict:
    """One cause of what went wrong in a run, with the warnings that show it and one fix.

    ``warnings``: the strongest first (``primary``), the others the evidence. ``fix``: the
    ``TrainConfig`` changes to apply (may be empty: only the model or data can help).
    ``reason``: why this cause and this fix, when the rules had to choose (a contradicting
    code set aside, an escalation after a fix that did not cure it). ``set_aside``: codes
    whose own fix is not offered, with why.
    """

    cause: str
    warnings: list
    fix: dict
    suggestion: str
    reason: str = ""
    set_aside: dict = field(default_factory=dict)

    @property
    def primary(self):
        return self.warnings[0]

    @property
    def codes(self) -> list:
        return [w.code for w in self.warnings]

    @property
    def title(self) -> str:
        if self.cause == "step_too_large" and "lr" not in self.fix:
            return ("the momentum is too high: the steps swing through the valley and back" if "momentum" in self.fix
                    else "the steps overshoot")
        if self.cause == "step_too_small" and "optimizer" in self.fix:
            return "training creeps: this optimizer's steps are too small here"
        return TITLES.get(self.cause, self.cause.replace("_", " "))

    @property
    def severity(self) -> str:
        order = ("info", "warning", "error")
        return max((w.severity for w in self.warnings), key=order.index)

    def __str__(self) -> str:
        also = f" (with {', '.join(self.codes[1:])})" if len(self.warnings) > 1 else ""
        fix = ", ".join(f"{k}={format_value(v)}" for k, v in self.fix.items()) or "no config fix"
        return f"[{self.severity}] {self.title}: {self.primary.code}{also} — {self.suggestion} [{fix}]"


def cause_of(w, config=None) -> str:
    """The cause a warning points at, from its code and, where a code can have several, its fix
    (read against ``config`` when given: a plateau whose fix lowers the lr has the lr's cause)."""
    code, fix = w.code, w.fix or {}
    if code in ("label_mismatch", "bad_input_data", "probability_outputs", "unscaled_data", "class_imbalance"):
        return code
    if code in ("nan_loss", "exploding_gradients", "lr_too_high", "loss_oscillation"):
        return "step_too_large" if fix else "model"
    if code == "dead_relu":
        return "step_too_large" if "lr" in fix else "model"
    if code == "vanishing_gradients":
        return "step_too_large" if "lr" in fix else "model"  # after an overshoot it takes the lr's fix
    if code == "lr_too_low":
        return "step_too_small"
    if code == "overfitting":
        return "memorising"
    if any(k in fix for k in REGULARISERS):
        return "regularisation"
    if "optimizer" in fix:
        return "step_too_small"  # another optimizer for a run that creeps (a saddle): its lr is not comparable
    if "lr" in fix:
        return "step_too_large" if _direction("lr", fix["lr"], config) < 0 else "step_too_small"
    if "momentum" in fix:
        return "step_too_small"
    return "model"


def verdicts(run) -> list:
    """The verdicts of a run (a :class:`~nb_trainer.run.Run`, or anything with ``warnings`` and
    ``config``; ``parent`` chains to the runs before it, whose fixes are taken as tried)."""
    history = []
    parent = getattr(run, "parent", None)
    while parent is not None and hasattr(parent, "warnings") and len(history) < 4:
        history.insert(0, parent)
        parent = getattr(parent, "parent", None)
    return build(list(getattr(run, "warnings", [])), run.config, history)


def build(warnings: Sequence, config=None, history: Sequence = ()) -> list:
    """Verdicts from ``warnings`` of a run trained with ``config``; ``history``: the runs before it
    (oldest first, each with ``config`` and ``warnings``). See the module docstring for the rules."""
    warnings = [w for w in warnings if w.severity != "info"]  # notes (a plateau the run left) are no fault
    if not warnings:
        return []
    causes = {id(w): cause_of(w, config) for w in warnings}
    codes = {w.code for w in warnings}
    # rule 2: the data explains what training shows
    model_explodes = any(w.code == "exploding_gradients" and not w.fix for w in warnings)
    for w in warnings:
        if "unscaled_data" in codes and w.code in BLOWUP:
            causes[id(w)] = "unscaled_data"
        elif model_explodes and w.code in BLOWUP:
            causes[id(w)] = "model"  # activations off scale from the first step: the overshoot follows from it
        if "probability_outputs" in codes and w.code in SYMPTOMS + ("vanishing_gradients",):
            causes[id(w)] = "probability_outputs"
    groups: dict = {}
    for w in warnings:
        groups.setdefault(causes[id(w)], []).append(w)
    # rule 1: a symptom without a fix of its own joins the cause the run has
    loose = [w for w in groups.get("model", []) if w.code in SYMPTOMS]
    if loose:
        host = next((c for c in CAUSE_ORDER if c in groups and c not in NOT_TRAINING
                     and (c != "model" or any(w.code not in SYMPTOMS for w in groups["model"]))), None)
        if host is not None and host != "model":
            groups[host] += loose
            groups["model"] = [w for w in groups["model"] if w.code not in SYMPTOMS]
            if not groups["model"]:
                del groups["model"]
    out = [_verdict(cause, members) for cause, members in groups.items()]
    out = _resolve_contradictions(out, config)
    if config is not None:
        for v in out:
            _drop_no_ops(v, config)
        if history:
            for v in out:
                _knows_what_was_tried(v, config, warnings, history)
    out.sort(key=lambda v: (("error", "warning", "info").index(v.severity),
                            CAUSE_ORDER.index(v.cause) if v.cause in CAUSE_ORDER else len(CAUSE_ORDER)))
    return out


def _verdict(cause: str, members: list) -> Verdict:
    if cause in NO_CONFIG_FIX:  # the explanation first: the warnings with a config fix are its consequences
        members = sorted(members, key=lambda w: (bool(w.fix), -STRENGTH.get(w.code, 0)))
    else:
        members = sorted(members, key=lambda w: -STRENGTH.get(w.code, 0))
    fix: dict = {}
    for w in members:  # the strongest member's values win; the others add the fields it lacks
        for k, v in (w.fix or {}).items():
            fix.setdefault(k, v)
    if cause in NO_CONFIG_FIX:
        fix = {}  # the cure is in the data or the model; lowering the lr only hides it
    primary = members[0]
    suggestion = primary.suggestion if primary.fix or not fix else next(
        (w.suggestion for w in members if w.fix), primary.suggestion)
    return Verdict(cause, members, fix, suggestion)


def _direction(field: str, value, config) -> int:
    """+1 when ``value`` raises ``field`` above the config's, -1 when it lowers it, 0 otherwise."""
    if config is None or not hasattr(config, field):
        return 0
    now = getattr(config, field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(now, (int, float)):
        return 0
    return (value > now) - (value < now)


def _strength(v: Verdict) -> int:
    return max(STRENGTH.get(w.code, 0) for w in v.warnings if w.fix) if any(w.fix for w in v.warnings) else 0


def _resolve_contradictions(out: list, config) -> list:
    """Rule 3: of two verdicts that move a field in opposite directions, the stronger one stays."""
    changed = True
    while changed:
        changed = False
        for a in out:
            for b in out:
                if a is b or not a.fix or not b.fix:
                    continue
                clash = [k for k in a.fix if k in b.fix and
                         _direction(k, a.fix[k], config) * _direction(k, b.fix[k], config) < 0]
                if not clash:
                    continue
                keep, drop = (a, b) if _strength(a) >= _strength(b) else (b, a)
                field_ = clash[0]
                why = (f"{drop.primary.code} would {'raise' if _direction(field_, drop.fix[field_], config) > 0 else 'lower'} "
                       f"{field_} to {format_value(drop.fix[field_])}, against {keep.primary.code}; "
                       f"{_why_stronger(keep, drop)}")
                for w in drop.warnings:
                    keep.set_aside[w.code] = why
                keep.warnings += drop.warnings
                keep.reason = _join(keep.reason, why)
                out = [v for v in out if v is not drop]
                changed = True
                break
            if changed:
                break
    return out


def _why_stronger(keep: Verdict, drop: Verdict) -> str:
    k = keep.primary.code
    if k in ("nan_loss", "exploding_gradients", "lr_too_high"):
        seen = {"nan_loss": "the loss went non-finite", "exploding_gradients": "the gradients blew up",
                "lr_too_high": "the loss rose instead of falling"}[k]
        return (f"{seen}, which only too large a step explains; a flat or still run after that is the overshoot's "
                f"doing (saturated or dead units), so the lr goes down, not up")
    if k == "lr_too_low":
        return "the weights barely move from step to step (measured), which says more than the loss's swings"
    if k == "underfitting":
        return "the train loss itself stays near a constant prediction's, so the model is not memorising"
    if k == "overfitting":
        return "the train loss fell far below the val loss, so the model fits the training set"
    return f"{k} is the stronger evidence"


def _drop_no_ops(v: Verdict, config) -> None:
    """Rule 4."""
    for k in list(v.fix):
        if hasattr(config, k) and getattr(config, k) == v.fix[k]:
            del v.fix[k]


def _changes(before, after) -> dict:
    """``{field: (old, new)}`` between two configs (the fix that was applied, and anything else)."""
    if before is None or after is None:
        return {}
    try:
        return before.diff(after)
    except AttributeError:
        return {}


def _knows_what_was_tried(v: Verdict, config, warnings: Sequence, history: Sequence) -> None:
    """Rule 5: read what the runs before this one changed and what it did to this cause."""
    prev = history[-1]
    applied = _changes(_config(prev), config)
    if not applied:
        return
    prev_causes = _causes_of(prev)
    # a change that cured its cause and overshot: this verdict wants the field back
    for k, (old, new) in applied.items():
        if k == "lr" or k not in v.fix or not isinstance(new, (int, float)) or isinstance(new, bool):
            continue  # the lr: bracketed below, from every run tried
        back = _direction(k, v.fix[k], config)
        went = (new > old) - (new < old)
        if back and went and back != went:
            mid = _between(k, old, new)
            if mid is not None and mid != new:
                v.fix[k] = mid
                v.reason = _join(v.reason, (
                    f"the last change ({k} {format_value(old)} → {format_value(new)}) went too far: the fix goes "
                    f"halfway back, to {format_value(mid)}, not to {format_value(old)}"))
                v.suggestion = f"set {k} to {format_value(mid)}, between the last two runs' values"
    if "lr" in v.fix and v.fix.get("optimizer", config.optimizer) == config.optimizer:
        _bracket_lr(v, config, warnings, history)
    if not v.fix:
        return
    # the same cause after a change meant to cure it
    if v.cause in prev_causes and v.cause != "model":
        same = [k for k, (old, new) in applied.items() if k in v.fix and isinstance(new, (int, float))
                and _direction(k, v.fix[k], config) == (new > old) - (new < old)]
        if same:
            k = same[0]
            old, new = applied[k]
            tries = _tries(v.cause, list(history) + [_Run(config, warnings)])
            if tries >= 2:
                v.reason = _join(v.reason, (
                    f"{tries} config changes for this cause did not cure it ({k} {format_value(old)} → "
                    f"{format_value(new)} last): the cause is likely in the model or the data"))
                v.suggestion = "config changes did not cure it: " + _model_hint(v)
                v.fix = {}
            else:
                v.reason = _join(v.reason, (
                    f"{k} {format_value(old)} → {format_value(new)} did not cure it: going further, to "
                    f"{format_value(v.fix[k])}"))


class _Run:
    def __init__(self, config, warnings):
        self.config = self.initial_config = config
        self.warnings = list(warnings)


def _causes_of(run) -> set:
    return {cause_of(w, _config(run)) for w in run.warnings}


def _bracket_lr(v: Verdict, config, warnings: Sequence, history: Sequence) -> None:
    """Keep an lr fix inside what the runs so far bracket: below every lr that was too large, above
    every lr that was too small (the geometric mean of the bracket when the fix would leave it)."""
    runs = [r for r in list(history) + [_Run(config, warnings)] if _config(r).optimizer == config.optimizer]
    highs = [_config(r).lr for r in runs if "step_too_large" in _causes_of(r)]
    lows = [_config(r).lr for r in runs if "step_too_small" in _causes_of(r)]
    hi, lo = (min(highs) if highs else None), (max(lows) if lows else None)
    p = v.fix["lr"]
    if (hi is None or p < hi) and (lo is None or p > lo):
        return
    if hi is not None and lo is not None:
        if hi <= 2 * lo:
            del v.fix["lr"]
            v.reason = _join(v.reason, (
                f"lr {format_value(lo)} was too small and {format_value(hi)} too large in the runs so far: no lr "
                f"between them is left to try, so the cause is likely elsewhere"))
            v.suggestion = "no learning rate cured it: " + _model_hint(v)
            return
        mid = math.sqrt(lo * hi)
    else:
        mid = math.sqrt(config.lr * (hi if hi is not None else lo))
    mid = float(f"{mid:.2g}")
    v.reason = _join(v.reason, (
        f"the runs so far found lr {format_value(hi)} too large" if hi is not None else "the runs so far found") + (
        f"{' and' if hi is not None else ''} lr {format_value(lo)} too small" if lo is not None else "") + (
        f": the fix stays between, at {format_value(mid)}, instead of {format_value(p)}"))
    v.fix["lr"] = mid
    v.suggestion = f"set the learning rate to {format_value(mid)}, between the lrs that were too large and too small"


def _tries(cause: str, runs: Sequence) -> int:
    """How many config changes in a row (ending at the last of ``runs``) were made to a run that
    showed ``cause`` and did not cure it."""
    n = 0
    for before, after in zip(reversed(runs[:-1]), reversed(runs)):
        if cause not in _causes_of(after) or cause not in _causes_of(before):
            break
        if not _changes(_config(before), _config(after)):
            break
        n += 1
    return n


def _config(run):
    return getattr(run, "initial_config", None) or run.config


def _model_hint(v: Verdict) -> str:
    if v.cause == "step_too_large":
        return ("check the scale of the inputs and targets (standardize them), the weight initialisation, and "
                "add normalisation layers or gradient clipping")
    if v.cause == "step_too_small":
        return "check that gradients reach every layer (initialisation, activations) and that the inputs are scaled"
    if v.cause == "memorising":
        return "more training data, a smaller model, or data augmentation"
    return "change the model or the data"


def _between(k: str, old, new) -> Optional[float]:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return None
    if k in LOG_FIELDS and old > 0 and new > 0:
        mid = math.sqrt(old * new)
    elif k in LOG_FIELDS and min(old, new) == 0:
        mid = max(old, new) / 10  # from or to "off": a tenth of the setting
    else:
        mid = (old + new) / 2
    if isinstance(old, int) and isinstance(new, int) and not isinstance(old, bool):
        return int(round(mid))
    return float(f"{mid:.2g}")


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def fixable(vs: Sequence) -> list:
    """The verdicts that offer a config fix, in the order they are shown."""
    return [v for v in vs if v.fix]
