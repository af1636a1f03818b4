"""What a saved notebook shows of a panel: the final figure and a summary, readable without a kernel.

A widget panel saves as a widget view plus a ``text/plain`` repr: reopened, on GitHub, in
nbconvert/nbviewer or in VS Code without its kernel, a reader sees no result. So next to the
panel the cell also shows a plain rendering, ``text/html`` (the status, the best metric, the
figure as an inline PNG, the runs table), ``image/png`` (the figure alone, for viewers that
show no HTML) and a short ``text/plain``, under a display id, updated in place when a run
ends. nbconvert's HTML of the saved notebook then has the figure and the table.

While the live panel is on the page, a style rule inside it hides this rendering, so the
reader of a live notebook sees the panel once; where the panel cannot be drawn (no kernel,
no widget state), the rule is not there and the rendering shows.
"""
from __future__ import annotations

import base64
import html
import logging
from typing import Optional, Sequence

from . import status as S

log = logging.getLogger(__name__)


def css_class(key: str) -> str:
    return f"nbt-static-{key}"


def hide_rule(key: str) -> str:
    """The CSS the live panel carries: its static rendering is hidden while the panel is drawn."""
    cls = css_class(key)
    return (f".{cls} {{display: none !important}} "
            f".jp-OutputArea-child:has(.{cls}) {{display: none !important}}")


def best_run(runs: Sequence, task: str):
    """``(index, metric name, value)`` of the run with the best main metric, or None."""
    best = None
    for i, run in enumerate(runs):
        name, value = S.best_metric(run, task)
        if value is None:
            continue
        higher = not (name or "").endswith("loss")
        if best is None or (value > best[2] if higher else value < best[2]):
            best = (i, name, value)
    return best


def summary(trainer) -> str:
    """One line: the latest run, its status, and the best run so far."""
    runs = list(trainer.runs)
    if not runs:
        return "nb_trainer: no runs yet"
    run = runs[-1]
    text = f"nb_trainer: run {len(runs)} {run.status}"
    if run.stop_reason and run.status in ("stopped", "diverged"):
        text += f" ({run.stop_reason})"
    best = best_run(runs, trainer.task)
    if best is not None:
        i, name, value = best
        text += f" · best {name.replace('val_', 'val ').replace('_', ' ')} {value:.4g} (run {i + 1} of {len(runs)})"
    return text


def bundle(trainer, png: Optional[bytes], width: int, key: str, earlier: Sequence = ()) -> dict:
    """The mime bundle of the static rendering (``display(bundle, raw=True)``)."""
    runs = list(trainer.runs)
    run = runs[-1] if runs else None
    parts = [f"<div class='nbt-static {css_class(key)}' style='font-size:13px'>",
             f"<div><b>{html.escape(summary(trainer))}</b></div>"]
    if run is not None:
        parts.append(S.status_html(run))
        parts.append(f"<div style='font-family:monospace;color:#57606a'>{html.escape(S.progress(run)[2])}</div>")
    data = {"text/plain": summary(trainer)}
    if png:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f"<img class='nbt-static-plot' src='data:image/png;base64,{encoded}' "
                     f"style='width:{int(width)}px;max-width:100%' "
                     "alt='loss, validation metric, gradient norm and learning rate of the latest runs'>")
        data["image/png"] = encoded
    for w in (run.warnings if run is not None else []):
        parts.append(S.warning_html(w))
    parts.append(S.runs_table_html(runs, trainer.task, earlier=earlier))
    parts.append("<div style='color:#6e7781;font-size:11px'><i>The saved view of an nb_trainer panel; "
                 "the live panel needs the kernel that made it.</i></div></div>")
    data["text/html"] = "".join(parts)
    return data


def publish(data: dict, display_id: str, update: bool) -> None:
    """Show ``data`` under ``display_id`` (first time), or replace what it shows (``update``).

    Safe from any thread: a display update is routed by its id, so JupyterLab and Notebook 7
    update the output of the cell that showed it even after that cell has finished.
    """
    from IPython import get_ipython
    from IPython.display import display
    if getattr(get_ipython(), "kernel", None) is None:
        return      # a terminal shows no HTML: the rendering is for notebook frontends
    display(data, raw=True, display_id=display_id, update=update)
