"""Text of the panel's status line, warnings and runs table, as HTML strings.

Pure functions of runs, so they are tested without a frontend.
"""
from __future__ import annotations

import html
import math
import threading
import time
from typing import Optional, Sequence

from ..config import format_value
from ..tasks import main_metric

STATUS_COLORS = {
    "pending": "#666", "running": "#1a7f37", "paused": "#9a6700", "finished": "#0550ae",
    "stopped": "#57606a", "failed": "#cf222e", "diverged": "#cf222e", "interrupted": "#9a6700",
}
SEVERITY_COLORS = {"info": "#0550ae", "warning": "#9a6700", "error": "#cf222e"}


def _duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PauseClock:
    """Time each run has spent paused, so steps/s and the ETA stand still while it is.

    Fed with the run's status as it changes (the panel does, from each event); thread-safe.
    """

    def __init__(self):
        self._paused: dict[int, float] = {}       # id(run): seconds paused so far
        self._since: dict[int, float] = {}        # id(run): when the pause now going on began
        self._lock = threading.Lock()

    def observe(self, run, now: Optional[float] = None, status: Optional[str] = None) -> None:
        """Note the run's status (``status``, default its status now) as of ``now`` (default: now)."""
        if run is None:
            return
        now = time.time() if now is None else now
        status = run.status if status is None else status
        key = id(run)
        with self._lock:
            if status == "paused":
                # the earliest word of it: an event can come after a refresh that read the status later
                self._since[key] = min(self._since.get(key, now), now)
            elif key in self._since:
                self._paused[key] = self._paused.get(key, 0.0) + now - self._since.pop(key)

    def active_seconds(self, run, now: Optional[float] = None) -> float:
        """Wall seconds the run has trained, its pauses left out (frozen while paused)."""
        if run is None or run.started_at is None:
            return 0.0
        now = time.time() if now is None else now
        key = id(run)
        with self._lock:
            paused = self._paused.get(key, 0.0)
            since = self._since.get(key)
        end = run.ended_at or now
        if since is not None:
            end = min(end, since)
        return max(0.0, end - run.started_at - paused)


def progress(run, clock: Optional[PauseClock] = None) -> tuple[int, int, str]:
    """``(done, total, text)`` of a run's progress in steps, with steps/s and ETA.

    With ``clock``, the time spent paused does not count: the rate and the ETA stand still
    while the run is paused. An ended run counts the epochs it finished (as the runs table).
    """
    if run is None:
        return 0, 1, "no run yet"
    cfg = run.config
    spe = run.steps_per_epoch
    total = spe * cfg.epochs if spe else max(cfg.epochs, 1)
    done = run.step if spe else len(run.epochs)
    elapsed = clock.active_seconds(run) if clock is not None else run.elapsed
    rate = run.step / elapsed if elapsed > 0 else 0.0
    active = run.status in ("running", "paused", "pending")
    if active:
        text = f"epoch {max(run.epoch, len(run.epochs), 1)}/{cfg.epochs} · step {run.step}"
    else:
        text = f"epoch {len(run.epochs)}/{cfg.epochs} · step {run.step}"    # finished epochs, as the runs table
    if rate:
        text += f" · {rate:,.0f} steps/s"
    if active and spe and rate:
        text += f" · ETA {_duration((total - done) / rate)}"
    elif run.status in ("running", "paused") and not spe:
        text += " · epoch length unknown (a stream): no ETA"
    elif run.ended_at:
        text += f" · took {_duration(elapsed)}"
    return min(done, total), total, text


STALE_SECONDS = 10    # a panel that says "running" and has heard nothing for this long says so


def stale_note() -> str:
    """Hidden text that a CSS animation (:data:`PANEL_CSS`) shows after STALE_SECONDS unless replaced.

    The panel rewrites its progress line at every refresh while a run is active, which makes a
    new element and restarts the animation; when the kernel is gone (restarted, died) nothing
    rewrites it and the note appears, instead of a panel frozen at "running… ETA 0:05".
    """
    return (f"<span class='nbt-stale'> · no word from the kernel for {STALE_SECONDS} s: "
            "was it restarted or is it busy?</span>")


PANEL_CSS = f"""
.nbt-runs th, .nbt-runs td {{padding: 1px 14px 1px 0; text-align: left; vertical-align: top}}
.nbt-runs tr.nbt-earlier td {{color: #6e7781}}
@keyframes nbt-stale-in {{from {{opacity: 0}} to {{opacity: 1}}}}
.nbt-stale {{opacity: 0; color: #9a6700; animation: nbt-stale-in 0.2s linear {STALE_SECONDS}s forwards}}
"""


def live_changes(run) -> str:
    """What was changed live in ``run``: "lr 0.001 → 0.003 (live, step 120)", or ""."""
    changes = getattr(run, "changes", None)
    initial = getattr(run, "initial_config", None)
    if not changes or initial is None:
        return ""
    diff = initial.diff(run.config)
    if not diff:
        return ""
    parts = ", ".join(f"{k} {format_value(a)} → {format_value(b)}" for k, (a, b) in diff.items())
    return f"{parts} (live, step {changes[-1].get('step', '?')})"


def status_html(run) -> str:
    if run is None:
        return "<span class='nbt-status-text'>ready</span>"
    color = STATUS_COLORS.get(run.status, "#666")
    text = f"<b style='color:{color}'>{html.escape(run.status)}</b>"
    if run.note:
        text += f" <span style='color:#666'>({html.escape(run.note)})</span>"
    live = live_changes(run)
    if live:
        text += f" <span class='nbt-live-change' style='color:#0550ae'>changed {html.escape(live)}</span>"
    if run.status == "failed" and run.error is not None:
        text += (f"<div style='color:#cf222e'>{html.escape(type(run.error).__name__)}: "
                 f"{html.escape(str(run.error))}</div>")
    elif run.stop_reason and run.status in ("stopped", "diverged"):
        text += f"<div style='color:#57606a'>{html.escape(run.stop_reason)}</div>"
    return f"<div class='nbt-status-text'>{text}</div>"


def warning_html(w) -> str:
    color = SEVERITY_COLORS.get(w.severity, "#666")
    where = f" (epoch {w.epoch})" if w.epoch else ""
    count = f" ×{w.count}" if getattr(w, "count", 1) > 1 else ""
    return (f"<div class='nbt-warning nbt-warning-{html.escape(w.code)}' style='border-left:3px solid {color};"
            f"padding-left:6px;margin:2px 0'><b style='color:{color}'>{html.escape(w.code)}</b>{where}{count}: "
            f"{html.escape(w.message)}<br><i>→ {html.escape(w.suggestion)}</i></div>")


def verdict_html(v) -> str:
    """One cause: its title, the strongest warning, what to do, why (when the rules had to choose), and
    the other codes that show the same cause as evidence under it."""
    w = v.primary
    color = SEVERITY_COLORS.get(v.severity, "#666")
    where = f" (epoch {w.epoch})" if w.epoch else ""
    count = f" ×{w.count}" if getattr(w, "count", 1) > 1 else ""
    why = (f"<br><span class='nbt-verdict-reason' style='color:#57606a'>why: {html.escape(v.reason)}</span>"
           if v.reason else "")
    evidence = ""
    if len(v.warnings) > 1:
        items = []
        for e in v.warnings[1:]:
            aside = v.set_aside.get(e.code)
            note = f" <i>(its own fix is not offered: {html.escape(aside)})</i>" if aside else ""
            items.append(f"<li class='nbt-evidence nbt-evidence-{html.escape(e.code)}'><b>{html.escape(e.code)}</b>: "
                         f"{html.escape(e.message)}{note}</li>")
        evidence = ("<div style='color:#57606a;margin-top:2px'>also seen, the same cause:</div>"
                    f"<ul style='margin:0 0 0 18px;padding:0'>{''.join(items)}</ul>")
    return (f"<div class='nbt-verdict nbt-verdict-{html.escape(v.cause)} nbt-warning nbt-warning-{html.escape(w.code)}' "
            f"style='border-left:3px solid {color};padding-left:6px;margin:2px 0'>"
            f"<b style='color:{color}'>{html.escape(v.title)}</b>{where}{count}<br>"
            f"<b>{html.escape(w.code)}</b>: {html.escape(w.message)}<br><i>→ {html.escape(v.suggestion)}</i>"
            f"{why}{evidence}</div>")


def fix_label(fix: dict) -> str:
    parts = []
    for k, v in fix.items():
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return "Apply fix: " + ", ".join(parts)


def best_metric(run, task: str) -> tuple[Optional[str], Optional[float]]:
    """The run's best main validation metric (or lowest loss when there is no val)."""
    name, higher = main_metric(task)
    values = [e.get(name) for e in run.epochs if e.get(name) is not None]
    if not values:
        name, higher = ("val_loss", False) if any("val_loss" in e for e in run.epochs) else ("train_loss", False)
        values = [e.get(name) for e in run.epochs if e.get(name) is not None and math.isfinite(e.get(name))]
    if not values:
        return name, None
    return name, (max(values) if higher else min(values))


def lineage(run) -> str:
    """`` ← #3 at epoch 20`` for a run continued from another, else ``""``."""
    parent = getattr(run, "continued_from", None)
    if not parent:
        return ""
    where = f"#{parent['number']}" if parent.get("number") else f"run {parent.get('id')}"
    return f" ← {where} at epoch {parent.get('epoch')}"


def _config_text(run, base, first: bool) -> str:
    """The config a run started with, as its changes from ``base``; then what was changed live."""
    started = getattr(run, "initial_config", None) or run.config
    diff = base.diff(started)
    text = ", ".join(f"{k}={format_value(v[1])}" for k, v in diff.items()) or (
        f"{started.optimizer}, lr={format_value(started.lr)}" if first else "same as #1")
    live = started.diff(run.config)
    if live:
        text += " → live: " + ", ".join(f"{k}={format_value(v[1])}" for k, v in live.items())
    return text


def _row(label: str, run, task: str, base, first: bool, css: str = "nbt-run-row") -> str:
    name, value = best_metric(run, task)
    shown = "–" if value is None else f"{value:.4g}"
    color = STATUS_COLORS.get(run.status, "#666")
    return (f"<tr class='{css}'><td>{html.escape(label)}</td><td>{html.escape(_config_text(run, base, first))}</td>"
            f"<td>{len(run.epochs)}/{run.config.epochs}</td><td>{shown}</td>"
            f"<td style='color:{color}'>{html.escape(run.status)}</td></tr>")


def runs_table_html(runs: Sequence, task: str, limit: int = 12, earlier: Sequence = (),
                    earlier_limit: int = 6, label=None) -> str:
    """Table of runs, newest first: the config each started with (changes from the first run, and
    what was changed live), its best main metric, its status.

    ``earlier`` are runs of this model from earlier kernels (stored records, oldest first),
    listed after this Trainer's own, marked "earlier". ``label(i, run)``: a row's name (default ``#i+1``).
    """
    if not runs and not earlier:
        return "<div class='nbt-runs'><i>no runs yet</i></div>"
    from ..config import TrainConfig
    first = (getattr(runs[0], "initial_config", None) or runs[0].config) if runs else TrainConfig()
    metric_name, _ = best_metric(runs[-1] if runs else earlier[-1], task)
    rows = []
    for i, run in reversed(list(enumerate(runs))):
        if len(rows) >= limit:
            break
        rows.append(_row((label(i, run) if label else f"#{i + 1}") + lineage(run), run, task, first, i == 0))
    if earlier:
        shown = list(reversed(list(earlier)))[:earlier_limit]
        rows.append(f"<tr class='nbt-earlier-head'><td colspan='5'><i>earlier kernels, same model and data "
                    f"({len(earlier)} run{'s' if len(earlier) != 1 else ''}):</i></td></tr>")
        for k, run in zip(range(len(earlier), 0, -1), shown):
            when = time.strftime("%m-%d %H:%M", time.localtime(run.started_at)) if run.started_at else ""
            rows.append(_row(f"earlier {k} {when}".strip(), run, task, first, not runs and k == 1,
                             css="nbt-run-row nbt-earlier"))
    head = (f"<tr><th>run</th><th>config (vs #1)</th><th>epochs</th>"
            f"<th>best {html.escape((metric_name or '').replace('val_', 'val '))}</th><th>status</th></tr>")
    return (f"<table class='nbt-runs' style='border-collapse:collapse;font-size:12px'>{head}"
            + "".join(rows) + "</table>")

