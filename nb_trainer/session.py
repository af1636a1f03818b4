"""The Trainer: a model, its data, its initial weights, and the runs made from them.

Each run trains on a worker thread of its own, started by :meth:`Trainer.start`
and joined before the next one starts, so at most one run of a Trainer is
alive at a time and the caller's thread is never blocked by training.
"""
from __future__ import annotations

import copy
import threading
import time
import weakref
from typing import Any, Optional

import torch
from torch import nn

from . import door
from . import events as ev
from .config import FIELDS, TrainConfig, check_names, describe_change
from .callbacks import Callback
from .data import TaskInfo, make_source
from .engine import VAL_BATCH, Engine, RunControl
from .health.data_checks import check_outputs, merge_splits, preflight
from .optim import dropout_defaults
from .precision import check_precision
from .schedules import needs_length
from .run import Run
from .step import evaluate as evaluate_batches
from .tasks import TASKS
from .wiring import inputs_of, targets_of, wire

TASK_CHOICES = ("auto",) + TASKS

# Every live Trainer, so %nbstop can stop them all.
_TRAINERS: "weakref.WeakSet[Trainer]" = weakref.WeakSet()


resolve_device = door.resolve_device


class Trainer:
    """Train ``model`` on ``train`` (and evaluate on ``val``) in the background.

    Parameters
    ----------
    model : torch.nn.Module
    train, val : the data: an ``(X, y)`` pair, an ``(x1, ..., xk, y)`` or ``(x, y, sample_weight)``
        tuple or a dict of arrays (tensors or numpy arrays), a torch ``Dataset`` or
        ``IterableDataset``, or a ``DataLoader`` (its batches tuples or dicts, e.g. Hugging Face's)
    task : {"auto", "classification", "binary", "multilabel", "regression", "causal_lm"}
    loss : None (by task, or the model's own ``loss`` output when it returns one), a name
        ("cross_entropy", "bce", "mse", "mae", "huber", "causal_lm") or a callable ``loss(pred, target)``
    device : "auto" (CUDA when present, else CPU), or a torch device
    seed : default seed of every run (shuffling and dropout)
    store : folder where run records are kept; None keeps nothing on disk
    diagnostics : run the health checks (on by default)
    target : the key of the target in dict batches (default: the first of "labels", "label",
        "target", "targets", "y" present)
    inputs : how many leading elements of a tuple batch are the model's inputs (default: the
        required positional parameters of ``model.forward``)
    step : ``step(model, batch)`` returning the loss, or ``(loss, outputs, targets)``: your own
        forward and loss; the optimizer, clipping, diagnostics, rollback and the panel still apply
    **defaults : TrainConfig fields used by every :meth:`start` unless overridden

    Examples
    --------
    >>> t = Trainer(model, (X_train, y_train), (X_val, y_val))
    >>> run = t.start(lr=3e-3, optimizer="adam", epochs=20)   # returns at once
    >>> t.wait().epochs[-1]["val_accuracy"]
    """

    def __init__(self, model: nn.Module, train, val=None, task: str = "auto", loss=None,
                 device="auto", seed: int = 0, store: Optional[str] = ".nb_trainer",
                 diagnostics: bool = True, target: Optional[str] = None, inputs: Optional[int] = None,
                 step=None, **defaults: Any):
        door.check_model(model)
        if task not in TASK_CHOICES:
            raise ValueError(f"task={task!r} is not accepted: use one of {', '.join(map(repr, TASK_CHOICES))}")
        check_names(defaults)
        self.defaults = TrainConfig.from_dict({**defaults, "seed": defaults.get("seed", seed)})
        door.check_store(store)
        door.check_data(train, "train")
        door.check_data(val, "val")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.train_data = make_source(train, "train", self.device, model)
        self.val_data = None if val is None else make_source(val, "val", self.device, model)
        train_sample = self.train_data.sample()
        val_sample = None if self.val_data is None else self.val_data.sample()
        wiring = wire(model, train_sample, val_sample, task=task, loss=loss, target=target, inputs=inputs,
                      step=step)
        self.step = wiring.step
        self.layout = wiring.layout
        self.task_info: TaskInfo = wiring.task
        self.task = self.task_info.task
        self.loss_name = wiring.loss_name
        self.loss_from = wiring.loss_from
        self.loss_fn = self.step.loss_fn
        self._train_targets = wiring.targets
        self.data_warnings = preflight("train", inputs_of(self.step, train_sample), wiring.targets,
                                       self.task_info, self.loss_name)
        if val_sample is not None:
            self.data_warnings += preflight("val", inputs_of(self.step, val_sample),
                                            targets_of(self.step, val_sample), self.task_info, self.loss_name)
        self.data_warnings += check_outputs(wiring.output, self.task_info, self.loss_name, self.loss_from, model)
        self.data_warnings = merge_splits(self.data_warnings)  # a run keeps one warning per code
        # what a sweep's trials rebuild this Trainer from on their workers
        self._sweep_data = {"train": train, "val": val, "task": task, "loss": loss, "target": target,
                            "inputs": inputs, "step": step, "diagnostics": diagnostics}
        self.sweeps: list = []
        self.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._dropout_p = dropout_defaults(model)
        self.has_dropout = bool(self._dropout_p)
        self.diagnostics = diagnostics
        self.events = ev.EventBus()
        self.runs: list[Run] = []
        self.callbacks: list[Callback] = []
        self._thread: Optional[threading.Thread] = None
        self._control: Optional[RunControl] = None
        self._lock = threading.RLock()
        self._debounce: Optional[threading.Timer] = None
        self._panel = None
        self.store = None
        self._store_path = store
        if store is not None:
            self._open_store(store)
        _TRAINERS.add(self)

    def target_sample(self) -> Optional[torch.Tensor]:
        """The targets of the training sample the Trainer looked at (the health rules' baseline)."""
        return self._train_targets

    def _open_store(self, path) -> None:
        try:
            from .store import RunStore, StoreCallback
        except ImportError:  # the store module is optional until it lands
            return
        self.store = RunStore.open_or_warn(path)
        if self.store is not None:
            self.callbacks.append(StoreCallback(self.store, self))

    # -- runs ----------------------------------------------------------------
    @property
    def current(self) -> Optional[Run]:
        """The latest run, running or not."""
        return self.runs[-1] if self.runs else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def config(self, **changes: Any) -> TrainConfig:
        """The config a :meth:`start` with ``changes`` would use (validated)."""
        base = self.current.config if self.current is not None else self.defaults
        return TrainConfig.from_dict(changes, base=base)

    def start(self, config: Optional[TrainConfig] = None, from_run=None, *, note: Optional[str] = None,
              **changes: Any) -> Run:
        """Start a new run from the initial weights; returns at once.

        ``changes`` are ``TrainConfig`` fields applied over the previous run's
        config (or the Trainer's defaults). A running run is stopped first.
        Bad values raise ``ValueError`` here, before anything stops.

        ``from_run`` continues a run instead of starting from the initial weights:
        its number in :attr:`runs` (1 is the first), a :class:`Run`, or a stored
        record from ``nbt.load_runs`` (also of an earlier kernel). The new run
        starts from that run's final weights, with a fresh optimizer and schedule.
        ``note``: what the run is for (default: what changed since the previous run).
        """
        door.check_config_arg(config)
        door.check_trainable(self.model)
        if config is None:
            config = self.config(**changes)
        elif changes:
            config = config.replace(**changes)
        self._check_runnable(config)
        with self._lock:
            self._cancel_debounce()
            self.stop()
            self.wait()
            start_state, lineage = self._continuation(from_run)
            previous = self.current
            if note is None:
                note = "first run" if previous is None else describe_change(previous.config, config)
                if lineage is not None:
                    note = f"continues {lineage['label']}" + ("" if note == "same config" else f"; {note}")
            run = Run(config, task=self.task, parent=previous, note=note)
            run.continued_from = lineage
            control = RunControl()
            callbacks = list(self.callbacks)
            if self.diagnostics:
                from .health.monitor import HealthMonitor
                callbacks.insert(0, HealthMonitor(self.task_info, self.loss_name))
            engine = Engine(run, self.model, self.train_data, self.val_data, self.task_info,
                            self.step, self.initial_state, self.events, control,
                            callbacks=callbacks, data_warnings=self.data_warnings,
                            dropout_p=self._dropout_p, diagnostics=self.diagnostics,
                            targets=self._train_targets)
            if start_state is not None:
                engine.start_state = start_state
            run.status = "running"
            self.runs.append(run)
            self._forget_final_states()
            self._control = control
            self._thread = threading.Thread(target=engine.run, name=f"nbt-run-{run.id}", daemon=True)
            self._thread.start()
            return run

    KEEP_FINAL_STATES = 5  # runs whose final weights stay in memory for continuing (older ones: the store)

    def _forget_final_states(self) -> None:
        for old in self.runs[:-self.KEEP_FINAL_STATES - 1]:
            old.final_state = None

    def _continuation(self, from_run) -> tuple:
        """``(weights, lineage)`` of the run to continue, or ``(None, None)``; a clear error when it cannot."""
        if from_run is None:
            return None, None
        if isinstance(from_run, bool):
            raise TypeError(f"from_run={from_run!r} is not accepted: give a run number, a Run, or a stored record")
        if isinstance(from_run, int):
            if not 1 <= from_run <= len(self.runs):
                have = f"runs #1 to #{len(self.runs)}" if self.runs else "no runs yet"
                raise ValueError(f"from_run={from_run} is not a run of this Trainer: it has {have}")
            from_run = self.runs[from_run - 1]
        if isinstance(from_run, Run):
            number = next((i + 1 for i, r in enumerate(self.runs) if r is from_run), None)
            label = f"#{number}" if number else f"run {from_run.id}"
            if not from_run.done:
                raise ValueError(f"from_run: {label} is still training; stop it or wait for it first")
            state = from_run.final_state
            if state is None and self.store is not None and hasattr(self.store, "final_weights"):
                state = self.store.final_weights(from_run)
            if state is None:
                why = ("it failed before training" if from_run.status == "failed" else
                       f"only the last {self.KEEP_FINAL_STATES} runs' weights are kept in memory, and there is no "
                       "store to read them from")
                raise ValueError(f"from_run: {label} has no final weights to continue from ({why})")
            epoch = from_run.final_epoch if from_run.final_epoch is not None else len(from_run.epochs)
            lineage = {"id": from_run.id, "number": number, "epoch": epoch, "step": from_run.step,
                       "label": label}
        elif hasattr(from_run, "final_state_dict") and hasattr(from_run, "id"):
            state = from_run.final_state_dict()   # a stored record, also of an earlier kernel
            epoch = getattr(from_run, "final_epoch", None) or len(getattr(from_run, "epochs", []))
            lineage = {"id": from_run.id, "number": None, "epoch": epoch,
                       "step": getattr(from_run, "steps", None) or 0, "label": f"run {from_run.id}"}
        else:
            raise TypeError(f"from_run={from_run!r} is not accepted: give a run number (1 is the first), a Run "
                            "of this Trainer, or a record from nbt.load_runs()")
        mine = self.model.state_dict()
        bad = [k for k in mine if k not in state or tuple(state[k].shape) != tuple(mine[k].shape)]
        if bad or len(state) != len(mine):
            raise ValueError(f"from_run: {lineage['label']}'s weights do not fit this model "
                             f"(e.g. {(bad or sorted(set(state) - set(mine)))[0]!r}): it was trained on another "
                             "architecture")
        return {k: v.to(mine[k].device) for k, v in state.items()}, lineage

    def _check_runnable(self, config: TrainConfig) -> None:
        """Refuse, in the caller's thread, a config this Trainer's device or data cannot run."""
        check_precision(config.precision, self.device)
        if needs_length(config) and self.train_data.num_batches(config.batch_size) is None:
            raise ValueError(f"schedule={config.schedule!r} with warmup={config.warmup:g} needs the number of steps "
                             "in a run, and the training data is a stream without a length: use "
                             "schedule='constant' or 'plateau' with warmup=0")

    def stop(self, reason: str = "") -> None:
        """Ask the current run to stop at its next step (does not wait); ``reason`` becomes its stop reason."""
        self._cancel_debounce()
        if self._control is not None and self.running:
            self._control.request_stop(reason)

    def pause(self) -> None:
        if self._control is not None and self.running:
            self._control.pause()

    def resume(self) -> None:
        if self._control is not None:
            self._control.resume()

    def wait(self, timeout: Optional[float] = None) -> Optional[Run]:
        """Block until the current run ends (or ``timeout``); returns it."""
        try:
            return self._wait(timeout)
        except KeyboardInterrupt as e:
            # the kernel's interrupt: stop the run, and end the cell with one line instead of a
            # traceback from threading.py
            from .interrupt import interrupted
            raise interrupted(self, e) from None

    def _wait(self, timeout: Optional[float]) -> Optional[Run]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                debounce = self._debounce
            if debounce is None:
                break
            debounce.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return self.current
            with self._lock:
                if self._debounce is debounce:
                    break
        thread, run = self._thread, self.current
        if thread is not None and thread is not threading.current_thread():
            # wait on the run's event first, not in join(): a KeyboardInterrupt (the kernel's
            # interrupt) inside Thread.join() marks the thread stopped while it still runs (CPython 3.11)
            if run is not None:
                run.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if run is None or run.done:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.current

    def change(self, **changes: Any) -> None:
        """Apply live-changeable fields to the running run at its next step.

        Fields that cannot change live (batch size, epochs, optimizer, …)
        raise ``ValueError``; use :meth:`restart` for those.
        """
        from .config import LIVE_FIELDS
        check_names(changes)
        not_live = [k for k in changes if k not in LIVE_FIELDS]
        if not_live:
            raise ValueError(f"{not_live[0]} cannot change while a run trains; live fields are: "
                             + ", ".join(LIVE_FIELDS))
        run = self.current
        if run is None or not self.running:
            raise RuntimeError("no run is training: use start()")
        run.config.replace(**changes)  # validate in the caller's thread
        self._control.change(changes)

    def restart(self, delay: float = 0.3, **changes: Any) -> None:
        """Start a new run with ``changes`` after ``delay`` s of quiet (debounced).

        Repeated calls within ``delay`` merge their changes and start one run,
        which is what a dragged slider needs.
        """
        door.check_delay(delay)
        with self._lock:
            pending = getattr(self, "_pending_changes", {}) if self._debounce is not None else {}
            merged = {**pending, **changes}
            self._check_runnable(self.config(**merged))  # raises now, in the caller's thread, on a bad value
            self._cancel_debounce()
            if self._control is not None and self.running:
                self._control.request_stop()  # stop at once; start after the quiet period
            self._pending_changes = merged
            timer = threading.Timer(delay, self._fire_restart)
            timer.daemon = True
            timer.name = "nbt-debounce"
            self._debounce = timer
            timer.start()

    def _fire_restart(self) -> None:
        with self._lock:
            if self._debounce is not threading.current_thread():
                return
            changes = self._pending_changes
            self._pending_changes = {}
            self._debounce = None
            try:
                self.start(**changes)
            except Exception as e:  # shown on the panel through the run list; nothing to raise to
                run = Run(self.config(), task=self.task, note=f"could not start: {e}")
                run.status, run.error = "failed", e
                run._done.set()
                self.runs.append(run)
                self.events.publish(ev.RUN_ENDED, run)

    def _cancel_debounce(self) -> None:
        timer = self._debounce
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
            self._debounce = None

    def auto_fix(self, max_runs: int = 5, **config: Any) -> list:
        """Train with ``config``, apply the best-supported health fix, retrain from the same initial
        weights, until no warning offers a fix or there are ``max_runs`` runs. Blocks; returns the
        runs, oldest first, each with a ``note`` saying what it changed and why."""
        from .health.autofix import auto_fix
        return auto_fix(self, max_runs=max_runs, **config)

    # -- weights ----------------------------------------------------------------
    def reset(self) -> None:
        """Stop, and put the Trainer's initial weights back into the model."""
        self.stop()
        self.wait()
        self.model.load_state_dict(self.initial_state)

    def evaluate(self, data=None) -> dict:
        """Loss and metrics of the model as it is now, on ``data`` (default: val)."""
        if self.running:
            raise RuntimeError("a run is training; wait() or stop() first")
        source = self.val_data if data is None else make_source(data, "data", self.device, self.model)
        if source is None:
            raise ValueError("no data to evaluate: pass data, or give the Trainer val data")
        bs = max(VAL_BATCH, (self.current.config if self.current else self.defaults).batch_size)
        return evaluate_batches(self.step, self.model, source.batches(bs, None, shuffle=False), self.task_info,
                                self.device, prefix="")

    @property
    def fingerprint(self) -> str:
        """A digest of the model's architecture and the data's shapes: runs of earlier kernels with
        the same one are this model's (the panel lists them)."""
        if getattr(self, "_fingerprint", None) is None:
            from .fingerprint import of_trainer
            self._fingerprint = of_trainer(self)
        return self._fingerprint

    # -- tools ----------------------------------------------------------------------
    def lr_find(self, **kwargs):
        """LR range test on a copy of the model; returns a result with ``.suggestion``."""
        from .lr_finder import lr_find
        return lr_find(self, **kwargs)

    def sweep(self, space, trials: Optional[int] = None, parallel: Optional[int] = None, scheduler="asha",
              address: Optional[str] = None, **config: Any):
        """Train many configs at once on Ray Tune, each trial from the initial weights; returns at once.

        ``space``: ``{field: [values]}`` (grid axes), ``{field: nbt.loguniform(lo, hi)}`` /
        ``nbt.uniform`` / ``nbt.choice([...])`` (sampled); ``trials`` in all (a multiple of the grid);
        ``parallel`` trials at a time (default: the cluster's CPUs); ``scheduler`` "asha" (stops weak
        trials early) or "fifo"; ``address`` None (a local Ray, loopback only), "auto" or
        "ray://host:port". ``config``: fixed fields over the last run's config. Returns a
        :class:`~nb_trainer.sweep.sweep.Sweep` (``wait()``, ``stop()``, ``runs``, ``best``, ``status``).
        """
        from .sweep import start
        sweep = start(self, space, trials=trials, parallel=parallel, scheduler=scheduler, address=address, **config)
        self.sweeps.append(sweep)
        return sweep

    def panel(self):
        """The notebook panel of this Trainer (built once)."""
        if self._panel is None:
            from .ui.panel import Panel
            self._panel = Panel(self)
        return self._panel

    def _ipython_display_(self):
        from IPython.display import display
        display(self.panel())

    def close(self) -> None:
        """Stop training (its sweeps too) and release the Trainer's threads."""
        for sweep in self.sweeps:
            sweep.stop()
        self.stop()
        self.wait()
        self.events.close()
        if self._panel is not None and hasattr(self._panel, "close"):
            self._panel.close()

    def __repr__(self) -> str:
        return (f"<Trainer {type(self.model).__name__} task={self.task} device={self.device} "
                f"runs={len(self.runs)}{' running' if self.running else ''}>")


def all_trainers() -> list[Trainer]:
    return list(_TRAINERS)
