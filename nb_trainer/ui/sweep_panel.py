"""The panel's Sweep section: which controls to sweep and over what range, Start sweep / Stop,
the trials as they train, and Use best.

Built once, like the rest of the panel; a daemon thread brings it up to date with the
Trainer's latest sweep (started here, by ``t.sweep(...)`` or by ``%nbsweep``). While no run
of the Trainer trains, the sweep's trials are drawn in the panel's figure: the best trial
solid, the latest others faintly underneath.
"""
from __future__ import annotations

import html
import logging
import math
import os
import threading

import ipywidgets as W

from ..config import FIELDS, format_value
from . import status as S
from .controls import show_value

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5     # while a sweep runs
IDLE_SECONDS = 2.0
SORTS = (("trial", "trial"), ("best metric", "metric"), ("status", "status"))

# what each sweepable control samples, and the range it starts with around the control's value
#   "log": loguniform(low, high); "linear": uniform(low, high); "choice": one of the listed values
SWEEPABLE = {
    "lr": "log", "weight_decay": "log", "l1": "log", "grad_clip": "log",
    "momentum": "linear", "dropout": "linear",
    "optimizer": "choice", "batch_size": "choice",
}


def default_range(name: str, value) -> str:
    """The range a sweep row starts with, as text: "low : high" or "a, b, c"."""
    spec = FIELDS[name]
    kind = SWEEPABLE[name]
    if kind == "log":
        centre = value if value else math.sqrt(spec.slider_low * spec.slider_high)
        low, high = max(spec.slider_low, centre / 10), min(spec.slider_high, centre * 10)
        return f"{low:.2g} : {high:.2g}"
    if kind == "linear":
        if name == "momentum":
            return "0.8 : 0.99"
        return "0 : 0.5"
    if name == "optimizer":
        return "adam, adamw, sgd"
    sizes = [v for v in (value // 2, value, value * 2) if spec.slider_low <= v <= spec.slider_high]
    return ", ".join(str(v) for v in sizes)


def parse_range(name: str, text: str):
    """A sweep row's text as a search-space entry (``nbt.loguniform``, ``nbt.uniform``, ``nbt.choice``)."""
    from ..sweep import choice, loguniform, uniform
    spec = FIELDS[name]
    kind = SWEEPABLE[name]
    text = text.strip()
    try:
        if kind in ("log", "linear"):
            low, high = (float(part) for part in text.split(":"))
            return loguniform(low, high) if kind == "log" else uniform(low, high)
        values = [v.strip() for v in text.split(",") if v.strip()]
        return choice([int(v) for v in values] if spec.kind == "int" else values)
    except ValueError as e:
        shape = "low : high" if kind in ("log", "linear") else "comma-separated values"
        raise ValueError(f"sweep range of {name}: {text!r} is not {shape} ({e})") from None


def _value_text(run, fields) -> str:
    return ", ".join(f"{k}={format_value(getattr(run.config, k))}" for k in fields)


def sweep_table_html(sweep, task: str, sort: str = "trial", limit: int = 200) -> str:
    """The trials of ``sweep``: number, swept values, epochs, best metric, status; best first with sort="metric"."""
    if sweep is None:
        return "<div class='nbt-sweep-trials'><i>no sweep yet</i></div>"
    runs = list(sweep.runs)
    best = sweep.best
    rows = []
    scored = []
    for run in runs:
        _, value = S.best_metric(run, task)
        scored.append((run, value))
    if sort == "metric":
        higher = sweep.mode == "max"
        scored.sort(key=lambda rv: (rv[1] is None, -(rv[1] or 0) if higher else (rv[1] or 0)))
    elif sort == "status":
        scored.sort(key=lambda rv: (rv[0].status, rv[0].trial_number))
    for run, value in scored[:limit]:
        shown = "–" if value is None else f"{value:.4g}"
        color = S.STATUS_COLORS.get(run.status, "#666")
        mark = " <b>★</b>" if run is best else ""
        rows.append(f"<tr class='nbt-trial-row'><td>{run.trial_number}{mark}</td>"
                    f"<td>{html.escape(_value_text(run, sweep.space.fields))}</td>"
                    f"<td>{len(run.epochs)}/{run.config.epochs}</td><td>{shown}</td>"
                    f"<td style='color:{color}'>{html.escape(run.status)}</td></tr>")
    metric = html.escape(sweep.metric.replace("val_", "val "))
    head = (f"<tr><th>trial</th><th>values</th><th>epochs</th><th>best {metric}</th><th>status</th></tr>")
    pending = sweep.trials - len(runs)
    tail = (f"<tr><td colspan=5 style='color:#666'><i>{pending} trial(s) not started yet</i></td></tr>"
            if pending > 0 and not sweep.done else "")
    return (f"<table class='nbt-sweep-trials nbt-runs' style='border-collapse:collapse;font-size:12px'>{head}"
            + "".join(rows) + tail + "</table>")


def sweep_status_html(sweep) -> str:
    if sweep is None:
        return ""
    color = {"running": "#1a7f37", "finished": "#0550ae", "stopped": "#57606a", "failed": "#cf222e"}.get(
        sweep.status, "#666")
    counts = {}
    for r in list(sweep.runs):
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    text = f"<b style='color:{color}'>sweep {html.escape(sweep.status)}</b> · {sweep.trials} trials"
    if parts:
        text += f" ({html.escape(parts)})"
    best = sweep.best
    if best is not None:
        _, value = S.best_metric(best, best.task)
        text += (f" · best: trial {best.trial_number} ({html.escape(_value_text(best, sweep.space.fields))}), "
                 f"{html.escape(sweep.metric)} {value:.4g}")
    if sweep.error is not None:
        text += (f"<div style='color:#cf222e'>{html.escape(type(sweep.error).__name__)}: "
                 f"{html.escape(str(sweep.error))}</div>")
    return f"<div class='nbt-sweep-status-text'>{text}</div>"


class SweepSection(W.VBox):
    """The Sweep section of one :class:`~nb_trainer.ui.panel.Panel`.

    Attributes
    ----------
    rows : dict
        ``{field: (checkbox, range text)}``: tick a field to sweep it over its range.
    trials, parallel, scheduler : widgets
    buttons : dict
        "start", "stop", "use_best".
    table : ipywidgets.HTML
        The trials of the Trainer's latest sweep.
    """

    def __init__(self, panel):
        self.panel = panel
        self.trainer = panel.trainer
        self._closed = False
        self._wake = threading.Event()
        self._plot_signature = None
        self._shown_png = None
        config = panel._shown_config()
        self.rows: dict = {}
        row_boxes = []
        for name in SWEEPABLE:
            if name == "dropout" and not self.trainer.has_dropout:
                continue
            box = W.Checkbox(value=False, description=FIELDS[name].label, indent=False,
                             layout=W.Layout(width="150px"))
            box.add_class(f"nbt-sweep-{name.replace('_', '-')}")
            text = W.Text(value=default_range(name, getattr(config, name)), layout=W.Layout(width="190px"),
                          tooltip="low : high" if SWEEPABLE[name] != "choice" else "comma-separated values")
            text.add_class(f"nbt-sweep-range-{name.replace('_', '-')}")
            self.rows[name] = (box, text)
            row_boxes.append(W.HBox([box, text]))
        style = {"description_width": "60px"}
        self.trials = W.BoundedIntText(value=8, min=1, max=100_000, description="trials", style=style,
                                       layout=W.Layout(width="150px"))
        self.trials.add_class("nbt-sweep-trials-count")
        self.parallel = W.BoundedIntText(value=os.cpu_count() or 1, min=1, max=100_000, description="parallel",
                                         style=style, layout=W.Layout(width="150px"))
        self.parallel.add_class("nbt-sweep-parallel")
        self.scheduler = W.Dropdown(options=[("ASHA (stop weak trials early)", "asha"),
                                             ("FIFO (every trial to the end)", "fifo")],
                                    value="asha", description="scheduler", style=style,
                                    layout=W.Layout(width="300px"))
        self.buttons = {
            "start": W.Button(description="Start sweep", icon="play", button_style="success"),
            "stop": W.Button(description="Stop sweep", icon="stop", button_style="danger", disabled=True),
            "use_best": W.Button(description="Use best", icon="check", disabled=True,
                                 tooltip="set the controls to the best trial's values"),
        }
        for name, b in self.buttons.items():
            b.layout = W.Layout(width="120px")
            b.add_class(f"nbt-sweep-{name.replace('_', '-')}")
        self.buttons["start"].on_click(lambda _: panel._guard(self.start))
        self.buttons["stop"].on_click(lambda _: panel._guard(self.stop))
        self.buttons["use_best"].on_click(lambda _: panel._guard(self.use_best))
        self.sort = W.Dropdown(options=list(SORTS), value="trial", description="sort by", style=style,
                               layout=W.Layout(width="200px"))
        self.sort.observe(lambda _: self._wake.set(), names="value")
        self.status = W.HTML()
        self.status.add_class("nbt-sweep-status")
        self.table = W.HTML(sweep_table_html(None, self.trainer.task))
        self.table.add_class("nbt-sweep-table")
        super().__init__([
            W.HTML("<b>Sweep</b> <span style='color:#666'>tick the settings to sweep; each trial trains from "
                   "the initial weights on Ray, the other settings as the controls show them</span>"),
            W.HBox([W.VBox(row_boxes),
                    W.VBox([self.trials, self.parallel, self.scheduler,
                            W.HBox([self.buttons["start"], self.buttons["stop"], self.buttons["use_best"]])])],
                   layout=W.Layout(flex_flow="row wrap")),
            self.status, W.HBox([self.sort]), self.table])
        self.add_class("nbt-sweep")
        self._thread = threading.Thread(target=self._loop, name="nbt-sweep-panel", daemon=True)
        self._thread.start()

    # -- the user ----------------------------------------------------------------------
    @property
    def sweep(self):
        """The Trainer's latest sweep, or None."""
        sweeps = getattr(self.trainer, "sweeps", None)
        return sweeps[-1] if sweeps else None

    def space(self) -> dict:
        """The search space the ticked rows describe."""
        space = {name: parse_range(name, text.value) for name, (box, text) in self.rows.items() if box.value}
        if not space:
            raise ValueError("tick at least one setting to sweep")
        return space

    def start(self):
        """Start a sweep of the ticked settings; the other settings are the controls' values."""
        current = self.sweep
        if current is not None and not current.done:
            raise RuntimeError("a sweep is running: stop it first")
        space = self.space()
        fixed = {k: v for k, v in self.panel.values().items() if k not in space}
        sweep = self.trainer.sweep(space, trials=int(self.trials.value), parallel=int(self.parallel.value),
                                   scheduler=self.scheduler.value, **fixed)
        self._wake.set()
        return sweep

    def stop(self) -> None:
        sweep = self.sweep
        if sweep is not None:
            sweep.stop()
        self._wake.set()

    def use_best(self) -> None:
        """Set the controls to the best trial's values (nothing retrains until you press Start)."""
        sweep = self.sweep
        best = sweep.best if sweep is not None else None
        if best is None:
            raise RuntimeError("no trial has finished an epoch yet")
        with self.panel._syncing():
            for name in sweep.space.fields:
                if name in self.panel.controls and not (name == "dropout" and not self.trainer.has_dropout):
                    show_value(self.panel.controls[name], getattr(best.config, name))

    # -- reflecting the sweep ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed:
            sweep = self.sweep
            self._wake.wait(REFRESH_SECONDS if sweep is not None and not sweep.done else IDLE_SECONDS)
            self._wake.clear()
            if self._closed:
                break
            try:
                self.refresh()
            except Exception:  # a broken refresh must not end the section's updates
                log.exception("nb_trainer sweep section refresh failed")

    def refresh(self) -> None:
        sweep = self.sweep
        running = sweep is not None and not sweep.done
        with self.hold_sync():
            self.status.value = sweep_status_html(sweep)
            self.table.value = sweep_table_html(sweep, self.trainer.task, self.sort.value)
            self.buttons["stop"].disabled = not running
            self.buttons["start"].disabled = running
            self.buttons["use_best"].disabled = sweep is None or sweep.best is None
        self._update_plot(sweep)

    def _update_plot(self, sweep) -> None:
        """Draw the trials in the panel's figure, while the Trainer itself is not training."""
        if sweep is None or not sweep.runs or self.trainer.running:
            return
        from . import figure, render
        runs = list(sweep.runs)
        best = sweep.best or runs[-1]
        shown = [r for r in runs if r is not best][-figure.FAINT_RUNS:] + [best]
        signature = tuple((id(r), r.history.version, len(r.epochs), r.status) for r in shown)
        renderer = self.panel._renderer or render.get_renderer()
        self.panel._renderer = renderer
        if signature != self._plot_signature:
            self._plot_signature = signature
            snap = figure.snapshot(shown, self.trainer.task)
            for entry, run in zip(snap["runs"], shown):
                entry["label"] = ("best: " if run is best else "") + run.note
            renderer.submit(id(self), snap, size=self.panel.size, scale=getattr(self.panel, "scale", 1.0),
                            callback=lambda png: self._wake.set())
        png = renderer.poll(id(self))
        if png and png is not self._shown_png:
            self._shown_png = png
            self.panel._real_frame = True   # a drawn figure: the panel no longer puts its placeholder back
            self.panel.plot.value = png

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        renderer = self.panel._renderer
        if renderer is not None:
            renderer.forget(id(self))
        super().close()
