"""Learning-rate schedules with warmup, as closed forms of the optimizer step.

Each schedule gives the factor by which the run's ``lr`` is multiplied at
optimizer step ``t`` (0-based: the step about to be taken), the same value
``torch.optim.lr_scheduler`` gives after ``t`` calls of ``scheduler.step()``
(checked step by step in the tests). Over ``T`` optimizer steps, with
``W = round(warmup * T)`` warmup steps:

- warmup: ``LinearLR(start_factor=1/(W+1), end_factor=1, total_iters=W)``, then
  the schedule over the remaining ``T - W`` steps (``SequentialLR``);
- ``constant``: 1;
- ``cosine``: ``CosineAnnealingLR(T_max=T-W)``, down to 0;
- ``linear``: ``LinearLR(start_factor=1, end_factor=0, total_iters=T-W)``, down to 0;
- ``step``: ``MultiStepLR(gamma=0.1)`` at 50% and 75% of the run's steps;
- ``onecycle``: ``OneCycleLR(max_lr=lr, total_steps=T, pct_start=warmup or 0.3)``,
  fastai's ``fit_one_cycle``: from lr/25 up to lr, then down to lr/25e4 (cosine
  annealing), with the momentum (beta1 for Adam) going 0.95 → 0.85 → 0.95 for
  the optimizers that have one ("momentum", "adam", "adamw");
- ``plateau``: ``ReduceLROnPlateau(factor=0.1, patience=P)`` on the val loss (the
  train loss without val data) at each epoch end, with ``P`` = 2 epochs, or half
  the early-stopping patience when that is on (the lr drops before training
  is stopped); warmup before it as above.

A live change of the lr rescales the schedule from that step: the slider sets
the schedule's peak (its ``lr``), and the factor keeps its shape.
"""
from __future__ import annotations

import math
from typing import Optional

PLATEAU_PATIENCE = 2
PLATEAU_THRESHOLD = 1e-4   # torch's default: an improvement is a relative fall of more than this
ONECYCLE_PCT = 0.3         # torch's and fastai's share of the steps spent rising
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_MOMENTUM = (0.85, 0.95)
NEEDS_LENGTH = ("cosine", "onecycle", "linear", "step")


def needs_length(config) -> bool:
    """Whether the schedule needs to know the run's number of steps (a stream's is unknown)."""
    return config.schedule in NEEDS_LENGTH or config.warmup > 0


def plateau_patience(config) -> int:
    return max(1, config.patience // 2) if config.patience > 0 else PLATEAU_PATIENCE


class Schedule:
    """The lr factor (and onecycle's momentum) at each optimizer step of one run."""

    def __init__(self, config, total_steps: Optional[int]):
        self.name = config.schedule
        if needs_length(config) and not total_steps:
            raise ValueError(f"schedule={config.schedule!r} with warmup={config.warmup:g} needs the run's number "
                             "of steps, and this data has no length (a stream): use schedule='constant' or "
                             "'plateau' with warmup=0, or give the data a length")
        self.total = int(total_steps or 0)
        self.cycles_momentum = self.name == "onecycle" and config.optimizer in ("momentum", "adam", "adamw")
        if self.name == "onecycle":
            self.warmup_steps = 0
            self.pct = config.warmup if config.warmup > 0 else ONECYCLE_PCT
        else:
            self.warmup_steps = int(round(config.warmup * self.total))
        self.main_steps = max(self.total - self.warmup_steps, 1)
        self.plateau = 1.0
        self._patience = plateau_patience(config)
        self._best: Optional[float] = None
        self._bad_epochs = 0

    @property
    def constant(self) -> bool:
        return self.name in ("constant", "plateau") and self.warmup_steps == 0 and self.plateau == 1.0

    def factor(self, t: int) -> float:
        """The lr factor at optimizer step ``t`` (0-based)."""
        if self.name == "onecycle":
            return self._onecycle(t)[0]
        w = self.warmup_steps
        if t < w:
            start = 1.0 / (w + 1)
            return start + (1.0 - start) * t / w
        u = min(t - w, self.main_steps)
        n = self.main_steps
        if self.name == "cosine":
            return (1.0 + math.cos(math.pi * u / n)) / 2.0
        if self.name == "linear":
            return 1.0 - u / n
        if self.name == "step":
            milestones = (int(0.5 * self.total) - w, int(0.75 * self.total) - w)
            return 0.1 ** sum(1 for m in milestones if u >= m)
        if self.name == "plateau":
            return self.plateau
        return 1.0

    def momentum(self, t: int) -> Optional[float]:
        """Onecycle's momentum (beta1) at step ``t``, or None when the schedule leaves it alone."""
        return self._onecycle(t)[1] if self.cycles_momentum else None

    def _onecycle(self, t: int) -> tuple:
        # torch.optim.lr_scheduler.OneCycleLR, two phases, cosine annealing
        initial = 1.0 / ONECYCLE_DIV
        final = initial / ONECYCLE_FINAL_DIV
        base_m, max_m = ONECYCLE_MOMENTUM
        end1 = float(self.pct * self.total) - 1
        end2 = float(self.total - 1)
        phases = ((0.0, end1, initial, 1.0, max_m, base_m), (end1, end2, 1.0, final, base_m, max_m))
        t = min(t, self.total - 1) if self.total else t
        for i, (s, e, lr0, lr1, m0, m1) in enumerate(phases):
            if t <= e or i == len(phases) - 1:
                pct = (t - s) / (e - s) if e > s else 1.0
                return _cos(lr0, lr1, pct), _cos(m0, m1, pct)
        raise AssertionError("unreachable")

    def epoch_end(self, watched: Optional[float]) -> bool:
        """Plateau: read the epoch's val loss; True when the lr was just divided by 10."""
        if self.name != "plateau" or watched is None or not math.isfinite(watched):
            return False
        if self._best is None or watched < self._best * (1 - PLATEAU_THRESHOLD):
            self._best, self._bad_epochs = watched, 0
            return False
        self._bad_epochs += 1
        if self._bad_epochs > self._patience:
            self.plateau *= 0.1
            self._bad_epochs = 0
            return True
        return False


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
