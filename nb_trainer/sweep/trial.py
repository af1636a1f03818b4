"""One trial, on a Ray worker: a Trainer made from the same model, data and wiring, one run, an epoch a report.

:func:`run_trial` is Tune's function trainable. What every trial shares (the model, its
initial weights, the data, how the Trainer was wired, the fixed config) is one
:class:`TrialPayload`, put into Ray's object store once by ``tune.with_parameters``; a trial
gets only its own values in ``config``. On the worker it builds an
:class:`~nb_trainer.Trainer` (``store=None``: trials never touch the SQLite file, the driver
writes it) and starts one run with the engine every run uses. :class:`TrialReporter`, a
callback of that run, sends each finished epoch with ``tune.report``: the epoch record, the
run's warnings, the new steps of its history (for the live figure) and its status; the last
report says how the run ended. A run whose health verdict is ``nan_loss`` or ``diverged``
ends at once.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..callbacks.base import Callback
from ..config import FIELDS, TrainConfig

HISTORY_POINTS = 400     # per report: the figure needs the loss curve's shape, not every step
WAIT_SECONDS = 5.0       # one long poll of the control actor
HISTORY_COLUMNS = ("step", "epoch", "loss", "grad_norm", "lr")


@dataclass
class TrialPayload:
    """What every trial of a sweep is built from (shipped to the cluster once)."""

    model: Any                       # the nn.Module (its structure; weights come from initial_state)
    initial_state: dict              # the Trainer's initial weights, on the CPU
    train: Any                       # the data as the user gave it to the Trainer
    val: Any
    trainer_kwargs: dict             # task, loss, target, inputs, step, diagnostics
    base: TrainConfig                # the fixed fields; each trial's own values go over them
    metric: str                      # the value Tune ranks trials by (the task's main metric)
    control: Any = None              # the SweepControl actor (shared by the sweeps of a Ray connection)
    sweep_id: str = ""               # the sweep's id: its flags in that actor
    threads: int = 1                 # torch threads per trial
    extra: dict = field(default_factory=dict)


def trial_config(values: dict, base: TrainConfig) -> TrainConfig:
    """A trial's config: its sampled / grid values over ``base`` (Tune may hand back numpy scalars)."""
    clean = {}
    for name, v in values.items():
        if name not in FIELDS:
            continue
        if hasattr(v, "item"):
            v = v.item()
        if FIELDS[name].kind == "int" and isinstance(v, float) and v.is_integer():
            v = int(v)
        clean[name] = v
    return TrainConfig.from_dict(clean, base=base)


def _finite(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


class TrialReporter(Callback):
    """Reports a run to Tune: one ``tune.report`` per epoch and one when the run ends."""

    def __init__(self, metric: str, report=None, history_points: int = HISTORY_POINTS):
        self.metric = metric
        self._report = report       # tune.report, or a stand-in in tests
        self.history_points = history_points
        self._sent_step = -1
        self.stop_reason: Optional[str] = None    # why the driver asked this trial to stop
        self.diverged_reason: Optional[str] = None
        self.ended_by_tune = False

    def report(self, metrics: dict) -> None:
        if self._report is None:
            from ray import tune
            self._report = tune.report
        try:
            self._report(metrics)
        except SystemExit:
            # Tune is ending this trial (the sweep was stopped, or the scheduler stopped it): its report
            # leaves by sys.exit, meant to end the training thread; this run ends with it
            self.ended_by_tune = True
            raise

    def on_epoch_end(self, run, engine, record: dict) -> None:
        nan = run.warning("nan_loss")
        if nan is not None and self.diverged_reason is None:
            # the val loss went non-finite while the train loss did not (the engine ends a run whose
            # train loss does): the trial has no future either
            self.diverged_reason = f"nan_loss: {nan.message}"
            engine.request_stop(self.diverged_reason)
        self.report(self.result(run, "running", record))

    def on_run_end(self, run, engine) -> None:
        if self.ended_by_tune:
            return      # no one is listening any more
        status = run.outcome or run.status
        if status == "stopped" and self.diverged_reason:
            status = "diverged"
        try:
            self.report(self.result(run, status, None))
        except SystemExit:
            pass        # Tune took the last report and ended the trial (ended_by_tune): the end hooks finish

    def result(self, run, status: str, record: Optional[dict]) -> dict:
        """What one report carries: the epoch record's values at the top (Tune's metric among them)
        and, under ``"nbt"``, what the driver needs to mirror the run."""
        last = record if record is not None else (run.epochs[-1] if run.epochs else {})
        out: dict = {k: v for k, v in last.items()}
        out["epoch"] = int(last.get("epoch", len(run.epochs)))
        out[self.metric] = _finite(last.get(self.metric))
        error = run.error
        out["nbt"] = {
            "status": status,
            "record": dict(record) if record is not None else None,
            "epochs": len(run.epochs),
            "step": run.step,
            "epoch": run.epoch,
            "steps_per_epoch": run.steps_per_epoch,
            "best_epoch": run.best_epoch,
            "best_val_loss": run.best_val_loss,
            "warnings": [w.to_dict() for w in run.warnings],
            "history": self._new_history(run),
            "layer_names": list(run.history.layer_names),
            "config": run.config.to_dict(),
            "stop_reason": self.stop_reason if status == "stopped" and self.stop_reason else
            (self.diverged_reason if status == "diverged" and self.diverged_reason else run.stop_reason),
            "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "worker": {"host": socket.gethostname(), "pid": os.getpid(), "cpu_s": time.process_time()},
        }
        return out

    def _new_history(self, run) -> dict:
        cols = run.history.columns(*HISTORY_COLUMNS)
        steps = cols["step"]
        start = next((i for i, s in enumerate(steps) if s > self._sent_step), len(steps))
        n = len(steps) - start
        if n <= 0:
            return {c: [] for c in HISTORY_COLUMNS}
        stride = max(1, -(-n // self.history_points))
        keep = list(range(start, len(steps), stride))
        if keep[-1] != len(steps) - 1:
            keep.append(len(steps) - 1)     # the newest point is what the figure ends on
        self._sent_step = steps[-1]
        return {c: [cols[c][i] for i in keep] for c in HISTORY_COLUMNS}


def _watch(control, sweep_id: str, trial_id: str, trainer, reporter: TrialReporter, done: threading.Event) -> None:
    """Wait on the control actor; told to stop, stop the run (at its next step)."""
    import ray
    while not done.is_set():
        try:
            reason = ray.get(control.wait.remote(sweep_id, trial_id, WAIT_SECONDS))
        except ray.exceptions.RayError:
            return      # the driver (and its actor) is gone: Tune ends this trial
        if reason is not None:
            reporter.stop_reason = reason
            trainer.stop()
            return


def build_trainer(payload: TrialPayload):
    """The worker's Trainer: the model with the initial weights, the data and the wiring of the original."""
    import torch
    from ..session import Trainer
    model = payload.model
    model.load_state_dict(payload.initial_state)
    kwargs = dict(payload.trainer_kwargs)
    device = "cuda" if torch.cuda.is_available() and _has_gpu() else "cpu"
    return Trainer(model, payload.train, payload.val, device=device, store=None, seed=payload.base.seed, **kwargs)


def _has_gpu() -> bool:
    import ray
    return bool(ray.get_gpu_ids())    # the GPUs Ray gave this trial (none unless it asked for one)


def run_trial(config: dict, payload: TrialPayload) -> None:
    """Tune's function trainable: one run of a Trainer rebuilt on this worker, reported each epoch."""
    import torch
    from ray import tune
    torch.set_num_threads(payload.threads)
    trainer = build_trainer(payload)
    cfg = trial_config(config, payload.base)
    reporter = TrialReporter(payload.metric, tune.report)
    trainer.callbacks.append(reporter)
    done = threading.Event()
    run = trainer.start(cfg)
    if payload.control is not None:
        trial_id = tune.get_context().get_trial_id()
        threading.Thread(target=_watch, args=(payload.control, payload.sweep_id, trial_id, trainer, reporter, done),
                         name="nbt-trial-stop", daemon=True).start()
    try:
        run.wait()
        trainer.wait()
    finally:
        done.set()
    if reporter.ended_by_tune:
        # Tune ended the trial from the run's thread (its report raised SystemExit there); end this one,
        # Tune's own, the same way: returning would make Tune's wrapper report once more and wait for an
        # answer that never comes (the actor could then not be reused for the next trial)
        raise SystemExit(0)
