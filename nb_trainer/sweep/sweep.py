"""A sweep: many configs of one Trainer trained as Ray Tune trials, streamed back as Runs.

``Trainer.sweep(...)`` checks everything in the caller's thread, then a :class:`Sweep`
connects to Ray and runs ``Tuner.fit()`` on a thread of its own, so the kernel stays free.
Each trial is mirrored here as a :class:`~nb_trainer.Run` that grows an epoch at each
report (``sweep.runs``); the driver writes them to the Trainer's store, tagged with the
sweep's id, and publishes them on ``sweep.events`` for the panel.
"""
from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import threading
import time
from typing import Any, Optional

from .. import events as ev
from ..callbacks.base import is_improvement
from ..config import FIELDS, TrainConfig, format_value
from ..health.warning import HealthWarning
from ..run import ENDED, Run
from ..tasks import task_of
from .space import Space
from .trial import HISTORY_COLUMNS, TrialPayload, trial_config

SCHEDULERS = ("asha", "fifo")
SWEEP_STATUSES = ("starting", "running", "finished", "stopped", "failed")
ASHA_REDUCTION = 3        # ASHA keeps the best third of the trials at each rung

_ids = itertools.count(1)


class TrialError(Exception):
    """A trial's exception as its worker reported it (its type's name is the original's)."""


def _remote_error(kind: str, message: str) -> TrialError:
    cls = type(kind if kind.isidentifier() else "TrialError", (TrialError,), {})
    return cls(message)


def ranking_metric(task: str, has_val: bool) -> tuple[str, str]:
    """(the epoch-record name a sweep ranks trials by, "max" or "min"): the task's main val metric."""
    if not has_val:
        return "train_loss", "min"
    t = task_of(task)
    return "val_" + t.main, "max" if t.higher_is_better else "min"


class Sweep:
    """Trials of one Trainer on Ray Tune. Made by :meth:`Trainer.sweep`; returns at once.

    Attributes
    ----------
    id : str
        Tags the trials' records in the store (``RunRecord.sweep``).
    runs : list of Run
        One per trial that has started, in start order; each streams its epochs.
    status : str
        "starting" (connecting to Ray), "running", "finished", "stopped" or "failed".
    metric, mode : str
        What :attr:`best` ranks by: the task's main validation metric.
    error : BaseException or None
        Why a "failed" sweep failed (Ray could not start, Tune raised).
    """

    def __init__(self, trainer, space: Space, base: TrainConfig, num_samples: int, parallel: Optional[int],
                 scheduler: Any = "asha", address: Optional[str] = None):
        self.id = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{next(_ids)}"
        self.trainer = trainer
        self.space = space
        self.base = base
        self.num_samples = num_samples
        self.trials = num_samples * space.grid_size
        self.parallel = parallel
        self.scheduler = scheduler
        self.address = address
        self.metric, self.mode = ranking_metric(trainer.task, trainer.val_data is not None)
        self.runs: list[Run] = []
        self.status = "starting"
        self.error: Optional[BaseException] = None
        self.events = ev.EventBus()
        self.cluster: Optional[dict] = None
        self.started_at = time.time()
        self.first_epoch_at: Optional[float] = None     # when the first trial's first epoch arrived
        self.ended_at: Optional[float] = None
        self.result_grid = None
        self._by_trial: dict[str, Run] = {}
        self._stop = threading.Event()
        self._stop_reason = ""
        self._done = threading.Event()
        self._control = None
        self._lock = threading.RLock()
        self._store = getattr(trainer, "store", None)
        self._thread = threading.Thread(target=self._main, name=f"nbt-{self.id}", daemon=True)

    def start(self) -> "Sweep":
        self._thread.start()
        return self

    # -- the caller's side --------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> "Sweep":
        """Block until every trial has ended (or ``timeout`` s); returns the sweep."""
        self._done.wait(timeout)
        return self

    def stop(self, reason: str = "the sweep was stopped") -> None:
        """End every trial at its next step and start no new one (does not wait: :meth:`wait` does)."""
        with self._lock:
            if self._stop.is_set() or self.done:
                return
            self._stop_reason = reason
            self._stop.set()
            control = self._control
        if control is not None:
            control.stop.remote(self.id, None, reason)

    @property
    def best(self) -> Optional[Run]:
        """The trial with the best value of :attr:`metric` in any of its epochs (diverged and failed
        trials left out), or None before any epoch."""
        best, best_value = None, None
        for run in list(self.runs):
            if run.status in ("failed", "diverged"):
                continue
            value = best_value_of(run, self.metric, self.mode)
            if is_improvement(value, best_value, self.mode):
                best, best_value = run, value
        return best

    def values_of(self, run: Run) -> dict:
        """The swept fields' values of one trial."""
        return {name: getattr(run.config, name) for name in self.space.fields}

    def __repr__(self) -> str:
        ended = sum(1 for r in self.runs if r.status in ENDED)
        best = self.best
        text = f"<Sweep {self.id} {self.status} {ended}/{self.trials} trials ended"
        if best is not None:
            text += (f", best {self.metric}={best_value_of(best, self.metric, self.mode):.4g} "
                     f"({_values_text(self.values_of(best))})")
        return text + ">"

    # -- the sweep's thread -----------------------------------------------------------------
    def _main(self) -> None:
        storage = None
        try:
            from .cluster import connect
            self.cluster = connect(self.address)
            if self._stop.is_set():
                return
            from . import control
            shared = control.shared()
            with self._lock:
                self._control = shared
                if self._stop.is_set():
                    self._control.stop.remote(self.id, None, self._stop_reason)
            self.status = "running"
            storage = tempfile.mkdtemp(prefix="nbt-tune-")
            tuner = self._tuner(storage)
            self.result_grid = tuner.fit()
        except Exception as e:  # recorded on the sweep and shown; the kernel's thread has nothing to raise to
            self.error = e
        finally:
            self._finish()
            if storage is not None:
                shutil.rmtree(storage, ignore_errors=True)

    def _tuner(self, storage: str):
        import os
        from ray import tune
        # Tune's newer console output prints its experiment table even at verbose=0; the legacy output
        # (what Tune uses in notebooks anyway) takes a progress reporter: Quiet, which says nothing
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        from .driver import NO_LOGGERS, Quiet, StopSweep, TrialResults
        from .trial import run_trial
        t = self.trainer
        payload = TrialPayload(
            model=_cpu_copy(t.model), initial_state={k: v.detach().to("cpu") for k, v in t.initial_state.items()},
            train=t._sweep_data["train"], val=t._sweep_data["val"],
            trainer_kwargs={k: v for k, v in t._sweep_data.items() if k not in ("train", "val")},
            base=self.base, metric=self.metric, control=self._control, sweep_id=self.id)
        trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), {"cpu": 1})
        config = tune.TuneConfig(metric=self.metric, mode=self.mode, scheduler=self._make_scheduler(),
                                 num_samples=self.num_samples, max_concurrent_trials=self.parallel,
                                 reuse_actors=True)
        run_config = tune.RunConfig(name=self.id, storage_path=storage, callbacks=[TrialResults(self)] + [c() for c in NO_LOGGERS],
                                    stop=StopSweep(self._stop), verbose=0, progress_reporter=Quiet(),
                                    log_to_file=False,
                                    failure_config=tune.FailureConfig(max_failures=0))
        return tune.Tuner(trainable, param_space=self.space.to_tune(), tune_config=config, run_config=run_config)

    def _make_scheduler(self):
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
        if isinstance(self.scheduler, TrialScheduler):
            return self.scheduler
        if self.scheduler == "fifo":
            return FIFOScheduler()
        epochs = max([self.base.epochs] + [int(v) for v in self.space.grid.get("epochs", [])]
                     + [int(getattr(self.space.sampled.get("epochs"), "high", 0) or 0)])
        # a rung every ASHA_REDUCTION-fold of epochs from a quarter of the run: weak trials are judged after
        # enough epochs to have shown their slope, and the best ones always train to the end. ASHA stops a
        # trial once it reaches max_t: one past the last epoch, so a trial that trains to its end finishes
        return ASHAScheduler(time_attr="epoch", max_t=epochs + 1, grace_period=max(1, epochs // 4),
                             reduction_factor=ASHA_REDUCTION)

    def _finish(self) -> None:
        reason = self._stop_reason or "the sweep ended before the trial did"
        for run in list(self.runs):
            if run.status not in ENDED:
                self._end(run, "stopped" if self._stop.is_set() or self.error is None else "failed",
                          stop_reason=reason)
        if self._store is not None:
            self._store.release()
        if self._control is not None:
            self._control.forget.remote(self.id)      # the trials are gone; so are their stop flags
        if self.cluster is not None:
            # the trials' worker processes end with their actors: the next sweep's trials get idle ones
            from .cluster import refill_idle_workers
            refill_idle_workers(len({(r.worker.get("host"), r.worker.get("pid")) for r in self.runs
                                     if getattr(r, "worker", None)}))
        with self._lock:
            if self.error is not None:
                self.status = "failed"
            elif self._stop.is_set():
                self.status = "stopped"
            else:
                self.status = "finished"
            self.ended_at = time.time()
            self._done.set()
        self.events.publish(ev.RUN_ENDED, None, sweep=self)

    # -- Tune's events (TrialResults calls these on fit()'s thread) ------------------------------
    def _run_of(self, trial_id: str, values: dict) -> Run:
        run = self._by_trial.get(trial_id)
        if run is None:
            config = trial_config(values, self.base)
            number = len(self.runs) + 1
            note = f"trial {number}: " + _values_text({k: getattr(config, k) for k in self.space.fields})
            run = Run(config, task=self.trainer.task, note=note)
            run.sweep_id = self.id
            run.trial_id = trial_id
            run.trial_number = number
            run.status = "running"
            run.started_at = time.time()
            self._by_trial[trial_id] = run
            self.runs.append(run)
            self._write(self._store.record_start if self._store else None, run, type(self.trainer.model).__name__)
            self.events.publish(ev.RUN_STARTED, run)
        return run

    def _trial_started(self, trial_id: str, values: dict) -> None:
        self._run_of(trial_id, values)

    def _trial_result(self, trial_id: str, values: dict, result: dict) -> None:
        run = self._run_of(trial_id, values)
        if run.status in ENDED:
            return
        info = result.get("nbt") or {}
        apply_report(run, info)
        if info.get("record") is not None:
            if self.first_epoch_at is None:
                self.first_epoch_at = time.time()
            self._write(self._store.record_epoch if self._store else None, run)
            self.events.publish(ev.EPOCH_ENDED, run, record=info["record"])
        status = info.get("status", "running")
        if status in ENDED:
            error = info.get("error")
            self._end(run, status, stop_reason=info.get("stop_reason") or "",
                      error=_remote_error(error["type"], error["message"]) if error else None,
                      ended_at=info.get("ended_at"))
        elif result.get("done") and self._stop.is_set():
            self._end(run, "stopped", stop_reason=self._stop_reason)

    def _trial_ended(self, trial_id: str, error: Optional[BaseException]) -> None:
        run = self._by_trial.get(trial_id)
        if run is None or run.status in ENDED:
            return
        if error is not None:
            self._end(run, "failed", error=error)
            return
        if self._stop.is_set():
            reason = self._stop_reason
        elif len(run.epochs) >= run.config.epochs:      # a scheduler ended it at its last epoch
            self._end(run, "finished")
            return
        else:
            reason = (f"stopped early by the ASHA scheduler after epoch {len(run.epochs)}: its {self.metric} "
                      f"trailed the other trials'")
        self._end(run, "stopped", stop_reason=reason)
        if self._control is not None:
            self._control.stop.remote(self.id, trial_id, reason)   # its worker is free now, not at its next epoch end

    def _end(self, run: Run, status: str, stop_reason: str = "", error: Optional[BaseException] = None,
             ended_at: Optional[float] = None) -> None:
        with self._lock:
            if run.status in ENDED:
                return
            run.stop_reason = stop_reason or run.stop_reason
            run.error = error
            run.ended_at = ended_at or time.time()
            run.outcome = status
            self._write(self._store.record_end if self._store else None, run, None)
            run.status = status
            run._done.set()
        self.events.publish(ev.RUN_ENDED, run)

    def _write(self, fn, *args) -> None:
        """One store write; a failure is kept on the store and training goes on (as for a run)."""
        if fn is None:
            return
        import sqlite3
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as e:
            self._store.last_error = e


def apply_report(run: Run, info: dict) -> None:
    """Bring the driver's mirror ``run`` up to what one trial report says."""
    record = info.get("record")
    if record is not None and len(run.epochs) < info.get("epochs", len(run.epochs) + 1):
        run.epochs.append(dict(record))
    if info.get("config"):
        run.config = TrainConfig.from_dict({k: v for k, v in info["config"].items() if k in FIELDS})
    run.warnings = [HealthWarning.from_dict(w) for w in info.get("warnings", ())]
    history = info.get("history") or {}
    if history.get("step"):
        if info.get("layer_names"):
            run.history.layer_names = list(info["layer_names"])
        cols = {c: list(history.get(c, ())) for c in HISTORY_COLUMNS}
        cols["layer_norms"] = [[] for _ in cols["step"]]
        run.history.extend(**cols)
    for name in ("step", "epoch", "steps_per_epoch", "best_epoch", "best_val_loss"):
        if info.get(name) is not None:
            setattr(run, name, info[name])
    if info.get("started_at"):
        run.started_at = info["started_at"]
    if info.get("worker"):
        run.worker = dict(info["worker"])     # where the trial trained: {"host", "pid"}


def best_value_of(run, metric: str, mode: str) -> Optional[float]:
    values = [e.get(metric) for e in run.epochs]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _values_text(values: dict) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items())


def _cpu_copy(model):
    """The model's structure for the trials, on the CPU (its weights are replaced by the initial ones)."""
    import copy
    import torch
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu":
        return model
    return copy.deepcopy(model).to("cpu")
