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

from .tasks import TASK_TABLE, TASKS, main_metric, metric_names  # noqa: F401  (re-exported)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for one class per example or per position.

    Class ids of any integer dtype (int32/int16 ids are cast to int64);
    outputs ``(N, C)``, ``(N, ..., C)`` against ids ``(N, ...)`` (token tagging),
    or ``(N, C, ...)`` (segmentation, torch's own layout). ``-100`` is ignored.
    """
    if not target.is_floating_point() and target.dtype != torch.long:
        target = target.long()
    if output.dim() > 2 and output.shape[:-1] == target.shape:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
    return F.cross_entropy(output, target)


def bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits; 0/1 targets of any dtype (ints mean the same thing)."""
    if target.dtype != output.dtype:
        target = target.to(output.dtype)
    return F.binary_cross_entropy_with_logits(output, target)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (labels are the input ids, as in
    Hugging Face's causal LMs); ``-100`` is ignored."""
    shifted = logits[..., :-1, :]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[..., 1:].reshape(-1).long())


LOSSES: dict[str, Callable] = {
    "cross_entropy": cross_entropy,
    "bce": bce,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.huber_loss,
    "causal_lm": causal_lm_loss,
}

DEFAULT_LOSS = {name: t.loss for name, t in TASK_TABLE.items()}

# The metric a panel plots and a sweep ranks by, by task; True: higher is better.
MAIN_METRIC = {name: main_metric(name) for name in TASK_TABLE}


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


def per_example(loss_name: str) -> Optional[Callable]:
    """``fn(output, target, weight)``: a built-in loss weighted per example, Keras' way
    (``sum(w * l) / N``); None for a loss we cannot split per example (a callable)."""
    def reduce(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        per = values.reshape(values.shape[0], -1).mean(1) if values.dim() > 1 else values
        return (per * weight.to(per.dtype)).sum() / max(per.shape[0], 1)

    def ce(output, target, weight):
        if not target.is_floating_point() and target.dtype != torch.long:
            target = target.long()
        if output.dim() > 2 and output.shape[:-1] == target.shape:
            values = F.cross_entropy(output.movedim(-1, 1), target, reduction="none")
        else:
            values = F.cross_entropy(output, target, reduction="none")
        return reduce(values, weight)

    def elementwise(fn):
        def weighted(output, target, weight):
            if fn is F.binary_cross_entropy_with_logits and target.dtype != output.dtype:
                target = target.to(output.dtype)
            return reduce(fn(output, target, reduction="none"), weight)
        return weighted

    table = {"cross_entropy": ce, "bce": elementwise(F.binary_cross_entropy_with_logits),
             "mse": elementwise(F.mse_loss), "mae": elementwise(F.l1_loss), "huber": elementwise(F.huber_loss)}
    return table.get(loss_name)


def _class_last(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logits with the class dimension last: ``(N, C, ...)`` (torch's segmentation layout)
    against ids ``(N, ...)`` is moved to ``(N, ..., C)``."""
    if logits.dim() > 2 and logits.shape[:-1] != target.shape and logits.shape[2:] == target.shape[1:]:
        return logits.movedim(1, -1)
    return logits


class ClassificationMetrics:
    """Accuracy, macro precision/recall/F1 from a C×C confusion matrix."""

    def __init__(self, n_classes: int, device):
        self.n = n_classes
        self.cm = torch.zeros(n_classes * n_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if target.is_floating_point() and target.shape == logits.shape and logits.dim() >= 2:
            target = target.argmax(dim=-1)  # class probabilities / one-hot rows: their most likely class
        logits = _class_last(logits, target)
        pred = logits.argmax(dim=-1).reshape(-1)
        # ignored positions (-100) and out-of-range ids fall outside [0, n) and are not counted
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


class MultilabelMetrics:
    """Subset accuracy and macro precision/recall/F1 over K labels (logits > 0 is a positive).

    As scikit-learn's ``average="macro"`` on indicator matrices: every label counts, and a
    label with no positive target and no positive prediction scores 0.
    """

    def __init__(self, device):
        self.device = device
        self.counts: Optional[torch.Tensor] = None  # rows: tp, fp, fn per label
        self.exact = torch.zeros(2, dtype=torch.long, device=device)  # rows all right, rows

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = (logits > 0).reshape(logits.shape[0], -1)
        t = (target > 0.5).reshape(pred.shape)
        batch = torch.stack([(pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)])
        self.counts = batch if self.counts is None else self.counts + batch
        self.exact += torch.stack([(pred == t).all(1).sum(), torch.tensor(pred.shape[0], device=pred.device)])

    def compute(self, prefix: str = "val_") -> dict:
        if self.counts is None:
            return {prefix + m: 0.0 for m in ("accuracy", "precision", "recall", "f1")}
        tp, fp, fn = self.counts.tolist()
        right, rows = self.exact.tolist()
        precision = [a / (a + b) if a + b else 0.0 for a, b in zip(tp, fp)]
        recall = [a / (a + b) if a + b else 0.0 for a, b in zip(tp, fn)]
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
        k = max(len(tp), 1)
        return {prefix + "accuracy": right / rows if rows else 0.0, prefix + "precision": sum(precision) / k,
                prefix + "recall": sum(recall) / k, prefix + "f1": sum(f1) / k}


class NextTokenMetrics:
    """Next-token accuracy of a causal LM: position t's prediction against token t+1, ``-100``
    ignored. (Perplexity is exp of the mean loss; the evaluation adds it.)"""

    def __init__(self, device):
        self.counts = torch.zeros(2, dtype=torch.long, device=device)  # right, counted

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred = logits[..., :-1, :].argmax(dim=-1)
        t = labels[..., 1:].long()
        counted = t != -100
        self.counts += torch.stack([((pred == t) & counted).sum(), counted.sum()])

    def compute(self, prefix: str = "val_") -> dict:
        right, counted = self.counts.tolist()
        return {prefix + "accuracy": right / counted if counted else 0.0}


def metrics_for(task: str, n_classes: int, device):
    """The accumulator of a task's metrics; None for a task without any (a step returning only a loss)."""
    if task == "classification":
        return ClassificationMetrics(n_classes, device)
    if task == "binary":
        return BinaryMetrics(device)
    if task == "multilabel":
        return MultilabelMetrics(device)
    if task == "causal_lm":
        return NextTokenMetrics(device)
    if task == "regression":
        return RegressionMetrics(device)
    return None
