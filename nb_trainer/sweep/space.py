"""Search spaces: which ``TrainConfig`` fields a sweep varies, and how.

A space is a dict of field names to

- a list (or tuple): a grid axis; every value is tried, with every value of the other axes;
- :func:`loguniform`, :func:`uniform` or :func:`choice`: sampled once per trial;
- a single value: fixed, as if passed in ``**config``.

Every value and bound is checked against the field here, in the caller's thread, so a bad
space raises ``ValueError`` before anything starts. This module knows nothing of Ray: the
space becomes Tune's (``tune.grid_search``, ``tune.loguniform``, ...) in :meth:`Space.to_tune`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..config import FIELDS, TrainConfig, check_names, format_value


@dataclass(frozen=True)
class Domain:
    """A range a sweep samples a field from (one value per trial)."""

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class LogUniform(Domain):
    low: float
    high: float

    def describe(self) -> str:
        return f"loguniform({format_value(self.low)}, {format_value(self.high)})"


@dataclass(frozen=True)
class Uniform(Domain):
    low: float
    high: float

    def describe(self) -> str:
        return f"uniform({format_value(self.low)}, {format_value(self.high)})"


@dataclass(frozen=True)
class Choice(Domain):
    values: tuple

    def describe(self) -> str:
        return "choice([" + ", ".join(format_value(v) for v in self.values) + "])"


def _bounds(kind: str, low, high) -> tuple[float, float]:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{kind}({low!r}, {high!r}): {name} must be a finite number, got {v!r}")
    if not low < high:
        raise ValueError(f"{kind}({low!r}, {high!r}): low must be below high")
    return float(low), float(high)


def loguniform(low: float, high: float) -> LogUniform:
    """Sample a value between ``low`` and ``high`` evenly on a log scale (a learning rate, a decay)."""
    low, high = _bounds("loguniform", low, high)
    if low <= 0:
        raise ValueError(f"loguniform({low:g}, {high:g}): both bounds must be above 0 (a log scale)")
    return LogUniform(low, high)


def uniform(low: float, high: float) -> Uniform:
    """Sample a value between ``low`` and ``high`` evenly (momentum, dropout)."""
    return Uniform(*_bounds("uniform", low, high))


def choice(values) -> Choice:
    """Sample one of ``values`` per trial (e.g. ``choice(["adam", "sgd"])``)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"choice({values!r}): give a list of values, e.g. choice(['adam', 'sgd'])")
    values = tuple(values)
    if not values:
        raise ValueError("choice([]): give at least one value")
    return Choice(values)


@dataclass(frozen=True)
class Space:
    """A checked search space: grid axes and sampled fields (the fixed ones went into the base)."""

    grid: dict        # {field: [values]}
    sampled: dict     # {field: Domain}

    @property
    def grid_size(self) -> int:
        size = 1
        for values in self.grid.values():
            size *= len(values)
        return size

    @property
    def fields(self) -> tuple:
        return tuple(self.grid) + tuple(self.sampled)

    def trials_for(self, trials: Optional[int]) -> int:
        """How many samples of the sampled fields Tune draws (``num_samples``) for ``trials`` in all.

        Each sample runs on every grid point, so ``trials`` must be a multiple of the grid's size.
        ``None``: the grid once when nothing is sampled, else 10 trials (rounded up to the grid).
        """
        size = self.grid_size
        if trials is None:
            return 1 if not self.sampled else -(-10 // size)
        if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
            raise ValueError(f"trials={trials!r} is not accepted: trials must be an integer >= 1")
        if trials % size:
            axes = " × ".join(f"{len(v)} {k}" for k, v in self.grid.items())
            raise ValueError(f"trials={trials} does not fit the grid ({axes} = {size} combinations): every sample "
                             f"runs on each combination, so trials must be a multiple of {size}")
        if not self.sampled and trials > size:
            # repeats of one grid point train the same config from the same weights: the same run again
            raise ValueError(f"trials={trials}: the grid has {size} combinations and nothing is sampled, so more "
                             "trials would repeat them exactly; sample a field (nbt.loguniform, nbt.choice) or "
                             "sweep the seed")
        return trials // size

    def to_tune(self) -> dict:
        """The param_space of a ``tune.Tuner``."""
        from ray import tune
        out: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in self.grid.items()}
        for name, d in self.sampled.items():
            integer = FIELDS[name].kind == "int"
            if isinstance(d, LogUniform):
                out[name] = tune.lograndint(int(d.low), int(d.high) + 1) if integer else tune.loguniform(d.low, d.high)
            elif isinstance(d, Uniform):
                out[name] = tune.randint(int(d.low), int(d.high) + 1) if integer else tune.uniform(d.low, d.high)
            else:
                out[name] = tune.choice(list(d.values))
        return out

    def describe(self) -> str:
        parts = [f"{k} in [{', '.join(format_value(v) for v in vs)}]" for k, vs in self.grid.items()]
        parts += [f"{k} ~ {d.describe()}" for k, d in self.sampled.items()]
        return ", ".join(parts)


def parse_space(space: Mapping, base: TrainConfig) -> tuple[Space, TrainConfig]:
    """Check ``space`` against the fields; returns the space and ``base`` with its fixed values applied."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"space={space!r}: give a dict of TrainConfig fields to sweep, e.g. "
                         "{'lr': nbt.loguniform(1e-4, 1e-1), 'weight_decay': [0, 1e-4]}")
    check_names(space)
    grid: dict = {}
    sampled: dict = {}
    fixed: dict = {}
    for name, value in space.items():
        if isinstance(value, Domain):
            sampled[name] = _check_domain(name, value, base)
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{name}=[]: a grid axis needs at least one value")
            grid[name] = [getattr(base.replace(**{name: v}), name) for v in value]   # normalised, checked
            if len(set(map(repr, grid[name]))) < len(grid[name]):
                raise ValueError(f"{name}={list(value)!r}: a grid axis lists a value twice")
        else:
            fixed[name] = value
    return Space(grid, sampled), base.replace(**fixed) if fixed else base


def _check_domain(name: str, d: Domain, base: TrainConfig) -> Domain:
    spec = FIELDS[name]
    if isinstance(d, Choice):
        return Choice(tuple(getattr(base.replace(**{name: v}), name) for v in d.values))
    if spec.kind == "choice":
        raise ValueError(f"{name}={d.describe()}: {name} takes {spec.accepted()}; sample it with "
                         f"nbt.choice([...]) or list the values")
    if spec.kind == "int":
        for v in (d.low, d.high):
            if not float(v).is_integer():
                raise ValueError(f"{name}={d.describe()}: {name} is an integer, so the bounds must be integers")
    for v in (d.low, d.high):
        base.replace(**{name: int(v) if spec.kind == "int" else v})   # each bound must be a value the field takes
    return d
