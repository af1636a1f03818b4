"""One training run's record: config, status, per-epoch records, step history, warnings.

A ``Run`` is written by the training thread and read by any other thread.
Readers take :meth:`Run.snapshot` or read the lists (appends are atomic in
CPython; the step history hands out copies under its lock).
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Optional

from .config import TrainConfig
from .health.warning import HealthWarning
from .tasks import TASK_TABLE, main_metric

STATUSES = ("pending", "running", "paused", "finished", "stopped", "failed", "diverged", "interrupted")
ENDED = ("finished", "stopped", "failed", "diverged", "interrupted")

_ids = itertools.count(1)


class StepHistory:
    """Per-logged-step signals, bounded in memory.

    Columns: ``step``, ``epoch``, ``loss``, ``grad_norm``, ``lr`` and
    ``layer_norms`` (one list per step: the gradient norm of each parameter
    tensor named in ``layer_names``). When a column passes ``capacity``
    points, the older half is thinned to every other point (the newest
    points are kept at full resolution), so a run of a million steps holds
    at most ``capacity`` points per column.
    """

    COLUMNS = ("step", "epoch", "loss", "grad_norm", "lr", "layer_norms")

    def __init__(self, capacity: int = 20_000):
        self.capacity = capacity
        self.layer_names: list[str] = []
        self._cols: dict[str, list] = {c: [] for c in self.COLUMNS}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change, so readers can skip unchanged histories

    def extend(self, **cols: list) -> None:
        with self._lock:
            for c in self.COLUMNS:
                self._cols[c].extend(cols[c])
            # one extend can add more than the capacity: thin until it fits
            while len(self._cols["step"]) > max(self.capacity, 1):
                half = max(2, len(self._cols["step"]) // 2)
                for c in self.COLUMNS:
                    col = self._cols[c]
                    col[:half] = col[:half:2]
            self.version += 1

    def __len__(self) -> int:
        return len(self._cols["step"])

    def columns(self, *names: str) -> dict[str, list]:
        """Copies of the named columns (all when none are named)."""
        with self._lock:
            return {c: list(self._cols[c]) for c in (names or self.COLUMNS)}

    def last(self, column: str, n: int) -> list:
        with self._lock:
            return self._cols[column][-n:]


class RunReading:
    """What a live :class:`Run` and a stored run record read alike: epoch columns, warnings, repr."""

    epochs: list
    warnings: list

    @property
    def last(self) -> dict:
        """The latest epoch record, or an empty dict."""
        return self.epochs[-1] if self.epochs else {}

    def metric(self, name: str) -> list:
        """One epoch-record column, e.g. ``run.metric("val_loss")``."""
        return [e.get(name) for e in self.epochs]

    def warning(self, code: str) -> Optional[HealthWarning]:
        """The run's warning of ``code``, or None."""
        return next((w for w in self.warnings if w.code == code), None)

    @property
    def codes(self) -> list[str]:
        return [w.code for w in self.warnings]

    @property
    def verdicts(self) -> list:
        """The warnings grouped by cause, one fix each (``health/verdict.py``)."""
        from .health.verdict import verdicts
        return verdicts(self)

    def __repr__(self) -> str:
        last = self.last
        extra = ""
        task = getattr(self, "task", "") or ""
        for key in (main_metric(task)[0] if task in TASK_TABLE else "val_accuracy", "val_r2", "val_loss",
                    "train_loss"):
            if last.get(key) is not None:
                extra = f", {key}={last[key]:.4g}"
                break
        return (f"<{type(self).__name__} {self.id} {self.status} {self.config.optimizer} lr={self.config.lr:g} "
                f"epoch {len(self.epochs)}/{self.config.epochs}{extra}>")


class Run(RunReading):
    """One training run of a :class:`~nb_trainer.Trainer`.

    Attributes
    ----------
    config : TrainConfig
        The run's hyper-parameters (updated when live changes apply).
    status : str
        "running", "paused", "finished", "stopped", "failed", "diverged"
        ("interrupted" for a stored run whose kernel died).
    error : BaseException or None
        Why a "failed" run failed.
    epochs : list of dict
        One record per finished epoch.
    warnings : list of HealthWarning
    history : StepHistory
        Per-logged-step loss, gradient norms and learning rate.
    """

    def __init__(self, config: TrainConfig, task: str = "", parent: Optional["Run"] = None,
                 note: str = "", run_id: Optional[str] = None):
        self.id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{next(_ids)}"
        self.config = config
        self.initial_config = config       # what the run started with (live changes replace .config)
        self.task = task
        self.status = "pending"
        self.error: Optional[BaseException] = None
        self.epochs: list[dict] = []
        self.warnings: list[HealthWarning] = []
        self.history = StepHistory()
        self.probes: list[dict] = []       # sampled signals: dead units, update/weight ratios
        self.changes: list[dict] = []      # live changes: {"step", "epoch", "changes"}
        self.note = note                   # what differs from the previous run ("lr 0.01 → 0.003")
        self.parent = parent
        self.step = 0
        self.epoch = 0
        self.skipped_steps = 0             # float16: optimizer steps the gradient scaler skipped
        # lineage: {"id", "number", "epoch", "step"} of the run whose final weights this one started from
        self.continued_from: Optional[dict] = None
        self.final_state: Optional[dict] = None   # the weights it ended with (CPU), kept for continuing
        self.final_epoch: Optional[int] = None    # the epoch those weights are from
        self.steps_per_epoch: Optional[int] = None
        self.best_epoch: Optional[int] = None
        self.best_val_loss: Optional[float] = None
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.stop_reason: str = ""
        # how the run ended, known while its end hooks run; ``status`` shows it once they are done
        self.outcome: Optional[str] = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> "Run":
        self._done.wait(timeout)
        return self

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    def add_warning(self, warning: HealthWarning) -> tuple[HealthWarning, bool]:
        """Add ``warning``, or update the run's warning of the same code.

        Returns the stored warning and whether it is new.
        """
        with self._lock:
            old = self.warning(warning.code)
            if old is None:
                self.warnings.append(warning)
                return warning, True
            old.message = warning.message
            old.suggestion = warning.suggestion
            old.fix = warning.fix
            old.step = warning.step
            old.epoch = warning.epoch
            if _rank(warning.severity) > _rank(old.severity):
                old.severity = warning.severity
            old.count += 1
            return old, False

    def to_record(self) -> dict[str, Any]:
        """A plain-data copy (what the store keeps)."""
        return {
            "id": self.id,
            "task": self.task,
            "config": self.config.to_dict(),
            "status": self.status,
            "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            "epochs": [dict(e) for e in self.epochs],
            "warnings": [w.to_dict() for w in self.warnings],
            "changes": [dict(c) for c in self.changes],
            "note": self.note,
            "continued_from": dict(self.continued_from) if self.continued_from else None,
            "best_epoch": self.best_epoch,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "steps": self.step,
        }


def _rank(severity: str) -> int:
    return ("info", "warning", "error").index(severity)
