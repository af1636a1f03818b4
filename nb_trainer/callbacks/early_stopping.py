"""Early stopping: end a run after ``patience`` epochs without a better val loss, with its best weights.

The watched value is the val loss (the train loss when there is no val data);
"better" is :func:`~nb_trainer.callbacks.base.is_improvement` in mode "min".
When patience runs out the engine's best weights are put back, and the run is
asked to stop (a flag); when it runs out on the last epoch the run simply
finishes, also with the best weights, and says so.
"""
from __future__ import annotations

from .base import Callback, is_improvement


class EarlyStopping(Callback):
    def __init__(self, patience: int, min_delta: float = 1e-12):
        if patience < 1:
            raise ValueError(f"patience={patience!r} is not accepted: patience must be an integer >= 1")
        self.patience = patience
        self.min_delta = min_delta
        self.best = None
        self.best_epoch = None

    def on_run_start(self, run, engine) -> None:
        self.best = self.best_epoch = None

    def on_epoch_end(self, run, engine, record: dict) -> None:
        epoch = record["epoch"]
        watched = record.get("val_loss", record.get("train_loss"))
        if is_improvement(watched, self.best, "min", self.min_delta):
            self.best, self.best_epoch = watched, epoch
            return
        if self.best_epoch is None or epoch - self.best_epoch < self.patience:
            return
        engine.restore_best()
        reason = (f"early stopping: no val-loss improvement for {self.patience} epochs; "
                  f"restored the weights of epoch {self.best_epoch}")
        if epoch < engine.config.epochs:
            engine.request_stop(reason)
        else:  # patience ran out on the last epoch: the run finished, with the best weights
            run.stop_reason = reason
