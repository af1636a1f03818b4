"""Hyper-parameters of one run: fields, defaults, ranges and validation.

This module is the single source the sliders, the magics and the engine read.
It knows nothing of torch or widgets.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "onecycle", "linear", "step", "plateau")
PRECISIONS = ("32", "bf16", "16")
# The largest weight_decay and l1 accepted. At 100 the default lr (1e-3) already shrinks the
# weights by a tenth a step; beyond it no lr trains, and 1e300 (or anything past float32's 3.4e38)
# failed at the first step with an overflow deep inside the optimizer.
MAX_PENALTY = 100.0


@dataclass(frozen=True)
class FieldSpec:
    """What one `TrainConfig` field accepts and how a control shows it.

    ``kind`` is "choice", "float" or "int". ``low``/``high`` bound what
    validation accepts (``low_open``: ``low`` itself is refused). The
    ``slider_*`` bounds are the range a control offers, which is narrower
    than what the API accepts. ``log``: the control is logarithmic.
    ``off``: the value that switches the feature off (a control shows it as
    an "off" position), or ``None``. ``live``: a running run can take a new
    value at the next step without restarting.
    """

    name: str
    kind: str
    label: str
    help: str
    choices: tuple = ()
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    slider_low: Optional[float] = None
    slider_high: Optional[float] = None
    log: bool = False
    off: Any = None
    nullable: bool = False
    live: bool = False
    why_high: str = ""

    def accepted(self) -> str:
        """Say in words what this field accepts."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        what = "an integer" if self.kind == "int" else "a number"
        parts = []
        fmt = (lambda x: str(int(x))) if self.kind == "int" else _fmt
        if self.low is not None:
            parts.append(("> " if self.low_open else ">= ") + fmt(self.low))
        if self.high is not None:
            parts.append(("< " if self.high_open else "<= ") + fmt(self.high))
        text = what + (" " + " and ".join(parts) if parts else "")
        if self.nullable:
            text += ", or None"
        return text


def _fmt(x: float) -> str:
    return f"{x:g}"


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("optimizer", "choice", "optimizer",
                  "sgd: plain SGD; momentum: SGD with momentum; adam, adamw, rmsprop",
                  choices=OPTIMIZERS),
        FieldSpec("lr", "float", "learning rate", "step size of the optimizer",
                  low=0.0, low_open=True, high=10.0, slider_low=1e-5, slider_high=1.0,
                  log=True, live=True),
        FieldSpec("momentum", "float", "momentum",
                  "momentum of 'momentum' (beta1 of adam/adamw; sgd and rmsprop do not use it)",
                  low=0.0, high=1.0, high_open=True, slider_low=0.0, slider_high=0.99,
                  live=True),
        FieldSpec("weight_decay", "float", "L2 weight decay",
                  "L2 penalty (decoupled for adamw); 0 is off",
                  low=0.0, high=MAX_PENALTY, slider_low=1e-6, slider_high=1e-1, log=True, off=0.0, live=True,
                  why_high=("a larger L2 penalty outweighs any loss, so the run cannot train: each step pulls "
                            "the weights to 0, or, once lr × weight_decay > 2 with sgd, momentum or adamw, "
                            "makes them grow without bound; past 3.4e38 (float32) it cannot even be applied")),
        FieldSpec("l1", "float", "L1", "L1 penalty on weight matrices added to the loss; 0 is off",
                  low=0.0, high=MAX_PENALTY, slider_low=1e-7, slider_high=1e-2, log=True, off=0.0, live=True,
                  why_high=("a larger L1 penalty outweighs any loss, so the run cannot train: its gradient "
                            "alone drives every weight matrix to 0 or past the float range")),
        FieldSpec("dropout", "float", "dropout",
                  "p of every nn.Dropout in the model; None keeps the model's own",
                  low=0.0, high=1.0, high_open=True, slider_low=0.0, slider_high=0.9,
                  nullable=True, live=True),
        FieldSpec("batch_size", "int", "batch size", "examples per step",
                  low=1, high=1 << 20, slider_low=1, slider_high=4096, log=True),
        FieldSpec("epochs", "int", "epochs", "passes over the training data",
                  low=1, high=100_000, slider_low=1, slider_high=200),
        FieldSpec("grad_clip", "float", "gradient clip",
                  "clip the global gradient norm to this value; 0 is off",
                  low=0.0, slider_low=1e-2, slider_high=100.0, log=True, off=0.0, live=True),
        FieldSpec("patience", "int", "early stopping patience",
                  "stop after this many epochs without val-loss improvement; 0 is off",
                  low=0, high=100_000, slider_low=0, slider_high=50, off=0),
        FieldSpec("seed", "int", "seed", "seeds weights-independent randomness (shuffling, dropout)",
                  low=0, high=2**63 - 1),
        FieldSpec("schedule", "choice", "lr schedule",
                  "constant; cosine (to 0); onecycle (fastai's fit_one_cycle: up then down, momentum the "
                  "other way); linear (to 0); step (÷10 at 50% and 75% of the steps); plateau (÷10 when the "
                  "val loss stalls)", choices=SCHEDULES),
        FieldSpec("warmup", "float", "warmup",
                  "fraction of the run's steps spent warming the lr up linearly before the schedule "
                  "(onecycle: the fraction spent rising); 0 is off",
                  low=0.0, high=0.5, slider_low=0.0, slider_high=0.5, off=0.0),
        FieldSpec("accumulate", "int", "accumulate",
                  "batches whose gradients are summed before each optimizer step (the effective batch is "
                  "accumulate × batch size)", low=1, high=4096, slider_low=1, slider_high=64),
        FieldSpec("precision", "choice", "precision",
                  "32: float32; bf16: bfloat16 autocast (CPU and CUDA); 16: float16 autocast with a "
                  "gradient scaler (CUDA only)", choices=PRECISIONS),
    )
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run. Frozen; use :meth:`replace`.

    Every value is checked when the config is made: a value out of range or
    of the wrong type raises ``ValueError`` naming the field, the value and
    what is accepted.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    l1: float = 0.0
    dropout: Optional[float] = None
    batch_size: int = 64
    epochs: int = 10
    grad_clip: float = 0.0
    patience: int = 0
    seed: int = 0
    schedule: str = "constant"
    warmup: float = 0.0
    accumulate: int = 1
    precision: str = "32"

    def __post_init__(self) -> None:
        for spec in FIELDS.values():
            value = _check(spec, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Make a config from ``values`` over ``base`` (or the defaults).

        An unknown key raises ``ValueError`` listing the accepted names.
        """
        check_names(values)
        base = base if base is not None else cls()
        return dataclasses.replace(base, **dict(values))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated like a new config)."""
        return TrainConfig.from_dict(changes, base=self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def diff(self, other: "TrainConfig") -> dict:
        """Fields whose value differs in ``other``: ``{name: (mine, theirs)}``."""
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in FIELDS
            if getattr(self, name) != getattr(other, name)
        }


def check_names(values: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``values`` has a key that is not a field."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ValueError(
            f"unknown training option {unknown[0]!r}; accepted options are: "
            + ", ".join(FIELDS)
        )


def check_value(name: str, value: Any) -> Any:
    """``value`` normalised for the field ``name``, or ``ValueError`` naming it and what it accepts."""
    check_names({name: value})
    return _check(FIELDS[name], value)


def _check(spec: FieldSpec, value: Any) -> Any:
    """Return ``value`` normalised for ``spec`` or raise ``ValueError``."""
    name = spec.name

    def bad() -> ValueError:
        why = ""
        if spec.why_high and isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and spec.high is not None and float(value) > spec.high:
            why = f" ({spec.why_high})"
        return ValueError(f"{name}={value!r} is not accepted: {name} must be {spec.accepted()}{why}")

    if value is None and spec.nullable:
        return None
    if spec.kind == "choice":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and str(value) in spec.choices:
            return str(value)  # precision=16 means "16"
        if not isinstance(value, str) or value.lower() not in spec.choices:
            raise bad()
        return value.lower()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad()
    if spec.kind == "int":
        if isinstance(value, numbers.Integral):
            value = int(value)
        elif float(value).is_integer():
            value = int(value)
        else:
            raise bad()
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad()
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        raise bad()
    if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
        raise bad()
    return value


def describe_change(old: TrainConfig, new: TrainConfig) -> str:
    """Say what changed between two configs, e.g. ``"lr 0.01 → 0.003"``."""
    parts = []
    for name, (a, b) in old.diff(new).items():
        parts.append(f"{name} {format_value(a)} → {format_value(b)}")
    return ", ".join(parts) if parts else "same config"


def format_value(value: Any) -> str:
    """A config value as the panel and the run notes show it (floats to 3 significant digits)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


LIVE_FIELDS = tuple(name for name, spec in FIELDS.items() if spec.live)
