"""What the health rules read: the run's signals as plain lists, and its context.

:class:`Signals` is filled by the monitor from the engine's callbacks (or by a
test from a scripted sequence); :class:`Context` holds what does not change
during a run (the task, the trivial-baseline loss, the config). Rules are pure
functions of the two. The helpers here are the robust statistics the rules
share: medians over windows, "is the loss improving", number formatting.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..config import FIELDS, TrainConfig

# Step columns keep at most this many points; past it the middle is thinned
# to every other point. The first EARLY_KEEP steps are never thinned: the
# rules compare against the loss and gradients at the start.
CAPACITY = 4096
EARLY_KEEP = 256


@dataclass
class Signals:
    """Per-step signals (one entry per logged step) and the sampled records.

    ``g_first`` / ``g_last``: gradient norm of the first and last weight
    matrix (in parameter order); empty when the model has fewer than two.
    ``epochs``: the engine's epoch records. ``probes``: the engine's probes
    (``update_ratio`` per matrix, ``dead_relu`` per ReLU module).
    """

    step: list = field(default_factory=list)
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    g_first: list = field(default_factory=list)
    g_last: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    probes: list = field(default_factory=list)

    STEP_COLUMNS = ("step", "epoch", "loss", "grad_norm", "g_first", "g_last")

    def extend(self, **cols: list) -> None:
        for name in self.STEP_COLUMNS:
            if name in cols:
                getattr(self, name).extend(cols[name])
        if len(self.loss) > CAPACITY:
            for name in self.STEP_COLUMNS:
                col = getattr(self, name)
                if len(col) > CAPACITY:
                    mid = col[EARLY_KEEP:len(col) // 2 + EARLY_KEEP // 2]
                    col[EARLY_KEEP:len(col) // 2 + EARLY_KEEP // 2] = mid[::2]

    @classmethod
    def from_steps(cls, loss, grad_norm=None, g_first=None, g_last=None, epochs=None, probes=None,
                   steps_per_epoch: Optional[int] = None) -> "Signals":
        """Signals from scripted sequences (tests): epoch numbers follow ``steps_per_epoch``."""
        n = len(loss)
        spe = steps_per_epoch or max(n, 1)
        return cls(step=list(range(1, n + 1)), epoch=[i // spe + 1 for i in range(n)], loss=list(loss),
                   grad_norm=list(grad_norm if grad_norm is not None else [1.0] * n),
                   g_first=list(g_first or []), g_last=list(g_last or []),
                   epochs=list(epochs or []), probes=list(probes or []))


@dataclass(frozen=True)
class Context:
    """What a rule needs besides the signals. ``baseline``: the loss of the best
    constant prediction (None when unknown, e.g. a custom loss)."""

    task: str = "classification"
    loss_name: str = "cross_entropy"
    baseline: Optional[float] = None
    # the run's TrainConfig values the rules read (defaults: TrainConfig's)
    optimizer: str = TrainConfig.optimizer
    lr: float = TrainConfig.lr
    momentum: float = TrainConfig.momentum
    weight_decay: float = TrainConfig.weight_decay
    l1: float = TrainConfig.l1
    dropout: Optional[float] = TrainConfig.dropout
    batch_size: int = TrainConfig.batch_size
    epochs: int = TrainConfig.epochs
    grad_clip: float = TrainConfig.grad_clip
    patience: int = TrainConfig.patience
    steps_per_epoch: Optional[int] = None
    has_dropout: bool = False
    first_layer: str = ""
    last_layer: str = ""
    # {module path: how a person reads it}, e.g. {"1": "Sequential[1] (ReLU after Linear(64→128))"}
    labels: dict = field(default_factory=dict, compare=False, hash=False)

    def label(self, name: str) -> str:
        """A module path (or a parameter name: "0.weight") as a person reads it."""
        if name in self.labels:
            return self.labels[name]
        path = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
        return self.labels.get(path, f"'{name}'")

    @classmethod
    def from_config(cls, config, **kw) -> "Context":
        taken = [f.name for f in dataclasses.fields(cls) if f.name in FIELDS]
        return cls(**{name: getattr(config, name) for name in taken}, **kw)


# Heavy regularisation: 100x the usual strength. Weight decay >= 0.1 (coupled L2:
# sgd, momentum, adam, rmsprop; usual 1e-4..1e-3), >= 1.0 with adamw (decoupled,
# usual 1e-2..1e-1), or L1 >= 1e-2. It holds the loss up (underfitting) and
# shrinks the weights towards 0, which makes the early layers' gradients tiny
# (the product of the later, shrunken weights): that is the regulariser's doing,
# not a vanishing-gradient architecture.
HEAVY_WD = 0.1
HEAVY_WD_ADAMW = 1.0
HEAVY_L1 = 1e-2


def heavy_regularisation(ctx: "Context") -> bool:
    return (ctx.weight_decay >= (HEAVY_WD_ADAMW if ctx.optimizer == "adamw" else HEAVY_WD)
            or ctx.l1 >= HEAVY_L1)


# -- statistics ---------------------------------------------------------------

def arr(values) -> np.ndarray:
    return np.asarray(values, dtype=float)


def finite(values) -> np.ndarray:
    a = arr(values)
    return a[np.isfinite(a)]


def median(values) -> float:
    """Median of the finite values (NaN when none). Short lists in plain Python: numpy's
    per-call overhead is most of the cost of a rule that runs every epoch."""
    if len(values) <= 64:
        v = sorted(x for x in values if math.isfinite(x))
        n = len(v)
        if n == 0:
            return float("nan")
        return float(v[n // 2]) if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0
    a = finite(values)
    return float(np.median(a)) if a.size else float("nan")


def window(n: int) -> int:
    """Steps in the "recent" window of a series of ``n`` steps: a fifth, 5 to 50."""
    return int(min(50, max(5, n // 5)))


def early_level(loss) -> float:
    """The loss at the start: median of the first 3 steps (one batch is noisy, and a
    too-high lr can already have moved the loss by step 3, which the median tolerates)."""
    return median(loss[:3])


def recent_level(loss) -> float:
    return median(loss[-window(len(loss)):])


def improvement(start: float, now: float, ref: Optional[float] = None) -> float:
    """Relative drop of a loss from ``start`` to ``now`` (of ``ref``, default ``start``)."""
    ref = start if ref is None else ref
    if not (math.isfinite(start) and math.isfinite(now)) or ref <= 0:
        return float("nan")
    return (start - now) / ref


def train_losses(epochs) -> list:
    return [e.get("train_loss") for e in epochs if e.get("train_loss") is not None]


def fmt(x: float) -> str:
    """A number as a person reads it: 3 significant digits, scientific when tiny or huge."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.2g}"
    return f"{x:.3g}"


def round_lr(x: float) -> float:
    """A learning rate rounded to 2 significant digits and kept in TrainConfig's range."""
    x = min(max(x, 1e-7), 10.0)
    return float(f"{x:.2g}")


def latest_epoch(s: Signals) -> Optional[int]:
    if s.epoch:
        return int(s.epoch[-1])
    if s.epochs:
        return int(s.epochs[-1]["epoch"])
    return None


def latest_step(s: Signals) -> Optional[int]:
    return int(s.step[-1]) if s.step else None

