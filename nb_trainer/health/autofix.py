"""Auto-repair: train, apply the best-supported fix, retrain from the same initial weights.

:func:`auto_fix` is what ``Trainer.auto_fix`` and the panel's **Auto-fix**
button run. Each round reads the last run's verdicts (``verdict.py``: one per
cause, contradictions resolved, fixes that know what the runs before tried),
takes the first that offers a config fix and has not been tried from this
config, and starts a new run with it. It stops when no verdict offers a fix,
or after ``max_runs`` runs. Every run's ``note`` says what it changed and why.

A fix that made the run worse (its main validation metric dropped) and did
not cure its own cause is not built on: the next round starts again from the
best run so far, with the next candidate. The runs are returned oldest first;
the last one is where auto-repair stopped, which is not always the best one
(``best_run`` picks it).
"""
from __future__ import annotations

import math
from typing import Optional

from ..config import describe_change, format_value
from ..tasks import main_metric
from .verdict import verdicts

# "no worse" leaves room for the noise of a retrained run: a hundredth of accuracy/F1/R²
METRIC_TOLERANCE = 0.01


def final_metric(run) -> float:
    """The run's main validation metric for the weights it ended with: the best epoch's when early
    stopping restored them, else the last epoch's. -inf for a run with no finite value (diverged at
    once, failed); lower-is-better metrics are negated, so larger is always better."""
    name, higher = main_metric(run.task or "classification")
    records = [e for e in run.epochs if isinstance(e.get(name), (int, float)) and math.isfinite(e[name])]
    if not records:
        name, higher = "val_loss", False
        records = [e for e in run.epochs if isinstance(e.get(name), (int, float)) and math.isfinite(e[name])]
        if not records:
            name = "train_loss"
            records = [e for e in run.epochs if isinstance(e.get(name), (int, float)) and math.isfinite(e[name])]
    if not records:
        return float("-inf")
    chosen = records[-1]
    if getattr(run.config, "patience", 0) > 0 and run.best_epoch is not None:
        chosen = next((e for e in records if e.get("epoch") == run.best_epoch), chosen)
    value = float(chosen[name])
    return value if higher else -value


def no_worse(after, before, tolerance: float = METRIC_TOLERANCE) -> bool:
    a, b = final_metric(after), final_metric(before)
    if b == float("-inf"):
        return True
    return a >= b - tolerance * max(1.0, abs(b))


def best_run(runs: list):
    """The run with the best main validation metric (the first of equals)."""
    return max(runs, key=final_metric) if runs else None


def auto_fix(trainer, max_runs: int = 5, first=None, **config) -> list:
    """Train with ``config`` (or start from ``first``, a finished run of ``trainer``), then apply the
    best-supported fix and retrain, until no verdict offers a fix or there are ``max_runs`` runs.
    Blocks until the last run ends; returns the runs, oldest first."""
    if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1:
        raise ValueError(f"max_runs={max_runs!r} is not accepted: max_runs must be an integer >= 1")
    if first is None:
        run = trainer.start(note=f"auto-fix 1/{max_runs}: as given", **config)
        trainer.wait()
    else:
        run = first
    runs = [run]
    tried: set = set()
    while len(runs) < max_runs:
        base = run
        best = best_run(runs)
        if base is not best and not _cured(base) and not no_worse(base, best):
            base = best  # the last fix made things worse and cured nothing: build on the best run instead
        choice = _choose(base, tried)
        if choice is None and base is not run:
            base, choice = run, _choose(run, tried)
        if choice is None:
            break
        v, new_config = choice
        tried.add(_key(base.config, v.fix))
        why = f"{v.title} ({', '.join(v.codes)})" + (f"; {v.reason}" if v.reason else "")
        note = (f"auto-fix {len(runs) + 1}/{max_runs}: {describe_change(base.config, new_config)}"
                f"{' from run ' + str(runs.index(base) + 1) if base is not run else ''} because {why}")
        nxt = trainer.start(config=new_config, note=note)
        trainer.wait()
        runs.append(nxt)
        run = nxt
    return runs


def _choose(run, tried: set) -> Optional[tuple]:
    for v in verdicts(run):
        if not v.fix:
            continue
        new_config = run.config.replace(**v.fix)
        if new_config == run.config or _key(run.config, v.fix) in tried:
            continue
        return v, new_config
    return None


def _key(config, fix: dict) -> tuple:
    """A (config, fix) pair, so that the same fix is not tried twice from the same config."""
    return repr(sorted(config.to_dict().items())), tuple(sorted((k, format_value(v)) for k, v in fix.items()))


def _cured(run) -> bool:
    """Whether the run's parent's fixable causes are gone from it."""
    parent = getattr(run, "parent", None)
    if parent is None:
        return True
    before = {v.cause for v in verdicts(parent) if v.fix}
    after = {v.cause for v in verdicts(run)}
    return not (before & after)
