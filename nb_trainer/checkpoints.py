"""The weights a run can go back to: the last healthy epoch's (rollback) and the best epoch's.

Copies are taken into preallocated tensors (one ``_foreach_copy_``), so an
epoch end costs one pass over the weights, not an allocation.
"""
from __future__ import annotations

from typing import Optional

import torch

from .callbacks.base import is_improvement


class Checkpoints:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._tensors = list(model.state_dict().values())  # updated in place by training: stays current
        self.healthy: Optional[dict] = None
        self.healthy_epoch = 0
        self.best: Optional[dict] = None
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None

    def start(self) -> None:
        """The weights before the first step are the first healthy ones."""
        self._tensors = list(self.model.state_dict().values())
        self.healthy = self._copy()
        self.healthy_epoch = 0

    def epoch_end(self, epoch: int, watched: Optional[float]) -> bool:
        """An epoch ended with finite weights: keep them to roll back to, and as the best when
        ``watched`` (val loss, else train loss) is the lowest yet. Returns whether it was."""
        self._copy(into=self.healthy)
        self.healthy_epoch = epoch
        if not is_improvement(watched, self.best_value, "min", 1e-12):
            return False
        self.best_value, self.best_epoch = watched, epoch
        self.best = self._copy(into=self.best)
        return True

    def restore_healthy(self) -> None:
        self._restore(self.healthy)

    def restore_best(self) -> None:
        self._restore(self.best)

    def _copy(self, into: Optional[dict] = None) -> dict:
        if into is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch._foreach_copy_(list(into.values()), self._tensors)
        return into

    def _restore(self, state: Optional[dict]) -> None:
        if state is not None:
            self.model.load_state_dict(state)
