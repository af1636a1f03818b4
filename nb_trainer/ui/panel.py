"""The notebook panel: controls, live plot, status, health warnings, runs.

The widget tree is built once; afterwards only values change, from whatever
thread (setting a trait value is safe from a background thread; an Output
widget's context manager is not, so none is used). A single daemon thread per
panel refreshes the status and submits plot snapshots to the shared renderer
process; the training thread never renders.

Displayed in a notebook, the panel also shows a static rendering of its result beside it
(:mod:`nb_trainer.ui.static`), so that the saved notebook shows the figure and the runs
table without a kernel, and it installs the kernel hooks (:mod:`nb_trainer.ui.kernel`):
Kernel › Interrupt stops training.
"""
from __future__ import annotations

import base64
import contextlib
import html
import logging
import math
import threading
import time
from typing import Optional

import ipywidgets as W

from .. import events as ev
from ..config import LIVE_FIELDS, TrainConfig
from . import status as S
from .controls import build_controls, show_value
from .placeholder import placeholder_png

RECIPE_FIELDS = ("schedule", "warmup", "accumulate", "precision")

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.5      # a new frame at most this often while a run trains
DEFAULT_SIZE = (720, 440)   # CSS pixels the figure is drawn for until the page says how wide it is shown
ASPECT = DEFAULT_SIZE[1] / DEFAULT_SIZE[0]
WIDTH_RANGE = (360, 1400)   # widths the figure is drawn at (the page may report anything)
MAX_SCALE = 2.0             # device pixels per CSS pixel drawn at most (a 3x phone gets 2x)
WAITING = "waiting for the first steps…"
NO_RUN = "no run yet: press Start or move a slider"
# what the panel sends to a run: values as the control shows them, not the slider's float
# (10 ** -2.35 is shown as 4.5e-3; the run and its code snippet say lr=0.0045)
SHOWN_VALUE = {"lr": lambda v: float(f"{v:.2g}"), "momentum": lambda v: round(v, 2),
               "dropout": lambda v: round(v, 2)}
IDLE_SECONDS = 2.0       # refresh period when nothing trains
MIN_REFRESH_SECONDS = 0.2   # the panel refreshes at most this often while a run trains
N_WARNING_ROWS = 6       # warning rows built up front; unused ones are hidden
DEFAULT_PATIENCE = 5     # what the early-stopping checkbox turns patience on to


class Panel(W.VBox):
    """The panel of one :class:`~nb_trainer.Trainer`.

    Attributes
    ----------
    controls : dict
        ``{TrainConfig field name: widget}``; setting a value retrains (restart
        mode) or changes the running optimizer (live mode, live fields only).
    plot : ipywidgets.Image
        The live 4-panel figure (PNG): a placeholder frame until the first steps are logged.
    earlier : list
        This model's runs from earlier kernels (same fingerprint), listed in the runs table and
        drawn faintly while :attr:`show_earlier` is ticked.
    """

    def __init__(self, trainer, size=DEFAULT_SIZE):
        from . import earlier as earlier_runs
        from . import render
        from .frontend import make_helper
        self.trainer = trainer
        self.size = (int(size[0]), int(size[1]))   # CSS pixels
        self.scale = 1.0                           # device pixels per CSS pixel (the page reports it)
        self._closed = False
        self._sync_thread: Optional[int] = None
        self._wake = threading.Event()
        self._urgent = False         # a run ended: refresh without waiting MIN_REFRESH_SECONDS
        self._lock = threading.Lock()
        self._plot_signature = None
        self._frames = 0
        self._shown_png = None
        self._plot_submitted = 0.0   # monotonic time of the last snapshot sent to the renderer
        self._plot_owed = False      # a newer snapshot is waiting for FRAME_SECONDS to pass
        self._last_seq: Optional[int] = None
        self._frame_lock = threading.Lock()
        self._real_frame = False     # the plot shows a drawn figure (not the placeholder)
        self._display_id: Optional[str] = None
        self._static_sig = None
        self._static_lock = threading.Lock()
        self.static_updates = 0      # how often the saved rendering was (re)published
        self.clock = S.PauseClock()
        # the renderer process takes about a second to start: start it now, not at the first frame
        self._renderer = render.get_renderer()
        self.earlier = earlier_runs.find(trainer)

        config = self._shown_config()
        model_p = next(iter(trainer._dropout_p.values()), None)
        self.controls = build_controls(config, trainer.has_dropout, model_p,
                                       cuda=getattr(trainer.device, "type", "cpu") == "cuda")
        if getattr(trainer.train_data, "is_loader", False):
            # a DataLoader batches the data itself: the slider would change nothing
            loader_bs = getattr(trainer.train_data.data, "batch_size", None)
            self.controls["batch_size"].disabled = True
            self.controls["batch_size"].tooltip = (f"the DataLoader sets the batch size ({loader_bs}); "
                                                   "use accumulate for larger effective batches")
        for name, widget in self.controls.items():
            widget.observe(lambda change, name=name: self._on_control(name, change["new"]), names="value")

        self.mode = W.ToggleButtons(options=[("restart", "restart"), ("live", "live")], value="restart",
                                    tooltips=["a change starts a new run from the initial weights",
                                              "lr, momentum, weight decay, L1, dropout and clip apply to "
                                              "the running run at its next step"],
                                    style={"button_width": "80px"})
        self.mode.add_class("nbt-mode")
        self.early_stopping = W.Checkbox(value=config.patience > 0, description="early stopping",
                                         indent=False)
        self.early_stopping.add_class("nbt-early-stopping")
        self.early_stopping.observe(self._on_early_stopping, names="value")

        self.buttons = {
            "start": W.Button(description="Start", icon="play", button_style="success"),
            "pause": W.Button(description="Pause", icon="pause"),
            "stop": W.Button(description="Stop", icon="stop", button_style="danger"),
            "reset": W.Button(description="Reset", icon="undo",
                              tooltip="stop and put the initial weights back"),
            "lr_find": W.Button(description="Find LR", icon="search",
                                tooltip="LR range test on a copy of the model"),
        }
        for name, b in self.buttons.items():
            b.layout = W.Layout(width="105px")
            b.add_class(f"nbt-{name.replace('_', '-')}")
        self.buttons["start"].on_click(lambda _: self._guard(self._start))
        self.buttons["pause"].on_click(lambda _: self._guard(self._toggle_pause))
        self.buttons["stop"].on_click(lambda _: self._guard(trainer.stop))
        self.buttons["start"].tooltip = "start a run with the values the controls show"
        self.buttons["reset"].on_click(lambda _: self._guard(trainer.reset))
        self.buttons["lr_find"].on_click(lambda _: self._guard(self._lr_find))

        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="240px"))
        self.progress.add_class("nbt-progress")
        self.progress_text = W.HTML(layout=W.Layout(flex="0 0 auto"))   # one line, never squeezed
        self.progress_text.add_class("nbt-progress-text")
        self.status = W.HTML(S.status_html(trainer.current), layout=W.Layout(flex="0 1 auto", min_width="0"))
        self.status.add_class("nbt-status")
        self.message = W.HTML()
        self.message.add_class("nbt-message")
        # fills the room the controls leave (up to 960 px), keeping its aspect; wraps below them when
        # narrower. The page reports the width it is shown at, and frames are drawn at that width.
        self.plot = W.Image(format="png", value=placeholder_png(self.size, self.scale,
                                                                WAITING if trainer.running else NO_RUN),
                            layout=W.Layout(max_width="960px", min_width="420px", height="auto",
                                            flex="1 1 480px"))
        self.plot.add_class("nbt-plot")
        self.helper = make_helper()
        if self.helper is not None:
            self.helper.observe(self._on_view, names=["width", "dpr"])
        self.show_earlier = W.Checkbox(value=True, indent=False,
                                       description=f"draw the {len(self.earlier)} runs of earlier kernels",
                                       layout=W.Layout(display=None if self.earlier else "none", width="auto"))
        self.show_earlier.add_class("nbt-show-earlier")
        self.show_earlier.observe(lambda change: self._wake.set(), names="value")

        self.warning_rows = []
        for i in range(N_WARNING_ROWS):
            text = W.HTML(layout=W.Layout(width="640px"))
            button = W.Button(description="Apply fix", button_style="warning", layout=W.Layout(width="auto"))
            button.add_class("nbt-apply-fix")
            button.on_click(lambda _, i=i: self._guard(lambda: self.apply_fix(i)))
            row = W.HBox([text, button], layout=W.Layout(display="none"))
            row.add_class("nbt-warning-row")
            self.warning_rows.append((row, text, button))
        self._warning_fixes: list[dict] = [{} for _ in range(N_WARNING_ROWS)]
        # auto-repair: apply the best-supported fix and retrain, until healthy (health/autofix.py)
        self.auto_fix_button = W.Button(description="Auto-fix", icon="magic", button_style="warning",
                                        tooltip="apply the best-supported fix and retrain from the same initial "
                                                "weights, up to 5 runs, until no warning offers a fix",
                                        layout=W.Layout(width="auto", display="none"))
        self.auto_fix_button.add_class("nbt-auto-fix")
        self.auto_fix_button.on_click(lambda _: self._guard(self._auto_fix))
        self._auto_fixing = False

        self.runs_table = W.HTML(S.runs_table_html(trainer.runs, trainer.task, earlier=self.earlier))
        self.runs_table.add_class("nbt-runs-table")
        self.run_select = W.Dropdown(options=[], description="run", layout=W.Layout(width="160px"),
                                     style={"description_width": "30px"})
        self.code_button = W.Button(description="Code", icon="code", tooltip="a snippet that reproduces the run",
                                    layout=W.Layout(width="80px"))
        self.csv_button = W.Button(description="CSV", icon="download",
                                   tooltip="a link that downloads the run's epochs as CSV",
                                   layout=W.Layout(width="80px"))
        self.continue_button = W.Button(description="Continue", icon="play",
                                        tooltip="a new run from this run's final weights, with the current controls",
                                        layout=W.Layout(width="100px"))
        self.continue_button.add_class("nbt-continue")
        self.continue_button.on_click(lambda _: self._guard(self._continue))
        self.code_button.on_click(lambda _: self._guard(self._show_code))
        self.csv_button.on_click(lambda _: self._guard(self._write_csv))
        self.export_text = W.Textarea(layout=W.Layout(width="640px", height="60px", display="none"))
        self.export_text.add_class("nbt-export")
        self.download = W.HTML(layout=W.Layout(display="none"))
        self.download.add_class("nbt-download")

        self.lr_plot = W.Image(format="png", value=b"", layout=W.Layout(width="400px", display="none"))
        self.lr_plot.add_class("nbt-lr-plot")
        self.lr_text = W.HTML()
        self.use_lr = W.Button(description="Use suggested lr", layout=W.Layout(display="none", width="160px"))
        self.use_lr.add_class("nbt-use-lr")
        self.use_lr.on_click(lambda _: self._guard(self._use_suggested_lr))
        self._suggested_lr: Optional[float] = None

        order = ["lr", "optimizer", "momentum", "weight_decay", "l1", "dropout", "batch_size", "epochs",
                 "grad_clip", "patience", "seed"]
        # the recipes (schedule, warmup, accumulation, precision) fold away under the basics
        self.recipes = W.Accordion(children=[W.VBox([self.controls[n] for n in RECIPE_FIELDS])],
                                   titles=("schedule · accumulate · precision",), selected_index=None,
                                   layout=W.Layout(width="350px"))
        self.recipes.add_class("nbt-recipes")
        left = W.VBox([self.mode] + [self.controls[n] for n in order if n != "patience"]
                      + [W.HBox([self.early_stopping, self.controls["patience"]],
                                layout=W.Layout(align_items="center"))]
                      + [self.recipes]
                      + [W.HBox([self.buttons["start"], self.buttons["pause"], self.buttons["stop"]]),
                         W.HBox([self.buttons["reset"], self.buttons["lr_find"]])],
                      layout=W.Layout(width="360px", min_width="360px", flex="0 0 auto"))
        # the early-stopping row: checkbox and a shorter patience slider fit the column
        self.early_stopping.layout = W.Layout(width="125px")
        self.controls["patience"].layout = W.Layout(width="230px")
        self.controls["patience"].style.description_width = "65px"
        header = W.HBox([self.status, self.progress, self.progress_text],
                        layout=W.Layout(align_items="center", justify_content="flex-start"))
        lr_box = W.HBox([self.lr_plot, W.VBox([self.lr_text, self.use_lr])])
        runs_box = W.VBox([self.runs_table, self.show_earlier,
                           W.HBox([self.run_select, self.continue_button, self.code_button, self.csv_button, self.download],
                                  layout=W.Layout(align_items="center")), self.export_text])
        from .sweep_panel import SweepSection
        self.sweep = SweepSection(self)          # many settings at once, on Ray (collapsed until opened)
        self.sweep_box = W.Accordion(children=[self.sweep], titles=("Sweep",), selected_index=None)
        super().__init__([header, self.message,
                          W.HBox([left, self.plot], layout=W.Layout(flex_flow="row wrap", align_items="flex-start")),
                          W.VBox([r for r, _, _ in self.warning_rows] + [self.auto_fix_button]), lr_box, runs_box, self.sweep_box])
        self.add_class("nbt-panel")
        self._key = self.model_id
        # the runs table's column gaps, the "no word from the kernel" note, and the rule that hides
        # this panel's static rendering (for saved notebooks) while the live panel is on the page
        from .static import hide_rule
        self.css = W.HTML(f"<style>{S.PANEL_CSS}\n{hide_rule(self._key)}</style>", layout=W.Layout(display="none"))
        self.children = self.children + tuple(w for w in (self.css, self.helper) if w is not None)
        self._set_controls_enabled()
        # the refresh reads the runs themselves: an epoch's end needs no event, and "logged" ones (dozens a second
        # in a fast run, each a wake of a thread in the training's process) are delivered a few times a second
        self._sub = trainer.events.subscribe(self._on_event, kinds=(ev.RUN_STARTED, ev.LOGGED, ev.WARNING, ev.RUN_ENDED),
                                             latency=MIN_REFRESH_SECONDS)
        self._thread = threading.Thread(target=self._loop, name="nbt-panel", daemon=True)
        self._thread.start()
        if self.earlier or trainer.runs:
            self._wake.set()       # something to draw already: the first refresh now, not in IDLE_SECONDS

    # -- reacting to the user --------------------------------------------------
    def _guard(self, fn) -> None:
        """Run a button's action; show an error in the panel instead of losing it."""
        try:
            self.message.value = ""
            fn()
        except (ValueError, TypeError, RuntimeError) as e:
            self.message.value = f"<span style='color:#cf222e'>{type(e).__name__}: {e}</span>"
        self._wake.set()

    def _on_control(self, name: str, value) -> None:
        if self._sync_thread == threading.get_ident():
            return  # the panel itself is showing a config, not the user changing it
        if name == "patience":
            with self._syncing():
                self.early_stopping.value = value > 0
        if name in SHOWN_VALUE and isinstance(value, float):
            value = SHOWN_VALUE[name](value)
        trainer = self.trainer

        def act():
            if self.mode.value == "live" and name in LIVE_FIELDS and trainer.running:
                trainer.change(**{name: value})
            else:
                trainer.restart(**{name: value})
        self._guard(act)

    def _on_early_stopping(self, change) -> None:
        if self._sync_thread == threading.get_ident():
            return
        self.controls["patience"].value = DEFAULT_PATIENCE if change["new"] else 0

    def _start(self) -> None:
        """Start (or restart) with what the controls show; only what differs from the last config changes."""
        base = self.trainer.config()
        model_p = next(iter(self.trainer._dropout_p.values()), None)
        changes = {}
        for name, value in self.values().items():
            now = getattr(base, name)
            if isinstance(value, float) and isinstance(now, float) and math.isclose(value, now, rel_tol=1e-9):
                continue
            if value == now or (name == "dropout" and now is None and value == model_p):
                continue                 # the slider shows the model's own dropout: nothing changed
            changes[name] = value
        self.trainer.start(**changes)

    def _toggle_pause(self) -> None:
        run = self.trainer.current
        if run is not None and run.status == "paused":
            self.trainer.resume()
        else:
            self.trainer.pause()

    def values(self) -> dict:
        """The config the controls show, as TrainConfig fields."""
        vals = {name: w.value for name, w in self.controls.items()}
        if not self.trainer.has_dropout:
            vals["dropout"] = None
        TrainConfig.from_dict(vals)  # raise here if a control holds something invalid
        return vals

    def apply_fix(self, index: int) -> None:
        """Set the controls to warning ``index``'s fix and retrain."""
        fix = self._warning_fixes[index]
        if not fix:
            return
        with self._syncing():
            for name, value in fix.items():
                if name in self.controls:
                    show_value(self.controls[name], value)
        self.trainer.start(**fix)

    def _auto_fix(self) -> None:
        """Auto-fix from the current run, on a thread of its own (it trains up to 5 runs)."""
        run = self.trainer.current
        if run is None or self._auto_fixing or self.trainer.running:
            return
        self._auto_fixing = True
        self.auto_fix_button.disabled = True

        def work():
            from ..health.autofix import auto_fix
            try:
                runs = auto_fix(self.trainer, max_runs=5, first=run)
                self.message.value = f"<span style='color:#57606a'>auto-fix: {len(runs) - 1} fix(es) applied</span>"
            except Exception as e:  # shown in the panel: the button's thread has no caller to raise to
                self.message.value = f"<span style='color:#cf222e'>auto-fix failed: {type(e).__name__}: {e}</span>"
            finally:
                self._auto_fixing = False
                self.auto_fix_button.disabled = False
                self._wake.set()
        threading.Thread(target=work, name="nbt-auto-fix", daemon=True).start()

    def _use_suggested_lr(self) -> None:
        if self._suggested_lr is not None:
            self.controls["lr"].value = float(self._suggested_lr)

    def _lr_find(self) -> None:
        self.lr_text.value = "<i>running the LR range test…</i>"
        threading.Thread(target=self._lr_find_worker, name="nbt-lr-find", daemon=True).start()

    def _lr_find_worker(self) -> None:
        try:
            result = self.trainer.lr_find()
        except Exception as e:  # shown in the panel: the button's thread has no caller to raise to
            self.lr_text.value = f"<span style='color:#cf222e'>LR finder failed: {type(e).__name__}: {e}</span>"
            return
        try:  # the picture first, so that it is there when the suggestion appears
            self.lr_plot.value = result.png()
            self.lr_plot.layout.display = None
        except Exception as e:  # the suggestion stands without its picture
            log.warning("could not draw the LR finder curve: %s", e)
        self._suggested_lr = result.suggestion
        note = f"<br><span style='color:#9a6700'>{getattr(result, 'warning', '')}</span>" \
            if getattr(result, "noisy", False) else ""
        self.lr_text.value = f"suggested lr: <b>{result.suggestion:.2g}</b>{note}"
        self.use_lr.layout.display = None

    def _continue(self) -> None:
        run = self._selected_run()
        self.trainer.start(from_run=run, **self.values())

    def _show_code(self) -> None:
        run = self._selected_run()
        from ..export import config_snippet
        self.export_text.value = config_snippet(run)
        self.export_text.layout.display = None

    def _write_csv(self) -> None:
        """Show a link that downloads the run's epochs as CSV (the browser saves it where downloads go)."""
        run = self._selected_run()
        from ..export import epochs_csv
        number = self.trainer.runs.index(run) + 1 if run in self.trainer.runs else 0
        name = f"nb_trainer-run-{number}-{run.id}.csv"
        data = base64.b64encode(epochs_csv(run).encode("utf-8")).decode("ascii")
        self.download.value = (f"<a class='nbt-csv-link' download='{html.escape(name)}' "
                               f"href='data:text/csv;base64,{data}' style='text-decoration:underline'>"
                               f"⬇ {html.escape(name)}</a> <span style='color:#57606a'>"
                               f"({len(run.epochs)} epochs)</span>")
        self.download.layout.display = None

    def _selected_run(self):
        runs = self.trainer.runs
        if not runs:
            raise RuntimeError("no run yet")
        index = self.run_select.value
        return runs[index] if isinstance(index, int) and index < len(runs) else runs[-1]

    # -- reflecting the trainer ---------------------------------------------------
    @contextlib.contextmanager
    def _syncing(self):
        """The panel itself sets controls inside: their observers know it is not the user."""
        with self._lock:
            self._sync_thread = threading.get_ident()
            try:
                yield
            finally:
                self._sync_thread = None

    def _shown_config(self) -> TrainConfig:
        run = self.trainer.current
        return run.config if run is not None else self.trainer.defaults

    def _on_event(self, event: ev.Event) -> None:
        # a pause is timed from when the run paused, not from when the event came (up to the latency later)
        self.clock.observe(event.run, event.at, event.status)
        if event.kind == ev.RUN_STARTED or (event.kind == ev.LOGGED and event.run.changes):
            self._show_config(event.run.config)
        if event.kind == ev.RUN_STARTED and not self._real_frame:
            self.plot.value = placeholder_png(self.size, self.scale, WAITING)
        if event.kind == ev.RUN_ENDED:
            self._urgent = True      # refreshed at once: the final frame and the saved rendering come without delay
        self._wake.set()

    def _show_config(self, config: TrainConfig) -> None:
        with self._syncing():
            for name, widget in self.controls.items():
                value = getattr(config, name)
                if name == "dropout" and value is None:
                    continue
                if widget.value != value:
                    show_value(widget, value)
            self.early_stopping.value = config.patience > 0

    def _set_controls_enabled(self) -> None:
        run = self.trainer.current
        active = run is not None and run.status in ("running", "paused")
        self.buttons["pause"].disabled = not active
        self.buttons["stop"].disabled = not active
        paused = run is not None and run.status == "paused"
        self.buttons["pause"].description = "Resume" if paused else "Pause"
        self.buttons["pause"].icon = "play" if paused else "pause"
        start = self.buttons["start"]
        start.description = "Restart" if active else "Start"
        start.icon = "redo" if active else "play"

    def _loop(self) -> None:
        last = 0.0
        while not self._closed:
            running = self.trainer.running or self._plot_owed
            self._wake.wait(FRAME_SECONDS if running else IDLE_SECONDS)
            # every event wakes the loop (an epoch end of a fast run: dozens a second); refresh at most
            # every MIN_REFRESH_SECONDS while training, so the panel's share of the CPU stays small
            while running and not self._closed:
                pause = last + MIN_REFRESH_SECONDS - time.monotonic()
                if pause <= 0:
                    break
                self._wake.clear()
                if self._urgent:            # a run's end cuts the pause short
                    break
                self._wake.wait(pause)
            self._wake.clear()
            self._urgent = False
            if self._closed:
                break
            last = time.monotonic()
            try:
                self.refresh()
            except Exception:  # a broken frame must not end the panel's updates
                log.exception("nb_trainer panel refresh failed")

    def refresh(self) -> None:
        """Bring every widget up to date with the trainer (called by the panel's thread)."""
        trainer = self.trainer
        run = trainer.current
        with self.hold_sync():
            self.clock.observe(run)
            done, total, text = S.progress(run, self.clock)
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.progress.bar_style = {"failed": "danger", "diverged": "danger", "finished": "success",
                                       "paused": "warning"}.get(getattr(run, "status", ""), "info")
            # while a run is active the line is rewritten at every refresh (a beat), which keeps the
            # "no word from the kernel" note hidden; a panel whose kernel is gone shows it
            beat = f"<!-- {time.monotonic():.1f} -->" + S.stale_note() if run is not None and \
                run.status in ("running", "paused") else ""
            self.progress_text.value = f"<span style='font-family:monospace'>{html.escape(text)}</span>{beat}"
            self.status.value = S.status_html(run)
            self._set_controls_enabled()
            self._show_warnings(run)
            self.runs_table.value = S.runs_table_html(trainer.runs, trainer.task, earlier=self.earlier)
            options = [(f"#{i + 1}", i) for i in range(len(trainer.runs))]
            if list(self.run_select.options) != options:
                self.run_select.options = options
                if options:
                    self.run_select.value = options[-1][1]
        self._update_plot()
        if self._display_id is not None and not self._training():
            self.publish_static()

    def _show_warnings(self, run) -> None:
        """One row per cause (health/verdict.py): one fix button, the cause's other codes as evidence;
        notes (info) after them, without a button."""
        from ..health.verdict import verdicts
        rows = [(S.verdict_html(v), dict(v.fix)) for v in (verdicts(run) if run is not None else [])]
        rows += [(S.warning_html(w), {}) for w in (run.warnings if run is not None else []) if w.severity == "info"]
        for i, (row, text, button) in enumerate(self.warning_rows):
            if i < len(rows):
                text.value, fix = rows[i]
                self._warning_fixes[i] = fix
                button.description = S.fix_label(fix) if fix else ""
                button.layout.display = None if fix else "none"
                row.layout.display = None
            else:
                row.layout.display = "none"
                self._warning_fixes[i] = {}
        fixable = any(self._warning_fixes) and run is not None and run.status not in ("running", "paused")
        self.auto_fix_button.layout.display = None if fixable or self._auto_fixing else "none"

    def plot_runs(self) -> list:
        """What the figure draws: this Trainer's runs, after this model's runs of earlier kernels when shown."""
        earlier = list(self.earlier) if self.earlier and self.show_earlier.value else []
        return earlier + list(self.trainer.runs)

    def _update_plot(self) -> None:
        from . import figure
        runs = self.plot_runs()  # the whole list: the legend numbers runs by their place in it
        signature = tuple((id(r), r.history.version, len(r.epochs), r.status) for r in runs[-4:]) \
            + ((self.size, self.scale),)
        key = self._key
        if any(len(r.history) for r in runs) and signature != self._plot_signature:
            # every event wakes the loop (many per second in a fast run): draw at most every
            # FRAME_SECONDS, except at once when a run starts or ends
            statuses = [s[0::3] for s in signature[:-1]]
            now = time.monotonic()
            if (now - self._plot_submitted >= FRAME_SECONDS or self._plot_signature is None
                    or statuses != [s[0::3] for s in self._plot_signature[:-1]]
                    or signature[-1] != self._plot_signature[-1]):
                self._plot_signature = signature
                self._plot_submitted = now
                self._plot_owed = False
                snap = figure.snapshot(runs, self.trainer.task)
                # the frame is ready in ~0.1 s: wake the loop to show it then, not IDLE_SECONDS later
                seq = self._renderer.submit(key, snap, size=self.size, scale=self.scale,
                                            callback=self._show_frame)
                self._last_seq = seq or self._last_seq
            else:
                self._plot_owed = True
        png = self._renderer.poll(key)
        if png:
            self._show_frame(png)

    def _show_frame(self, png: bytes) -> None:
        """Put a drawn frame on the plot: at once, from the renderer's thread as it lands (setting a trait
        is safe from any thread), or from the panel's loop (poll returns the newest frame again)."""
        with self._frame_lock:
            if png is self._shown_png or self._closed:
                return
            self._shown_png = png
            self._real_frame = True
            self.plot.value = png
            self._frames += 1

    def _on_view(self, change) -> None:
        """The page reported the width the plot is shown at, or the screen's pixel ratio: draw for it."""
        width = int(getattr(self.helper, "width", 0) or 0)
        if width <= 0:
            return
        width = min(max(width, WIDTH_RANGE[0]), WIDTH_RANGE[1])
        scale = min(max(float(getattr(self.helper, "dpr", 1.0) or 1.0), 1.0), MAX_SCALE)
        size, scale = (width, int(round(width * ASPECT))), round(scale * 4) / 4
        if (size, scale) == (self.size, self.scale):
            return
        self.size, self.scale = size, scale
        if not self._real_frame:
            self.plot.value = placeholder_png(self.size, self.scale, WAITING if self.trainer.running else NO_RUN)
        self._wake.set()

    # -- the saved notebook -------------------------------------------------------------
    def __repr__(self) -> str:
        # the widget view's text/plain: what a saved notebook shows where the panel cannot be drawn
        return "nb_trainer panel (live while its kernel runs; the saved result is shown below it)"

    def _ipython_display_(self, **kwargs) -> None:
        """Show the panel and, under a display id, its static rendering (updated when a run ends)."""
        from IPython.display import display
        from . import kernel, static
        kernel.attach(self)
        display(self._repr_mimebundle_(), raw=True)
        first = self._display_id is None
        self._display_id = self._display_id or f"nbt-static-{self._key}"
        with self._static_lock:
            png = self._shown_png if self._real_frame else None
            static.publish(static.bundle(self.trainer, png, self.size[0], self._key, self.earlier),
                           self._display_id, update=False)
            self._static_sig = self._static_signature() if first or png else self._static_sig
        self._wake.set()

    def _training(self) -> bool:
        """A run is on (or none has been): its final state is not there to save yet. By the run's status, not its
        thread's: the status is final (and RUN_ENDED sent) a moment before the thread is gone."""
        run = self.trainer.current
        return run is None or run.status in ("pending", "running", "paused")

    def _static_signature(self) -> tuple:
        return tuple((id(r), r.status, len(r.epochs), len(r.warnings)) for r in self.trainer.runs) \
            + (len(self.earlier),)

    def publish_static(self, wait: float = 10.0) -> bool:
        """Bring the static rendering up to date with the runs (their final frame); False if nothing changed.

        Does nothing until the panel has been displayed, or while a run trains.
        """
        if self._display_id is None or self._training() or self._closed:
            return False
        from . import figure, static
        with self._static_lock:
            sig = self._static_signature()
            if sig == self._static_sig:
                return False
            png = None
            runs = self.plot_runs()
            if any(len(r.history) for r in runs):
                seq = self._renderer.submit(self._key, figure.snapshot(runs, self.trainer.task), size=self.size,
                                            scale=self.scale, callback=self._show_frame)
                seq = seq or self._last_seq
                self._last_seq = seq
                png = self._renderer.wait(self._key, seq, timeout=wait) if seq else None
            if self._training() or self._static_signature() != sig:
                return False        # a run started (or ended) meanwhile: the refresh after its end publishes
            png = png or (self._shown_png if self._real_frame else None)
            static.publish(static.bundle(self.trainer, png, self.size[0], self._key, self.earlier),
                           self._display_id, update=True)
            self._static_sig = sig
            self.static_updates += 1
        return True

    @property
    def frames(self) -> int:
        """How many frames the plot has shown."""
        return self._frames

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.sweep.close()
        try:
            self.trainer.events.unsubscribe(self._sub)
            if self._renderer is not None:
                self._renderer.forget(self._key)
        finally:
            super().close()

