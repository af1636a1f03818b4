"""The one table of tasks: each task's default loss, its validation metrics and its main metric.

Everything that needs to know "what does this task report" reads it: the
metrics, the figure, the runs table, the magics, the health rules. It knows
nothing of torch, so the renderer process and the store can read it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """What one task trains with and reports.

    ``metrics``: the validation metric names without their ``val_`` prefix,
    in the order a table shows them. ``main``: the one the panel plots and a
    sweep ranks by; ``higher_is_better`` says which way is better.
    """

    name: str
    loss: str
    metrics: tuple
    main: str
    main_label: str
    higher_is_better: bool
    description: str


_CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")

TASK_TABLE: dict[str, Task] = {t.name: t for t in (
    Task("classification", "cross_entropy", _CLASSIFICATION_METRICS, "accuracy", "val accuracy", True,
         "one class per example, or per position ((N, ..., C) outputs against (N, ...) class ids, -100 ignored); "
         "macro precision/recall/F1"),
    Task("binary", "bce", _CLASSIFICATION_METRICS, "f1", "val F1", True,
         "one output, 0/1 targets; precision/recall/F1 of the positive class"),
    Task("multilabel", "bce", _CLASSIFICATION_METRICS, "f1", "val F1", True,
         "K outputs against (N, K) 0/1 targets; subset accuracy, macro precision/recall/F1 over the labels"),
    Task("regression", "mse", ("mse", "mae", "r2"), "r2", "val R²", True,
         "float targets; MSE, MAE and R² averaged over the outputs"),
    Task("causal_lm", "causal_lm", ("perplexity", "accuracy"), "perplexity", "val perplexity", False,
         "next-token prediction (labels are the input ids, shifted inside the loss); perplexity and next-token accuracy"),
    # a step=fn that returns only a loss: nothing to compute metrics from, runs are compared by val loss
    Task("custom", "custom", (), "loss", "val loss", False, "a custom step that returns only the loss"),
)}

TASKS = tuple(name for name in TASK_TABLE if name != "custom")
"""The tasks a user can name (``Trainer(task=...)``)."""


def task_of(name: str) -> Task:
    """The table entry of ``name`` (classification for an unknown or empty name)."""
    return TASK_TABLE.get(name) or TASK_TABLE["classification"]


def metric_names(task: str, prefix: str = "val_") -> tuple:
    return tuple(prefix + m for m in task_of(task).metrics)


def main_metric(task: str, prefix: str = "val_") -> tuple:
    """``(name, higher_is_better)`` of the task's main validation metric."""
    t = task_of(task)
    return prefix + t.main, t.higher_is_better
