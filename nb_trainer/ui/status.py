"""Text of the panel's status line, warnings and runs table, as HTML strings.

Pure functions of runs, so they are tested without a frontend.
"""
from __future__ import annotations

import html
import math
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


def progress(run) -> tuple[int, int, str]:
    """``(done, total, text)`` of a run's progress in steps, with steps/s and ETA."""
    if run is None:
        return 0, 1, "no run yet"
    cfg = run.config
    spe = run.steps_per_epoch
    total = spe * cfg.epochs if spe else max(cfg.epochs, 1)
    done = run.step if spe else len(run.epochs)
    elapsed = run.elapsed
    rate = run.step / elapsed if elapsed > 0 else 0.0
    text = f"epoch {max(run.epoch, len(run.epochs))}/{cfg.epochs} · step {run.step}"
    if rate:
        text += f" · {rate:,.0f} steps/s"
    if run.status in ("running", "paused") and spe and rate:
        text += f" · ETA {_duration((total - done) / rate)}"
    elif run.status in ("running", "paused") and not spe:
        text += " · epoch length unknown (a stream): no ETA"
    elif run.ended_at:
        text += f" · took {_duration(elapsed)}"
    return min(done, total), total, text


def status_html(run) -> str:
    if run is None:
        return "<span class='nbt-status-text'>ready</span>"
    color = STATUS_COLORS.get(run.status, "#666")
    text = f"<b style='color:{color}'>{html.escape(run.status)}</b>"
    if run.note:
        text += f" <span style='color:#666'>({html.escape(run.note)})</span>"
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


def runs_table_html(runs: Sequence, task: str, limit: int = 12) -> str:
    """Table of runs, newest first: config diff from the first run, best metric, status."""
    if not runs:
        return "<div class='nbt-runs'><i>no runs yet</i></div>"
    first = runs[0].config
    metric_name, _ = best_metric(runs[-1], task)
    rows = []
    for i, run in reversed(list(enumerate(runs))):
        if len(rows) >= limit:
            break
        diff = first.diff(run.config)
        changed = ", ".join(f"{k}={format_value(v[1])}" for k, v in diff.items()) or (
            f"{run.config.optimizer}, lr={run.config.lr:.3g}" if i == 0 else "same as #1")
        name, value = best_metric(run, task)
        shown = "–" if value is None else f"{value:.4g}"
        color = STATUS_COLORS.get(run.status, "#666")
        label = f"#{i + 1}" + lineage(run)
        rows.append(f"<tr class='nbt-run-row'><td>{html.escape(label)}</td><td>{html.escape(changed)}</td>"
                    f"<td>{len(run.epochs)}/{run.config.epochs}</td><td>{shown}</td>"
                    f"<td style='color:{color}'>{html.escape(run.status)}</td></tr>")
    head = (f"<tr><th>run</th><th>config (vs #1)</th><th>epochs</th>"
            f"<th>best {html.escape((metric_name or '').replace('val_', 'val '))}</th><th>status</th></tr>")
    return (f"<table class='nbt-runs' style='border-collapse:collapse;font-size:12px'>{head}"
            + "".join(rows) + "</table>")

