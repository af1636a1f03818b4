"""Getting runs out: epochs as CSV, a config as code that reproduces it, TensorBoard event files.

Every function takes a live :class:`~nb_trainer.Run` or a stored
:class:`~nb_trainer.store.RunRecord` (anything with ``epochs``, ``config``
and ``id``).
"""
from __future__ import annotations

import csv
import io
import keyword
import numbers
import os
from pathlib import Path
from typing import Iterable, Optional

from .config import FIELDS, TrainConfig, check_value

# the order columns appear in (others follow, in the order first seen)
_FIRST = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
          "val_mse", "val_mae", "val_r2")
_LAST = ("lr", "seconds")


def epoch_columns(epochs: Iterable[dict]) -> list[str]:
    """Every key of the epoch records, in a stable, readable order."""
    seen: list[str] = []
    for record in epochs:
        for key in record:
            if key not in seen:
                seen.append(key)
    first = [k for k in _FIRST if k in seen]
    last = [k for k in _LAST if k in seen]
    return first + [k for k in seen if k not in first and k not in last] + last


def epochs_csv(run, path=None) -> str:
    """The run's epoch records as CSV text (one row per finished epoch).

    With ``path``, also write it there. Floats are written exactly
    (``repr``); a missing value is an empty cell; NaN is ``nan``.
    """
    epochs = list(run.epochs)
    columns = epoch_columns(epochs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for record in epochs:
        writer.writerow(["" if record.get(c) is None else _cell(record[c]) for c in columns])
    text = buf.getvalue()
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def config_snippet(run_or_config, var: str = "t", form: str = "config", base: Optional[TrainConfig] = None,
                   import_line: bool = True) -> str:
    """Code that starts a run with the same config, listing only fields that differ from defaults.

    ``form="config"`` (default) gives
    ``t.start(nbt.TrainConfig(), lr=0.003, optimizer="adamw")``: exact on any
    Trainer, whatever its earlier runs (``start(config, **changes)`` applies
    the changes over the given config, here the defaults).
    ``form="changes"`` gives ``t.start(lr=0.003, optimizer="adamw")``, the
    fields that differ from ``base`` (default: ``TrainConfig()``); since a
    bare ``start(**changes)`` applies them over the *previous run's* config,
    this reproduces the run only where the next start begins from ``base``
    (pass ``base=t.config()`` for the Trainer as it is now).

    A run's starting config is used (``run.initial_config``); live changes
    made while it trained follow as comments.

    The code holds only ``TrainConfig`` field names and ``repr``-made
    literals of values those fields accept: a stored record is read from a
    file anyone could have written, so a live change naming anything else, or
    with a value its field refuses, is left out (and counted in a comment).
    """
    if form not in ("config", "changes"):
        raise ValueError(f"form={form!r} is not accepted: use 'config' or 'changes'")
    if not isinstance(var, str) or not var.isidentifier() or keyword.iskeyword(var):
        raise ValueError(f"var={var!r} is not a Python name")
    if isinstance(run_or_config, TrainConfig):
        config, changes = run_or_config, []
    else:
        config = getattr(run_or_config, "initial_config", None) or run_or_config.config
        changes = list(getattr(run_or_config, "changes", None) or [])
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config_snippet needs a run, a stored record or a TrainConfig; got {type(config).__name__}")
    reference = TrainConfig() if (form == "config" or base is None) else base
    args = [f"{name}={_literal(getattr(config, name))}" for name in FIELDS
            if getattr(config, name) != getattr(reference, name)]
    if form == "config":
        call = f"{var}.start(" + ", ".join(["nbt.TrainConfig()"] + args) + ")"
        lines = (["import nb_trainer as nbt"] if import_line else []) + [call]
    else:
        lines = [f"{var}.start(" + ", ".join(args) + ")"]
    left_out = 0
    for change in changes:
        values, dropped = _checked_changes(change.get("changes") if isinstance(change, dict) else None)
        left_out += dropped
        if values:
            lines.append(f"# changed live at step {_count(change.get('step'))} "
                         f"(epoch {_count(change.get('epoch'))}): {var}.change({values})")
    if left_out:
        lines.append(f"# {left_out} stored live change(s) left out: not a training option, or a value it refuses")
    return "\n".join(lines)


def _checked_changes(changes) -> tuple[str, int]:
    """``name=literal, ...`` of the live changes that name a field with a value it accepts; how many did not."""
    if not isinstance(changes, dict):
        return "", 1
    parts, dropped = [], 0
    for name, value in changes.items():
        if name not in FIELDS:
            dropped += 1
            continue
        try:
            parts.append(f"{name}={_literal(check_value(name, value))}")
        except ValueError:
            dropped += 1
    return ", ".join(parts), dropped


def _count(value) -> str:
    """A step or epoch number for a comment: digits only, or "?"."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return "?"


def _literal(value) -> str:
    """Python source for a config value: repr round-trips floats exactly; plain strings in double quotes.

    Only ever called on values a field accepted (numbers, None, an optimizer
    name); anything but a plain printable string goes through ``repr``.
    """
    if isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return repr(value)


def write_tensorboard(runs, logdir) -> list[str]:
    """Write TensorBoard event files: one folder per run under ``logdir``.

    Each numeric epoch value becomes a scalar (``epoch/<name>``, step =
    epoch); a live run's per-step loss, gradient norm and lr become
    ``step/<name>``; the config snippet is added as text. Needs the optional
    ``tensorboard`` package (``pip install "nb_trainer[tensorboard]"``).
    Returns the folders written.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "TensorBoard export needs the optional 'tensorboard' package, which is not installed: "
            "pip install 'nb_trainer[tensorboard]' (or pip install tensorboard). "
            f"({type(e).__name__}: {e})") from e
    if hasattr(runs, "epochs"):
        runs = [runs]
    folders = []
    for run in runs:
        folder = os.path.join(os.fspath(logdir), _safe(run.id))
        writer = SummaryWriter(log_dir=folder)
        try:
            for record in run.epochs:
                step = int(record.get("epoch", 0))
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"epoch/{key}", value, step)
            history = getattr(run, "history", None)
            if history is not None and len(history):
                cols = history.columns("step", "loss", "grad_norm", "lr")
                for i, step in enumerate(cols["step"]):
                    for key in ("loss", "grad_norm", "lr"):
                        writer.add_scalar(f"step/{key}", cols[key][i], step)
            writer.add_text("config", "```\n" + config_snippet(run) + "\n```")
            writer.add_text("status", f"{run.status}" + (f": {run.error}" if run.error else ""))
        finally:
            writer.close()
        folders.append(folder)
    return folders


def _safe(name: str) -> str:
    """A run id as one folder name: letters, digits, ``-_.`` only, never ``.``/``..`` nor hidden."""
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in str(name))
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return safe or "_"
