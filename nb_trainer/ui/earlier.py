"""Runs of this model from earlier kernels: found in the store by fingerprint, drawn like the Trainer's own.

After a kernel restart the new Trainer's runs table starts empty; the store still has every
run the earlier kernels made. Those with the same fingerprint (architecture and data shapes,
:mod:`nb_trainer.fingerprint`) are this model's: the panel lists them, marked "earlier", and
can draw them faintly under its own. A stored record has epoch records but no per-step
history, so :class:`EarlierRun` gives the figure a history of one point per epoch (train loss,
the epoch's median gradient norm, lr).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Optional

from ..run import StepHistory

log = logging.getLogger(__name__)

LIMIT = 12          # the most recent earlier runs kept


class EarlierRun:
    """A stored run record, read like a :class:`~nb_trainer.Run` by the figure and the runs table."""

    def __init__(self, record, number: int):
        self.record = record
        self.id = f"earlier-{record.id}"
        self.display_name = f"earlier {number}"        # the figure's label instead of "run N"
        self.config = record.config
        self.initial_config = getattr(record, "initial_config", None) or record.config
        self.task = record.task
        self.status = record.status
        self.note = record.note if record.note != "first run" else ""
        self.epochs = list(record.epochs)
        self.warnings = list(record.warnings)
        self.changes = list(getattr(record, "changes", []) or [])
        self.started_at = record.started_at
        self.ended_at = record.ended_at
        steps = getattr(record, "steps", 0) or 0
        self.steps_per_epoch: Optional[int] = (steps // len(self.epochs)) if self.epochs and steps else None
        self.step = steps
        self.history = _epoch_history(self.epochs, self.steps_per_epoch or 1)

    @property
    def done(self) -> bool:
        return True


def _epoch_history(epochs: list, steps_per_epoch: int) -> StepHistory:
    """One history point per epoch (its mean train loss, median gradient norm and lr), at the epoch's last step.
    Runs stored before epoch records kept the gradient norm have none (NaN: not drawn)."""
    history = StepHistory()
    rows = [(int(e.get("epoch", i + 1)), e) for i, e in enumerate(epochs)]
    history.extend(step=[n * steps_per_epoch for n, _ in rows], epoch=[n for n, _ in rows],
                   loss=[_num(e.get("train_loss")) for _, e in rows],
                   grad_norm=[_num(e.get("grad_norm")) for _, e in rows],
                   lr=[_num(e.get("lr")) for _, e in rows], layer_norms=[[] for _ in rows])
    return history


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _this_process() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def find(trainer, limit: int = LIMIT) -> list[EarlierRun]:
    """This model's runs from earlier kernels (other processes) in the Trainer's store, oldest first."""
    store = getattr(trainer, "store", None)
    if store is None:
        return []
    try:
        fingerprint = trainer.fingerprint
        records = store.runs()
    except Exception as e:  # the panel works without them; say why they are missing
        log.warning("nb_trainer: could not read earlier runs from the store: %s: %s", type(e).__name__, e)
        return []
    host, pid = _this_process()
    mine = [r for r in records if getattr(r, "fingerprint", None) == fingerprint
            and not (r.owner.get("host") == host and r.owner.get("pid") == pid)]
    skipped = max(0, len(mine) - limit)
    return [EarlierRun(r, skipped + i + 1) for i, r in enumerate(mine[skipped:])]
