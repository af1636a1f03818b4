"""The trivial baseline: the loss of the best constant prediction on the training targets.

A model that has learnt nothing from the inputs can still predict the class
frequencies (cross-entropy = entropy of the class prior, ``ln C`` when
balanced) or the mean target (MSE = the target variance). Underfitting and
"not yet good" are judged against it. None when the loss is not one we know.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def trivial_loss(y: torch.Tensor, task: str, loss_name: str, n_classes: int = 2) -> Optional[float]:
    """Loss of the best constant prediction of ``y`` under ``loss_name``; None if unknown."""
    y = y.detach().to("cpu")
    try:
        if (loss_name == "cross_entropy" and task == "classification") or \
                (loss_name == "causal_lm" and task == "causal_lm"):
            # one class per example or per position (a token tagger, a language model's unigram
            # frequencies); ids outside [0, C), -100 among them, are not counted
            if y.is_floating_point():
                return None
            ids = y[(y >= 0) & (y < n_classes)].long()
            if ids.numel() == 0:
                return None
            return _entropy(torch.bincount(ids, minlength=n_classes).double())
        if loss_name == "bce":
            # one binary entropy per output column, averaged: BCE's mean over every element
            t = y.double().reshape(len(y), -1) if y.dim() else y.double().reshape(1, 1)
            if bool((torch.isfinite(t) & ((t < 0) | (t > 1))).any()):
                return None
            values = []
            for col in t.T:
                col = col[torch.isfinite(col)]
                if col.numel() == 0:
                    continue
                p = float(col.mean())
                values.append(0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p)))
            return sum(values) / len(values) if values else None
        if task != "regression" or not y.is_floating_point():
            return None
        t = y.double()
        t = t.reshape(len(t), -1)
        t = t[torch.isfinite(t).all(1)]
        if len(t) < 2:
            return None
        if loss_name == "mse":
            return float(t.var(0, unbiased=False).mean())
        if loss_name == "mae":
            return float((t - t.median(0).values).abs().mean())
        if loss_name == "huber":  # delta 1: quadratic near the centre, linear beyond
            d = (t - t.median(0).values).abs()
            return float(torch.where(d < 1, 0.5 * d * d, d - 0.5).mean())
    except (RuntimeError, ValueError, TypeError):  # odd shapes/dtypes: no baseline, the rules cope
        return None
    return None


def _entropy(counts: torch.Tensor) -> float:
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())
