"""The callback base class: hooks the engine calls on the training thread.

Torch-free, so the run store and the health monitor can subclass it without
knowing the loop's internals. Every hook does nothing by default; subclasses
override the ones they need. Keep them cheap: they run between steps.

What a callback may do to the run, through the engine it is handed:
``engine.warn(warning)`` records a health warning, and
``engine.request_stop(reason)`` ends the run after the current step (a flag,
not an exception, as in Keras).
"""
from __future__ import annotations

import math
from typing import Optional


class Callback:
    """Hooks into one run. Subclass and override what you need."""

    def on_run_start(self, run, engine) -> None:
        """After the model, the optimizer and the data are set up, before the first step."""

    def on_log(self, run, engine, new: dict) -> None:
        """After the engine brought a chunk of steps to the host; ``new`` holds their columns
        (``step``, ``epoch``, ``loss``, ``grad_norm``, ``lr``, ``layer_norms``)."""

    def on_probe(self, run, engine, probe: dict) -> None:
        """After a sampled probe (update/weight ratios, dead units)."""

    def on_epoch_end(self, run, engine, record: dict) -> None:
        """After an epoch's record (train loss, validation metrics, lr, seconds) was appended."""

    def on_run_end(self, run, engine) -> None:
        """When the run ended, however it ended; ``run.outcome`` says how."""


def is_improvement(value: Optional[float], best: Optional[float], mode: str = "min",
                   min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best``: lower by more than ``min_delta`` in mode "min",
    higher in mode "max". A non-finite or missing value never improves; anything finite
    improves on no best yet. The one rule early stopping and checkpointing share."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    if mode == "min":
        return value < best - min_delta
    if mode == "max":
        return value > best + min_delta
    raise ValueError(f"mode={mode!r} is not accepted: use 'min' or 'max'")
