"""Losses by name and streaming validation metrics kept on the device.

Classification metrics come from one confusion matrix; macro averages follow
scikit-learn's conventions (classes present in neither the targets nor the
predictions are left out; a class with no predicted sample has precision 0).
Regression sums are kept in float64 so R² does not lose digits on long
validation sets.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

TASKS = ("classification", "binary", "regression")

LOSSES: dict[str, Callable] = {
    "cross_entropy": F.cross_entropy,
    "bce": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.huber_loss,
}

DEFAULT_LOSS = {"classification": "cross_entropy", "binary": "bce", "regression": "mse"}

# The metric a panel plots and early stopping could watch, by task; True: higher is better.
MAIN_METRIC = {
    "classification": ("val_accuracy", True),
    "binary": ("val_f1", True),
    "regression": ("val_r2", True),
}


def resolve_loss(loss, task: str) -> tuple[str, Callable]:
    """Return ``(name, fn)`` for ``loss``: None (by task), a name, or a callable."""
    if loss is None:
        name = DEFAULT_LOSS[task]
        return name, LOSSES[name]
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSSES:
            raise ValueError(f"loss={loss!r} is not a known loss: use one of {', '.join(LOSSES)} or a callable")
        return key, LOSSES[key]
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    raise TypeError(f"loss={loss!r}: expected None, a loss name ({', '.join(LOSSES)}) or a callable")


class ClassificationMetrics:
    """Accuracy, macro precision/recall/F1 from a C×C confusion matrix."""

    def __init__(self, n_classes: int, device):
        self.n = n_classes
        self.cm = torch.zeros(n_classes * n_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(dim=-1).reshape(-1)
        t = target.reshape(-1).long()
        n = self.n
        # out-of-range ids (reported by the data checks) go to an extra bin that is dropped;
        # no boolean indexing, which would sync a GPU
        ok = (t >= 0) & (t < n)
        idx = torch.where(ok, t * n + pred, n * n)
        self.cm += torch.bincount(idx, minlength=n * n + 1)[:n * n]

    def compute(self, prefix: str = "val_") -> dict:
        # once an epoch: three small vectors to the host (one sync), the rest in plain Python
        cm = self.cm.reshape(self.n, self.n)
        tp, true_n, pred_n = torch.stack([cm.diagonal(), cm.sum(1), cm.sum(0)]).tolist()
        precision, recall, f1 = [], [], []
        for c in range(self.n):
            if true_n[c] == 0 and pred_n[c] == 0:
                continue  # in neither targets nor predictions: left out of the macro average
            p = tp[c] / pred_n[c] if pred_n[c] else 0.0
            r = tp[c] / true_n[c] if true_n[c] else 0.0
            precision.append(p)
            recall.append(r)
            f1.append(2 * p * r / (p + r) if p + r else 0.0)
        total = sum(true_n)
        k = max(len(precision), 1)
        return {prefix + "accuracy": sum(tp) / total if total else 0.0,
                prefix + "precision": sum(precision) / k,
                prefix + "recall": sum(recall) / k,
                prefix + "f1": sum(f1) / k}


class BinaryMetrics:
    """Accuracy and positive-class precision/recall/F1 from logits (threshold 0)."""

    def __init__(self, device):
        self.counts = torch.zeros(4, dtype=torch.long, device=device)  # tn, fp, fn, tp

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = (logits.reshape(-1) > 0).long()
        t = (target.reshape(-1) > 0.5).long()
        self.counts += torch.bincount(t * 2 + pred, minlength=4)

    def compute(self, prefix: str = "val_") -> dict:
        tn, fp, fn, tp = self.counts.tolist()
        total = tn + fp + fn + tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            prefix + "accuracy": (tp + tn) / total if total else 0.0,
            prefix + "precision": precision,
            prefix + "recall": recall,
            prefix + "f1": f1,
        }


class RegressionMetrics:
    """MSE, MAE and R² (uniform average over outputs, as scikit-learn)."""

    def __init__(self, device):
        self.device = device
        self.sums: Optional[torch.Tensor] = None  # rows: n, sum y, sum y², sum err², sum |err|

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        y = target.detach().double()
        out = output.detach().double()
        if out.shape != y.shape and out.numel() == y.numel():
            out = out.reshape(y.shape)  # metrics only: the loss saw the shapes as given
        y2 = y.reshape(y.shape[0], -1) if y.dim() > 0 else y.reshape(1, 1)
        o2 = out.reshape(y2.shape)
        err = o2 - y2
        batch = torch.stack([
            torch.full((y2.shape[1],), float(y2.shape[0]), dtype=torch.float64, device=y2.device),
            y2.sum(0), (y2 * y2).sum(0), (err * err).sum(0), err.abs().sum(0),
        ])
        self.sums = batch if self.sums is None else self.sums + batch

    def compute(self, prefix: str = "val_") -> dict:
        if self.sums is None:
            return {prefix + "mse": float("nan"), prefix + "mae": float("nan"), prefix + "r2": float("nan")}
        n, sy, syy, see, sae = self.sums.tolist()
        r2s, mses, maes = [], [], []
        for i in range(len(n)):
            sst = syy[i] - sy[i] * sy[i] / n[i]
            sst = max(sst, 0.0)
            if sst > 1e-12 * max(syy[i], 1e-300):
                r2s.append(1.0 - see[i] / sst)
            else:  # constant target: scikit-learn's force_finite convention
                r2s.append(1.0 if see[i] == 0 else 0.0)
            mses.append(see[i] / n[i])
            maes.append(sae[i] / n[i])
        k = len(n)
        return {prefix + "mse": sum(mses) / k, prefix + "mae": sum(maes) / k, prefix + "r2": sum(r2s) / k}


def metrics_for(task: str, n_classes: int, device):
    if task == "classification":
        return ClassificationMetrics(n_classes, device)
    if task == "binary":
        return BinaryMetrics(device)
    return RegressionMetrics(device)


def metric_names(task: str, prefix: str = "val_") -> tuple[str, ...]:
    if task == "regression":
        return tuple(prefix + m for m in ("mse", "mae", "r2"))
    return tuple(prefix + m for m in ("accuracy", "precision", "recall", "f1"))
