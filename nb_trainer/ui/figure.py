"""The live 4-panel training figure: snapshots built in the kernel, frames drawn anywhere.

Two halves, so that the expensive one can run in another process:

* :func:`snapshot` runs in the kernel. It reads ``Run`` objects (step history
  and epoch records), decimates every line to about :data:`MAX_POINTS` points
  (min and max per bucket, so spikes stay visible) and returns a small
  picklable dict of numpy arrays. Its cost hardly depends on the history's
  length: per run it keeps the history converted to numpy and only appends
  the new tail (:class:`SnapshotCache`).
* :class:`LiveFigure` turns snapshots into PNG frames: train/val loss, the
  main validation metric, gradient norm (log scale) and learning rate (log
  scale); the current run solid, up to three earlier runs faint underneath,
  a legend that says what changed in each run (``Run.note``). It blits: the
  axes, faint runs and legend are drawn once and cached as a background,
  each frame restores it and draws only the current run's lines. Axis limits
  leave headroom (2x on linear axes, a decade on log axes) so a full redraw
  is rare; when only y limits change (a run's gradient norm falls below its
  axis as it converges), only those axes are drawn again on the background;
  a full redraw at limits drawn before (a restarted run's first frame) draws
  only the lines and legends over the axes kept from then.
  Uses ``Figure`` + ``FigureCanvasAgg``, never pyplot.

Snapshot layout (version 1)::

    {"version": 1, "task": str, "metric": "val_accuracy", "metric_label": "val accuracy",
     "stamp": hashable,                # equal stamps: nothing to redraw
     "runs": [                         # oldest first; the last one is the current run
        {"id": str, "number": int, "label": str, "status": str, "current": bool,
         "version": hashable,          # changes whenever the run's data does
         "x_total": float | None,      # steps the run will take, when known
         "loss": (x, y), "grad_norm": (x, y), "lr": (x, y),   # per logged step
         "val_loss": (x, y), "metric": (x, y)},               # per epoch, x in steps
     ]}
"""
from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox, IdentityTransform, ScaledTranslation

from ..tasks import TASK_TABLE

MAX_POINTS = 2000      # per line, after decimation
FAINT_RUNS = 3         # earlier runs drawn under the current one
SNAPSHOT_VERSION = 1
STEP_SERIES = ("loss", "grad_norm", "lr")
EPOCH_SERIES = ("val_loss", "metric")
SERIES = STEP_SERIES + EPOCH_SERIES
AXES = ("loss", "metric", "grad_norm", "lr")
CHROME_CACHE = 3       # a figure keeps its axes drawn without lines at this many sets of limits (1.2 MB each at 720x440)

# the epoch-record name and axis title of each task's main metric, from the one task table
MAIN_METRIC = {name: ("val_" + t.main, t.main_label) for name, t in TASK_TABLE.items()}

_FAINT_ALPHA = (0.38, 0.24, 0.15)   # newest earlier run first
_COLORS = {"loss": "tab:blue", "val_loss": "tab:orange", "metric": "tab:green",
           "grad_norm": "tab:purple", "lr": "tab:brown"}
_LABEL_CHARS = 96     # a run's note longer than this is cut; the legend wraps it onto two lines
# Text sizes in CSS pixels: the figure is drawn at 72 dpi times its scale, so a point is a pixel
# of the page at the size the image is shown (at least 10 px, what stays readable in a notebook)
TITLE_PX = 11.5
TICK_PX = 10.0
LEGEND_PX = 10.0
XLABEL_BELOW_PX = 16.0   # the x label's top, below the axes (tick 3 + pad 2 + tick label + 1)


def main_metric(task: str) -> tuple[str, str]:
    """The epoch-record name and axis title of the task's main validation metric."""
    try:
        return MAIN_METRIC[task]
    except KeyError:
        raise ValueError(f"task: got {task!r}; accepted: {', '.join(map(repr, MAIN_METRIC))}") from None


# -- decimation ---------------------------------------------------------------------------------------

def decimate(x, y, max_points: int = MAX_POINTS, drop_flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the line ``(x, y)`` that draw like all of it.

    Non-finite points are dropped; with ``drop_flat``, so are points inside a
    run of equal values (a constant learning rate is two points; don't use it
    on lines drawn with markers). Longer lines are cut into equal buckets and
    each bucket keeps its minimum and its maximum, in their original order, so
    a one-step spike survives any amount of decimation; the first and last
    points are always kept (the newest value is what the user watches).
    """
    if max_points < 4:
        raise ValueError(f"max_points: got {max_points}; accepted: an int of at least 4")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y: need two 1-d arrays of one length, got shapes {x.shape} and {y.shape}")
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        x, y = x[finite], y[finite]
    if drop_flat and len(y) > 2:
        inner = (y[1:-1] == y[:-2]) & (y[1:-1] == y[2:])
        if inner.any():
            keep = np.concatenate([[True], ~inner, [True]])
            x, y = x[keep], y[keep]
    n = len(y)
    if n <= max_points:
        return x, y
    buckets = (max_points - 2) // 2
    size = -(-n // buckets)            # ceil: at most `buckets` buckets
    full = n // size
    body = y[:full * size].reshape(full, size)
    base = np.arange(full) * size
    lo = base + body.argmin(axis=1)
    hi = base + body.argmax(axis=1)
    parts = [np.array([0]), np.minimum(lo, hi), np.maximum(lo, hi)]
    if full * size < n:
        tail = y[full * size:]
        parts.append(full * size + np.array([tail.argmin(), tail.argmax()]))
    parts.append(np.array([n - 1]))
    idx = np.unique(np.concatenate(parts))    # sorted: min/max of a bucket stay in order
    return x[idx], y[idx]


# -- snapshots (kernel side) --------------------------------------------------------------------------

_HISTORY_COLUMNS = ("step", "epoch", "loss", "grad_norm", "lr")


class _Columns:
    """A run's step history as numpy arrays, kept up to date by appending the new tail."""

    __slots__ = ("version", "n", "cols", "snap_key", "snap")

    def __init__(self):
        self.version = None
        self.n = 0
        self.cols = {c: np.empty(0) for c in _HISTORY_COLUMNS}
        self.snap_key = None      # what the cached per-run snapshot was built from
        self.snap = None


def _as_array(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a if a.ndim == 1 else np.full(len(values), np.nan)


class SnapshotCache:
    """Per-run numpy copies of step histories, so a snapshot converts only new points.

    ``StepHistory.columns`` copies every point under the history's lock and
    turning 20k Python floats into an array costs milliseconds per column; a
    snapshot taken twice a second would pay that forever. Instead the cache
    reads only the points added since the last snapshot (``history.last``),
    and reloads everything when the history was thinned. The decimated
    snapshot of a run that did not change (an earlier run) is reused as is.
    Thread-safe (one snapshot at a time); bounded to ``size`` runs.
    """

    def __init__(self, size: int = 32):
        self.size = size
        self._runs: "OrderedDict[Any, _Columns]" = OrderedDict()
        self._lock = threading.Lock()

    def entry(self, run) -> _Columns:
        """The run's entry, its columns brought up to date (call with ``lock`` held)."""
        history = run.history
        key = (id(run), getattr(run, "id", None))
        entry = self._runs.pop(key, None) or _Columns()
        self._runs[key] = entry
        while len(self._runs) > self.size:
            self._runs.popitem(last=False)
        version = getattr(history, "version", None)
        if version is None or version != entry.version:
            self._refresh(entry, history, version)
        return entry

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @staticmethod
    def _refresh(entry: _Columns, history, version) -> None:
        n = len(history)
        if (version is not None and entry.version is not None and hasattr(history, "last")
                and entry.n > 0 and n > entry.n):
            k = n - entry.n
            tail = {c: history.last(c, k + 1) for c in _HISTORY_COLUMNS}
            # The version is bumped inside the history's lock after each change: unchanged
            # means no write landed between the reads above, so the tails line up. The
            # first tail step equal to our last step means no thinning moved points.
            if (getattr(history, "version", None) == version and len(tail["step"]) == k + 1
                    and tail["step"][0] == entry.cols["step"][-1]):
                for c in _HISTORY_COLUMNS:
                    entry.cols[c] = np.concatenate([entry.cols[c], _as_array(tail[c][1:])])
                entry.n, entry.version = n, version
                return
        cols = history.columns(*_HISTORY_COLUMNS)
        arrays = {c: _as_array(cols[c]) for c in _HISTORY_COLUMNS}
        if len({len(a) for a in arrays.values()}) != 1:
            raise ValueError(f"run history: columns of different lengths "
                             f"{ {c: len(a) for c, a in arrays.items()} }")
        entry.cols = arrays
        entry.n = len(arrays["step"])
        entry.version = version


_DEFAULT_CACHE = SnapshotCache()


def _epoch_steps(run, epoch_numbers: np.ndarray, steps: np.ndarray, epoch_col: np.ndarray) -> np.ndarray:
    """The step at which each listed epoch ended (its x on the step axis)."""
    per_epoch = getattr(run, "steps_per_epoch", None)
    if per_epoch:
        return epoch_numbers * float(per_epoch)
    if len(steps) and len(epoch_col):
        # the last logged step of each epoch (the epoch column never decreases)
        at = np.searchsorted(epoch_col, epoch_numbers, side="right") - 1
        out = steps[np.clip(at, 0, len(steps) - 1)].astype(np.float64)
        out[at < 0] = np.nan
        return out
    return np.full(len(epoch_numbers), np.nan)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _label(run, number: int, current: bool) -> str:
    note = _shorten(str(getattr(run, "note", "") or "").strip(), _LABEL_CHARS)
    name = getattr(run, "display_name", None) or f"run {number}"    # "earlier 3": a run of an earlier kernel
    text = name + (f": {note}" if note else "")
    status = getattr(run, "status", "")
    if status in ("failed", "diverged") or (current and status in ("stopped", "paused")):
        text += f" ({status})"
    return text


def _run_snapshot(run, number: int, current: bool, metric: str, max_points: int,
                  cache: SnapshotCache) -> dict:
    entry = cache.entry(run)
    config = getattr(run, "config", None)
    epochs = list(getattr(run, "epochs", ()) or ())
    key = (entry.version, len(epochs), getattr(run, "status", ""), getattr(run, "note", ""), number, current,
           metric, max_points, getattr(run, "steps_per_epoch", None), getattr(config, "epochs", None))
    if entry.version is not None and entry.snap_key == key:
        return dict(entry.snap)
    cols = entry.cols
    # a run continued from another is drawn from where its parent ended
    offset = float((getattr(run, "continued_from", None) or {}).get("step") or 0)
    steps = cols["step"] + offset if offset else cols["step"]
    out: dict[str, Any] = {
        "id": str(getattr(run, "id", number)), "number": number,
        "label": _label(run, number, current), "status": str(getattr(run, "status", "")),
        "current": current, "version": (entry.version, len(epochs)),
    }
    for name in STEP_SERIES:
        out[name] = _small(*decimate(steps, cols[name], max_points, drop_flat=True))
    numbers = np.array([e.get("epoch", i + 1) for i, e in enumerate(epochs)], dtype=np.float64)
    ex = _epoch_steps(run, numbers, cols["step"], cols["epoch"]) + offset
    for name, field in (("val_loss", "val_loss"), ("metric", metric)):
        y = np.array([_float(e.get(field)) for e in epochs], dtype=np.float64)
        out[name] = _small(*decimate(ex, y, max_points))
    per_epoch = getattr(run, "steps_per_epoch", None)
    planned = getattr(config, "epochs", None)
    out["x_total"] = float(per_epoch * planned) + offset if per_epoch and planned else None
    entry.snap_key, entry.snap = key, out
    return dict(out)


def _small(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 halves what is sent; steps stay exact up to 16 million, values far past what a plot shows."""
    return x.astype(np.float32), y.astype(np.float32)


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def snapshot(runs: Sequence, task: Optional[str] = None, faint: int = FAINT_RUNS,
             max_points: int = MAX_POINTS, cache: Optional[SnapshotCache] = None) -> dict:
    """What the figure needs from ``runs`` (oldest first; the last is the current run).

    Parameters
    ----------
    runs : sequence of Run
        Usually ``trainer.runs``. Only the last ``faint + 1`` are read.
    task : str, optional
        "classification", "binary" or "regression" (default: the last run's ``task``);
        picks the main metric (:data:`MAIN_METRIC`).
    faint : int
        How many earlier runs to draw faintly.
    max_points : int
        Points per line after decimation.
    cache : SnapshotCache, optional
        Where converted histories are kept (default: one shared by the process).

    Returns
    -------
    dict
        A picklable dict of small numpy arrays (layout in the module docstring).
    """
    runs = list(runs)
    if task is None:
        task = getattr(runs[-1], "task", None) if runs else "classification"
    metric, metric_label = main_metric(task)
    if not isinstance(faint, int) or faint < 0:
        raise ValueError(f"faint: got {faint!r}; accepted: an int >= 0")
    cache = _DEFAULT_CACHE if cache is None else cache
    shown = runs[-(faint + 1):] if runs else []
    # runs are numbered by their place among the Trainer's own (earlier kernels' runs have a display_name)
    numbers, n = [], 0
    for r in runs:
        if not getattr(r, "display_name", None):
            n += 1
        numbers.append(n)
    numbers = numbers[len(runs) - len(shown):]
    with cache.lock:
        # an earlier kernel's run is never the current one: with no run of its own yet, all are faint
        snaps = [_run_snapshot(r, numbers[i], i == len(shown) - 1 and not getattr(r, "display_name", None),
                               metric, max_points, cache)
                 for i, r in enumerate(shown)]
    stamp = (task, max_points) + tuple(
        (s["id"], s["label"], s["status"], getattr(r.history, "version", len(r.history)),
         len(getattr(r, "epochs", ()) or ()))
        for s, r in zip(snaps, shown))
    return {"version": SNAPSHOT_VERSION, "task": task, "metric": metric, "metric_label": metric_label,
            "stamp": stamp, "runs": snaps}


# -- axis limits --------------------------------------------------------------------------------------

_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def _nice_ceil(v: float) -> float:
    if v <= 0:
        return -_nice_floor(-v)
    e = math.floor(math.log10(v))
    m = v / 10 ** e
    return next(s for s in _NICE if s >= m - 1e-9) * 10 ** e


def _nice_floor(v: float) -> float:
    if v <= 0:
        return -_nice_ceil(-v) if v < 0 else 0.0
    e = math.floor(math.log10(v))
    m = v / 10 ** e
    return next(s for s in reversed(_NICE) if s <= m + 1e-9) * 10 ** e


def fit_linear(lo: float, hi: float, old: Optional[tuple] = None,
               bounds: tuple = (-math.inf, math.inf)) -> tuple[float, float]:
    """Limits for data in ``[lo, hi]``; ``old`` limits are kept while the data fits in them.

    A first fit is snug (5% margin, rounded to a nice number, 0 included for
    non-negative data that starts near it). When data leaves ``old`` limits the
    axis grows with 2x headroom on that side, so the next change is far off.
    """
    if old is not None and old[0] <= lo and hi <= old[1]:
        return old
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    new_lo, new_hi = lo - 0.05 * span, hi + 0.05 * span
    if lo >= 0 and lo <= 0.5 * hi:
        new_lo = 0.0
    new_lo, new_hi = _nice_floor(new_lo), _nice_ceil(new_hi)
    if old is not None:
        # grow only the side the data left, by its span again; the other side stays put
        new_lo = old[0] if lo >= old[0] else _nice_floor(lo - span)
        new_hi = old[1] if hi <= old[1] else _nice_ceil(hi + span)
        if lo >= 0 and new_lo < 0 <= old[0]:
            new_lo = 0.0
    new_lo, new_hi = max(new_lo, bounds[0]), min(new_hi, bounds[1])
    if new_hi <= new_lo:
        new_hi = new_lo + 1.0
    return new_lo, new_hi


def fit_log(lo: float, hi: float, old: Optional[tuple] = None) -> tuple[float, float]:
    """Decade limits for positive data in ``[lo, hi]``, half a decade of margin; on overflow a decade more."""
    if old is not None and old[0] <= lo and hi <= old[1]:
        return old
    a = math.floor(math.log10(lo) - 0.5)
    b = math.ceil(math.log10(hi) + 0.5)
    if old is not None:
        # grow only the side the data left, by a decade more; the other side stays put
        a = round(math.log10(old[0])) if lo >= old[0] else a - 1
        b = round(math.log10(old[1])) if hi <= old[1] else b + 1
    return 10.0 ** a, 10.0 ** b


def _values(snap: dict, names: Iterable[str], positive: bool = False, only: Optional[dict] = None) -> np.ndarray:
    """The finite values of the ``names`` series: of run ``only`` when it has any, else of every run."""
    names = tuple(names)

    def of(runs):
        parts = [run[n][1] for run in runs for n in names]
        v = np.concatenate(parts) if parts else np.empty(0)
        v = v[np.isfinite(v)]
        return v[v > 0] if positive else v
    if only is not None:
        v = of([only])
        if len(v):
            return v
    return of(snap["runs"])


def _robust_hi(v: np.ndarray) -> float:
    """The top of the data, but a few spikes far above the rest may go off the top edge."""
    top = float(v.max())
    if len(v) >= 20:
        q95 = float(np.quantile(v, 0.95))
        if q95 > 0:
            top = min(top, 3.0 * q95)
    return top


# -- the figure (renderer side) -----------------------------------------------------------------------

class LiveFigure:
    """A 4-panel figure that turns snapshots into PNG frames, redrawing as little as it can.

    Parameters
    ----------
    size : (int, int)
        Width and height as shown on the page, in CSS pixels (text sizes are set in these).
    scale : float
        Device pixels per CSS pixel: the PNG is ``size * scale`` pixels (2 for a high-density
        screen), so text is as large on the page at any scale and sharp at 2.

    Attributes
    ----------
    full_draws : int
        How many frames needed a full redraw (run set, legend or x limits changed).
    partial_draws : int
        How many frames redrew some axes alone (only their y limits changed).
    chrome_draws : int
        How many full redraws had to draw the axes themselves (ticks, grids, titles): the others found
        them drawn at the same limits and layout before, and drew only the lines and legends over them.
    frames : int
        Frames drawn.
    """

    def __init__(self, size: tuple[int, int] = (720, 440), scale: float = 1.0):
        w, h = _check_size(size)
        self.size = (w, h)
        self.scale = check_scale(scale)
        # 72 dpi: one point is one CSS pixel, so font sizes below are pixels on the page
        self.fig = Figure(figsize=(w / 72, h / 72), dpi=72 * self.scale)
        self.canvas = FigureCanvasAgg(self.fig)
        grid = self.fig.subplots(2, 2, sharex=True)
        self.axes = {"loss": grid[0, 0], "metric": grid[0, 1], "grad_norm": grid[1, 0], "lr": grid[1, 1]}
        self._series_axes = {"loss": "loss", "val_loss": "loss", "metric": "metric",
                             "grad_norm": "grad_norm", "lr": "lr"}
        for name, title in (("loss", "loss"), ("metric", "val metric"),
                            ("grad_norm", "gradient norm"), ("lr", "learning rate")):
            ax = self.axes[name]
            # y given: the title sits at the top (what matplotlib works out anyway, with no ticks up there)
            # without measuring every tick label at each full draw
            ax.set_title(title, fontsize=TITLE_PX, pad=3, y=1.0)
            ax.tick_params(labelsize=TICK_PX, pad=2, length=3)
            ax.grid(True, alpha=0.25, linewidth=0.6)
            # axis labels at fixed places too: matplotlib otherwise measures the tick labels of every axis
            # sharing x to place them, the largest cost of a full draw (together ~35% of 0.2 s)
            below = ax.transAxes + ScaledTranslation(0, -XLABEL_BELOW_PX / 72, self.fig.dpi_scale_trans)
            ax.xaxis.set_label_coords(0.5, 0, transform=below)
            ax.yaxis.set_label_coords(0, 0.5)     # no y labels: nothing to place
        for name in ("grad_norm", "lr"):
            self.axes[name].set_yscale("log")
        for name in ("grad_norm", "lr"):
            self.axes[name].set_xlabel("step", fontsize=TICK_PX)
        self.current = {s: self._line(s, 1.0, True) for s in SERIES}
        self.faint = [{s: self._line(s, a, False) for s in SERIES} for a in _FAINT_ALPHA]
        self._layout(40)
        self._empty_text = self.fig.text(0.5, 0.45, "", ha="center", va="center", fontsize=13, color="0.4")
        self._legends: list = []
        self._background = None
        self._background_key = None
        self._limits: dict[str, tuple] = {}
        # paints the figure's background colour over one axes' region before it is drawn again alone
        self._eraser = Rectangle((0, 0), 1, 1, transform=IdentityTransform(), facecolor=self.fig.get_facecolor(),
                                 edgecolor="none", linewidth=0)
        self._eraser.set_figure(self.fig)
        self._chrome: "OrderedDict[tuple, Any]" = OrderedDict()     # drawn axes without lines, by limits and layout
        self.full_draws = 0
        self.partial_draws = 0
        self.chrome_draws = 0
        self.frames = 0

    def _line(self, series: str, alpha: float, current: bool) -> Line2D:
        ax = self.axes[self._series_axes[series]]
        epoch = series in EPOCH_SERIES
        line, = ax.plot([], [], color=_COLORS[series], alpha=alpha,
                        linewidth=1.2 if series in STEP_SERIES else 1.7,
                        marker="o" if (epoch and current) else None, markersize=3,
                        zorder=3 if current else 2)
        line.set_animated(current)        # current lines are drawn per frame over the cached background
        return line

    # -- per frame ------------------------------------------------------------------------------
    def update(self, snap: dict) -> None:
        """Draw ``snap`` onto the canvas (blitting when the background is still valid)."""
        _check_snapshot(snap)
        runs = snap["runs"]
        cur = runs[-1] if runs and runs[-1].get("current", True) else None
        faint = [r for r in runs if r is not cur][::-1][:len(self.faint)]   # newest earlier run first
        for s in SERIES:
            self.current[s].set_data(*(cur[s] if cur else ((), ())))
        for slot, lines in enumerate(self.faint):
            r = faint[slot] if slot < len(faint) else None
            for s in SERIES:
                lines[s].set_data(*(r[s] if r else ((), ())))
        limits = self._fit_limits(snap, cur, faint)
        key = (snap["task"], snap["metric_label"],
               None if cur is None else (cur["id"], cur["label"]),
               tuple((r["id"], r["label"], r.get("version"), _len(r)) for r in faint))
        if key != self._background_key or self._background is None:
            self._full_draw(snap, cur, faint, limits)
            self._background_key = key
        elif limits != self._limits and not self._redraw_axes(snap, limits):
            self._full_draw(snap, cur, faint, limits)
        self.canvas.restore_region(self._background)
        for line in self.current.values():
            line.axes.draw_artist(line)
        self.frames += 1

    def render(self, snap: dict) -> bytes:
        """``snap`` as PNG bytes."""
        self.update(snap)
        return self.png()

    def png(self) -> bytes:
        from PIL import Image
        w, h = self.canvas.get_width_height(physical=True)
        img = Image.frombuffer("RGBA", (w, h), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        out = io.BytesIO()
        img.convert("RGB").save(out, format="PNG", compress_level=1)
        return out.getvalue()

    # -- full redraw ----------------------------------------------------------------------------
    def _apply_limits(self, snap, limits) -> None:
        self._limits = limits
        self.axes["loss"].set_xlim(*limits["x"])      # shared by all four
        for name in AXES:
            self.axes[name].set_ylim(*limits[name])
        title = snap["metric_label"]
        if limits["metric_below"]:
            title += f" (values below {limits['metric'][0]:g} off the axis)"
        self.axes["metric"].set_title(title, fontsize=TITLE_PX, pad=3, y=1.0)

    def _redraw_axes(self, snap, limits) -> bool:
        """Only some y limits changed (a run's gradient norm fell below its axis, say): redraw those axes alone
        on the cached background (about half a full redraw). False where it cannot be done that way: the x
        limits changed (all four axes share them), or what is erased would reach another axes, its tick
        labels or title, or a legend.

        What a y-limit change alters lies in the axes' rectangle and its y tick labels (and the title, for the
        metric's "values below" note): that region, as it was and as it becomes, and the x axis's, is painted
        over with the figure's colour, and the axes drawn again whole."""
        if limits["x"] != self._limits.get("x"):
            return False
        changed = [name for name in AXES if limits[name] != self._limits.get(name)]
        if limits["metric_below"] != self._limits.get("metric_below") and "metric" not in changed:
            changed.append("metric")
        renderer = self.canvas.get_renderer()

        def region(*boxes):
            return Bbox.union([b for b in boxes if b is not None])      # an axis with nothing to draw has none

        def axes_region(ax):
            return region(ax.bbox.padded(self.scale), ax.yaxis.get_tightbbox(renderer),
                          ax.title.get_window_extent(renderer))
        old = {name: axes_region(self.axes[name]) for name in changed}
        # the x axis (ticks, their labels, the "step" label) does not change, but is drawn again with the axes:
        # its region is painted over too
        xboxes = [self.axes[name].xaxis.get_tightbbox(renderer) for name in changed]
        self._apply_limits(snap, limits)
        regions = [region(old[n], axes_region(self.axes[n]), x).padded(self.scale) for n, x in zip(changed, xboxes)]
        others = [leg.get_window_extent(renderer) for leg in self._legends]
        for name in AXES:
            if name not in changed:
                ax = self.axes[name]
                others += [ax.bbox.padded(4 * self.scale), ax.title.get_window_extent(renderer),
                           ax.yaxis.get_tightbbox(renderer), ax.xaxis.get_tightbbox(renderer)]
        if any(r.overlaps(b) for r in regions for b in others if b is not None):
            return False        # the full draw that follows draws everything at the new limits
        self.canvas.restore_region(self._background)
        for box in regions:
            self._eraser.set_bounds(box.x0, box.y0, box.width, box.height)
            self._eraser.draw(renderer)
        for name in changed:
            self.axes[name].draw(renderer)       # its animated (current-run) lines are left out, as in a full draw
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.partial_draws += 1
        return True

    def _full_draw(self, snap, cur, faint, limits) -> None:
        self._apply_limits(snap, limits)
        for leg in self._legends:
            leg.remove()
        self._legends = self._make_legends(cur, faint)
        self._empty_text.set_text("" if snap["runs"] else "no runs yet")
        # the axes' frames, ticks, grids and titles at these limits and this layout (a new run's first frame
        # usually has the limits the previous run's had: a slider restart starts from the same weights)
        chrome_key = (tuple(sorted(limits.items())), snap["metric_label"], self.fig.subplotpars.top)
        chrome = self._chrome.pop(chrome_key, None)
        if chrome is None:
            chrome = self._draw_chrome()
        self._chrome[chrome_key] = chrome
        while len(self._chrome) > CHROME_CACHE:
            self._chrome.popitem(last=False)
        self.canvas.restore_region(chrome)
        # then what a full draw draws over them, in its order: the faint runs (zorder 2), the frames (2.5),
        # the legends (figure level); the animated (current-run) lines are left out
        renderer = self.canvas.get_renderer()
        for ax in self.axes.values():
            for line in self._faint_lines(ax):
                line.draw(renderer)
            for spine in ax.spines.values():
                spine.draw(renderer)
        for leg in self._legends:
            leg.draw(renderer)
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.full_draws += 1

    def _draw_chrome(self):
        """A full draw without the runs' lines, the axes' frames and the legends (drawn over it by
        :meth:`_full_draw`): the region to restore."""
        hidden = list(self._legends) + [artist for ax in self.axes.values()
                                        for artist in (*self._faint_lines(ax), *ax.spines.values())]
        for artist in hidden:
            artist.set_visible(False)
        try:
            self.canvas.draw()
        finally:
            for artist in hidden:
                artist.set_visible(True)
        self.chrome_draws += 1
        return self.canvas.copy_from_bbox(self.fig.bbox)

    @staticmethod
    def _faint_lines(ax) -> list:
        """The earlier runs' lines of ``ax``, in the order a full draw draws them (the current run's are animated)."""
        return [line for line in ax.get_lines() if not line.get_animated()]

    def _make_legends(self, cur, faint) -> list:
        """The series legend (top left) and the runs legend (top right), sized to fit side by side.

        Run labels wrap onto two lines when they are long, in one or two columns, whichever fits;
        only what still does not fit is cut (with "…"). Sets the top margin to the legends'
        height, so they never sit on the plots.
        """
        renderer = self.canvas.get_renderer()
        w, h = self.size
        px = 1.0 / self.scale          # window extents are in device pixels; the layout is in CSS pixels
        series = [Line2D([], [], color=_COLORS["loss"], linewidth=1.4),
                  Line2D([], [], color=_COLORS["val_loss"], linewidth=1.7, marker="o", markersize=3)]
        style = dict(fontsize=LEGEND_PX, frameon=False, handlelength=1.6, borderaxespad=0.2, labelspacing=0.25,
                     columnspacing=1.0, handletextpad=0.5)
        left = self.fig.legend(series, ["train loss (per step)", "val loss (per epoch)"],
                               loc="upper left", bbox_to_anchor=(4 / w, 1 - 2 / h), **style)
        legends = [left]
        handles, labels = [], []
        if cur is not None:
            handles.append(Line2D([], [], color="0.15", linewidth=1.8))
            labels.append(cur["label"] + " — current")
        for slot, r in enumerate(faint):
            handles.append(Line2D([], [], color="0.15", linewidth=1.8, alpha=_FAINT_ALPHA[slot]))
            labels.append(r["label"])
        if handles:
            room = w - left.get_window_extent(renderer).width * px - 20
            right = None
            # characters per line: what 10 px text holds in the room left (about 5.6 px a character)
            chars = max(16, int(room / 5.6))
            tries = [(2, chars // 2 - 3), (1, chars)] + [(1, n) for n in (chars * 3 // 4, chars // 2, 24, 16)]
            for ncols, width in tries:
                if ncols > len(handles) or width < 12:
                    continue
                if right is not None:
                    right.remove()
                shown = [wrap_label(t, width) for t in labels]
                right = self.fig.legend(handles, shown, loc="upper right", bbox_to_anchor=(1 - 4 / w, 1 - 2 / h),
                                        ncols=ncols, **style)
                if right.get_window_extent(renderer).width * px <= room:
                    break
            legends.append(right)
        top_px = max(leg.get_window_extent(renderer).height * px for leg in legends) + 6
        self._layout(top_px)
        return legends

    def _layout(self, legend_px: float) -> None:
        """Margins in CSS pixels (tick labels, titles, the legends), whatever the figure's size."""
        w, h = self.size
        title_px, bottom_px, left_px, right_px, col_gap_px = 20, 36, 50, 14, 54
        top = 1 - (legend_px + title_px) / h
        bottom = bottom_px / h
        axes_h = ((top - bottom) * h - title_px - 10) / 2
        axes_w = (w - left_px - right_px - col_gap_px) / 2
        self.fig.subplots_adjust(left=left_px / w, right=1 - right_px / w, top=top, bottom=bottom,
                                 hspace=(title_px + 10) / max(axes_h, 1), wspace=col_gap_px / max(axes_w, 1))

    # -- limits ---------------------------------------------------------------------------------
    def _fit_limits(self, snap, cur, faint) -> dict[str, tuple]:
        reuse = self._background_key is not None and self._background_key[2] is not None \
            and cur is not None and self._background_key[2][0] == cur["id"]
        old = self._limits if reuse else {}
        limits = {}
        # x: the planned length of the current run (when known) and the earlier runs' lengths;
        # past that, room to double
        def last_x(r):
            return max([float(r[s][0][-1]) for s in SERIES if len(r[s][0])] + [0.0])
        cur_hi = last_x(cur) if cur else 0.0
        want = max([last_x(r) for r in faint] + [float(cur.get("x_total") or 0.0) if cur else 0.0, 1.0])
        old_x = old.get("x")
        if old_x is not None and max(cur_hi, want) <= old_x[1]:
            limits["x"] = old_x
        elif cur_hi > want:
            limits["x"] = (0.0, _nice_ceil(2.0 * cur_hi))
        else:
            limits["x"] = (0.0, want)
        # loss and gradient norm follow the current run: an earlier run that blew up to 1e8 must not
        # squash the new one into a flat line at 0 (its faint line goes off the top instead)
        loss = _values(snap, ("loss", "val_loss"), only=cur)
        limits["loss"] = fit_linear(float(loss.min()), _robust_hi(loss), old.get("loss")) \
            if len(loss) else (0.0, 1.0)
        metric = _values(snap, ("metric",))
        if snap["metric"] == "val_r2":
            bounds = (-1.0, 1.05)       # R² far below 0 early on would squash the useful range
        else:
            bounds = (0.0, 1.02)
        limits["metric"] = fit_linear(float(metric.min()), float(metric.max()), old.get("metric"), bounds) \
            if len(metric) else (0.0, 1.0)
        limits["metric_below"] = bool(len(metric) and metric.min() < limits["metric"][0])
        for name in ("grad_norm", "lr"):
            v = _values(snap, (name,), positive=True, only=cur if name == "grad_norm" else None)
            limits[name] = fit_log(float(v.min()), float(v.max()), old.get(name)) if len(v) else (1e-3, 1e1)
        return limits


def _len(run: dict) -> tuple:
    return tuple(len(run[s][0]) for s in SERIES)


def wrap_label(text: str, width: int, lines: int = 2) -> str:
    """``text`` on at most ``lines`` lines of ``width`` characters, cut with "…" only past that."""
    import textwrap
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" …",
                                    break_long_words=True)) or text


def check_scale(scale) -> float:
    """A figure scale (device pixels per CSS pixel), 1 to 3, to a quarter."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale: got {scale!r}; accepted: a number from 1 to 3") from None
    if not 1.0 <= value <= 3.0:
        raise ValueError(f"scale: got {scale!r}; accepted: a number from 1 to 3")
    return round(value * 4) / 4


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"size: got {size!r}; accepted: (width, height) in pixels") from None
    if not (320 <= w <= 4000 and 200 <= h <= 4000):
        raise ValueError(f"size: got {size!r}; accepted: width 320 to 4000 and height 200 to 4000 pixels")
    return w, h


def _check_snapshot(snap) -> None:
    if not isinstance(snap, dict) or snap.get("version") != SNAPSHOT_VERSION or "runs" not in snap:
        raise TypeError(f"snapshot: expected a dict from nb_trainer.ui.figure.snapshot() "
                        f"(version {SNAPSHOT_VERSION}), got {type(snap).__name__}")
