"""Pre-flight checks on the data, before the first step.

Each check looks at one split's inputs and targets (the whole split for
in-memory tensors, a sample of the first examples for a Dataset or
DataLoader) and returns ``(HealthWarning, fatal)`` pairs. ``fatal``: training
cannot produce anything meaningful (NaN inputs, class ids the loss rejects),
so the run ends "failed" with the warning as the reason instead of a torch
traceback from inside the loss.
"""
from __future__ import annotations

import torch

from .warning import HealthWarning

# Smallest class count / largest class count below which the classes are
# called imbalanced: 1:6, where predicting only the majority class already
# scores 86% accuracy, so accuracy alone misleads. Milder ratios (80/20) are
# common in healthy data and are left alone.
IMBALANCE_RATIO = 1 / 6


def _columns(mask: torch.Tensor, limit: int = 5) -> str:
    if mask.dim() < 2:
        return ""
    cols = mask.reshape(mask.shape[0], -1).any(0).nonzero().flatten().tolist()
    shown = ", ".join(str(c) for c in cols[:limit])
    more = f" and {len(cols) - limit} more" if len(cols) > limit else ""
    return f" in column{'s' if len(cols) > 1 else ''} {shown}{more}"


IGNORE_INDEX = -100  # a target id cross-entropy skips (padding, sub-word pieces): never a bad label


def check_finite(split: str, x, y) -> list:
    """NaN/Inf in the inputs (a tensor, or ``[(name, tensor)]`` for every input tensor of a
    batch) or the targets (a tensor or None)."""
    named = [("inputs", x)] if isinstance(x, torch.Tensor) else list(x)
    if y is not None:
        named.append(("targets", y))
    out = []
    for what, t in named:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        bad = ~torch.isfinite(t)
        n_bad = int(bad.sum())
        if n_bad:
            n_nan = int(torch.isnan(t).sum())
            kinds = " and ".join(k for k, c in (("NaN", n_nan), ("Inf", n_bad - n_nan)) if c)
            rows = int(bad.reshape(bad.shape[0], -1).any(1).sum()) if bad.dim() else 1
            fatal = split == "train"
            out.append((HealthWarning(
                code="bad_input_data", severity="error",
                message=(f"{split} {what} contain {n_bad} {kinds} value{'s' if n_bad > 1 else ''} "
                         f"in {rows} of {len(t) if t.dim() else 1} examples{_columns(bad)}"),
                suggestion=(f"drop or impute those examples before training (e.g. torch.nan_to_num, "
                            f"or keep rows where torch.isfinite(x).all(1))"
                            + ("; training on them turns the loss into NaN" if fatal else
                               "; validation metrics computed on them are meaningless")),
                fix={}, step=0, epoch=0), fatal))
    return out


def _shape(per_example) -> str:
    """``(N,)``, ``(N, 1)``: a batch shape as people write it."""
    dims = ["N"] + [str(d) for d in per_example]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_labels(split: str, y: torch.Tensor, task, loss_name: str) -> list:
    """Targets against the task and the model's output (``task``: a TaskInfo)."""
    out = []
    custom_loss = loss_name not in ("cross_entropy", "bce", "mse", "mae", "huber")
    n_out = task.n_outputs
    out_shape = _shape(task.output_shape)

    def mismatch(message, suggestion):
        out.append((HealthWarning(code="label_mismatch", severity="error", message=message,
                                  suggestion=suggestion, fix={}, step=0, epoch=0), True))

    if task.task in ("classification", "causal_lm") and (getattr(task, "per_position", False)
                                                         or task.task == "causal_lm"):
        if y.is_floating_point():
            mismatch(f"{split} targets are {str(y.dtype).replace('torch.', '')}; per-position cross-entropy "
                     "needs integer class ids", "pass the targets as integers, e.g. y.long()")
            return out
        ids = y[y != IGNORE_INDEX]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_out):
            lo, hi = int(ids.min()), int(ids.max())
            bad = int(((ids < 0) | (ids >= n_out)).sum())
            what = "token ids" if task.task == "causal_lm" else "class ids"
            mismatch(f"{split} targets hold {what} from {lo} to {hi}, but the model has {n_out} outputs, so only "
                     f"0..{n_out - 1} (or {IGNORE_INDEX}, ignored) fit ({bad} of {ids.numel()} positions are outside)",
                     f"give the model's last layer {hi + 1} outputs (the vocabulary size), or map the labels to "
                     f"0..{n_out - 1}; mark positions to skip with {IGNORE_INDEX}")
        return out
    if task.task == "multilabel":
        if tuple(y.shape[1:]) != tuple(task.output_shape):
            mismatch(f"{split} targets have shape {_shape(y.shape[1:])} but the model's output is {out_shape}; "
                     "multi-label needs one 0/1 target per output", "make the targets (N, K) for K outputs")
        elif not bool(((y == 0) | (y == 1)).all()):
            vals = torch.unique(y)[:5].tolist()
            mismatch(f"{split} targets are not all 0 or 1 (seen e.g. {vals}); multi-label needs 0/1 targets",
                     "map each label to 0 (absent) or 1 (present)")
        return out
    if task.task == "classification":
        if y.is_floating_point():
            if y.dim() == 1 or (y.dim() == 2 and y.shape[1] != n_out):
                mismatch(f"{split} targets are class ids stored as {str(y.dtype).replace('torch.', '')}; "
                         "cross-entropy needs integer class ids (or class probabilities of shape (N, C))",
                         "pass the targets as integers, e.g. y.long()")
            return out
        if y.dim() != 1:
            mismatch(f"{split} targets have shape {_shape(y.shape[1:])}; for a model with output "
                     f"{out_shape} cross-entropy needs class ids of shape (N,)",
                     "flatten the targets, e.g. y.reshape(-1) (or y.squeeze(1))")
            return out
        ids = y[y != IGNORE_INDEX]
        if ids.numel() == 0:
            return out
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n_out:
            bad = int(((ids < 0) | (ids >= n_out)).sum())
            mismatch(f"{split} targets hold class ids from {lo} to {hi}, but the model has {n_out} outputs, "
                     f"so only ids 0..{n_out - 1} fit ({bad} of {len(y)} targets are outside)",
                     f"give the model's last layer {hi + 1} outputs, or map the labels to 0..{n_out - 1}")
        return out
    if task.task == "binary":
        if y.is_floating_point() and not bool(((y == 0) | (y == 1) | torch.isnan(y)).all()):
            vals = torch.unique(y[torch.isfinite(y)])[:5].tolist()
            mismatch(f"{split} targets are not all 0 or 1 (seen e.g. {vals}); binary cross-entropy needs 0/1 targets",
                     "map the labels to 0 and 1, or use a model with one output per class and integer class ids")
        elif not y.is_floating_point() and not bool(((y == 0) | (y == 1)).all()):
            vals = torch.unique(y)[:5].tolist()
            mismatch(f"{split} targets are not all 0 or 1 (seen e.g. {vals}) for a model with one output",
                     "for more than two classes give the model one output per class")
        if not custom_loss and tuple(y.shape[1:]) != tuple(task.output_shape):
            mismatch(f"{split} targets have shape {_shape(y.shape[1:])} but the model's output is "
                     f"{out_shape}; binary cross-entropy needs the same shape",
                     "reshape the targets to the output's shape, e.g. y.reshape(-1, 1).float()"
                     if len(task.output_shape) == 1 else "reshape the targets or the model's output to match")
        return out
    # regression
    if not y.is_floating_point():
        mismatch(f"{split} targets are integers ({str(y.dtype).replace('torch.', '')}) for a regression loss",
                 "pass float targets (y.float()), or task='classification' with one output per class")
        return out
    if not custom_loss and tuple(y.shape[1:]) != tuple(task.output_shape):
        mismatch(f"{split} targets have shape {_shape(y.shape[1:])} but the model's output is "
                 f"{out_shape}: the loss would broadcast them to (N, N) and train on the wrong thing",
                 "reshape the targets to the output's shape, e.g. y.reshape(-1, 1)"
                 if tuple(task.output_shape) == (1,) and y.dim() == 1 else
                 "make the targets and the model's output the same shape")
    return out


def check_balance(split: str, y: torch.Tensor, task) -> list:
    if task.task not in ("classification", "binary") or split != "train":
        return []
    if not y.is_floating_point():
        y = y[y != IGNORE_INDEX]  # positions cross-entropy skips are not a class
    if task.task == "classification" and y.is_floating_point() and y.dim() == 2 and y.shape[1] == task.n_outputs:
        # one-hot or soft labels (N, C): a class's count is its column's sum, not the count of 0s and 1s
        cols = y[torch.isfinite(y).all(1)]
        if cols.numel() == 0 or bool((cols < 0).any()):
            return []
        counts = [int(round(float(c))) for c in cols.sum(0)]
        flat = cols.argmax(1)
    else:
        flat = y.reshape(-1)
        if flat.is_floating_point():
            flat = flat[torch.isfinite(flat)]
            if not bool((flat == flat.round()).all()):
                return []
        flat = flat.long()
        if flat.numel() == 0 or int(flat.min()) < 0:
            return []
        counts = torch.bincount(flat).tolist()
    present = {c: n for c, n in enumerate(counts) if n > 0}
    if len(present) < 2:
        if len(present) == 1 and len(flat) >= 10:
            (only,) = present
            return [(HealthWarning(
                code="class_imbalance", severity="warning",
                message=f"every {split} target is class {only} ({len(flat)} examples): there is nothing to tell apart",
                suggestion="check the labels; the model can score perfectly by always predicting that class",
                fix={}, step=0, epoch=0), False)]
        return []
    lo_c = min(present, key=present.get)
    hi_c = max(present, key=present.get)
    ratio = present[lo_c] / present[hi_c]
    if ratio >= IMBALANCE_RATIO:
        return []
    shown = ", ".join(f"{c}: {n}" for c, n in sorted(present.items(), key=lambda kv: -kv[1])[:6])
    more = "" if len(present) <= 6 else f", … ({len(present)} classes)"
    return [(HealthWarning(
        code="class_imbalance", severity="warning",
        message=(f"{split} classes are imbalanced: class {lo_c} has {present[lo_c]} examples against "
                 f"{present[hi_c]} of class {hi_c} (1:{present[hi_c] / present[lo_c]:.0f}); counts {{{shown}{more}}}"),
        suggestion=("watch F1 / recall rather than accuracy; weight the loss by class "
                    "(e.g. loss=torch.nn.CrossEntropyLoss(weight=…)) or resample the rare classes"),
        fix={}, step=0, epoch=0), False)]


# Scale: a feature whose root mean square is UNSCALED_RMS or more (20x the unit scale of
# standardized data; raw pixels 0..255 sit near 100, the breast-cancer features up to 1e3, a year
# near 2000), or whose mean is UNSCALED_OFFSET of its standard deviations from zero with an RMS
# of UNSCALED_OFFSET_RMS or more. The first layer's gradients scale with its inputs, so such a
# run starts with gradient norms orders of magnitude above what its loss implies, and a step size
# that suits the other layers blows the first one up (or is 100x too small for them). Regression
# targets are read the same way: an MSE in the millions makes every gradient a thousand times too
# large. Standardized data, data in [0, 1] and one-hot columns are all far below.
UNSCALED_RMS = 20.0
UNSCALED_OFFSET = 10.0
UNSCALED_OFFSET_RMS = 5.0


def _unscaled_columns(t: torch.Tensor):
    """``(indices, rms, mean, std)`` of the columns of ``t`` (flattened per example) that are unscaled."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() == 0 or len(t) < 8:
        return None
    flat = t.detach().to("cpu", torch.float64).reshape(len(t), -1)
    flat = flat[torch.isfinite(flat).all(1)]
    if len(flat) < 8:
        return None
    rms = flat.pow(2).mean(0).sqrt()
    mean, std = flat.mean(0), flat.std(0)
    bad = (rms >= UNSCALED_RMS) | ((mean.abs() >= UNSCALED_OFFSET * std) & (rms >= UNSCALED_OFFSET_RMS))
    idx = bad.nonzero().flatten()
    if idx.numel() == 0:
        return None
    return idx, rms, mean, std


def check_scale(split: str, x, y, task, loss_name: str) -> list:
    """Inputs (and regression targets) far from unit scale: see UNSCALED_RMS. Train split only: the
    val split is scaled with the train split's statistics, whatever they are."""
    if split != "train":
        return []
    named = [(name, t) for name, t in ([("inputs", x)] if isinstance(x, torch.Tensor) else list(x))
             if not name.startswith("batch tensor")]  # a custom step's tensors: targets among them
    if task.task == "regression" and loss_name in ("mse", "mae", "huber") and y is not None:
        named.append(("regression targets", y))
    parts, worst = [], None
    for what, t in named:
        found = _unscaled_columns(t)
        if found is None:
            continue
        idx, rms, mean, std = found
        j = int(idx[rms[idx].argmax()])
        n_cols = rms.numel()
        cols = (f"{len(idx)} of {n_cols} column{'s' if n_cols > 1 else ''}" if n_cols > 1 else "its one column")
        parts.append(f"{split} {what}: {cols} far from unit scale (largest: column {j}, mean {mean[j]:.3g}, "
                     f"std {std[j]:.3g}, root mean square {rms[j]:.3g}; standardized data sits near 1)")
        if worst is None or float(rms[j]) > worst[1]:
            worst = (what, float(rms[j]))
    if not parts:
        return []
    targets = any(p.startswith(f"{split} regression targets") for p in parts)
    return [(HealthWarning(
        code="unscaled_data", severity="warning",
        message="; ".join(parts) + ": the gradients scale with them, so they start orders of magnitude above "
                                    "what the loss implies and no one learning rate suits every layer",
        suggestion=("standardize with the training split's statistics before training: "
                    "m, s = X_train.mean(0), X_train.std(0); X = (X - m) / s for every split (images: divide by 255)"
                    + ("; for the targets the same (and invert it on the predictions)" if targets else "")),
        fix={}, step=0, epoch=0), False)]


# Probabilities fed to a loss that applies its own softmax or sigmoid: rows of non-negative values
# that sum to 1 (within PROB_SUM_TOLERANCE) before a cross-entropy, values inside (0, 1) from a
# Sigmoid layer before a BCE-with-logits. The loss then squashes them again: the gradients shrink
# towards 0 as the model grows confident, and the loss has a floor far above 0 (log C - 1 for C
# classes at perfect accuracy) however well it learns.
PROB_SUM_TOLERANCE = 1e-3
_CE_NAMES = ("cross_entropy", "CrossEntropyLoss", "cross_entropy_loss", "NLLLoss", "nll_loss")
_BCE_LOGITS_NAMES = ("bce", "BCEWithLogitsLoss", "binary_cross_entropy_with_logits")


def check_outputs(output, task, loss_name: str, loss_from: str = "ours", model=None) -> list:
    """The model's output on the first training examples against the loss it is fed to."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() < 2 \
            or loss_from not in ("ours", "user") or output.numel() == 0:
        return []
    out = output.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out).all()):
        return []
    from .layers import last_leaf, path_label
    path, last = last_leaf(model) if model is not None else ("", None)
    last_kind = type(last).__name__ if last is not None else ""
    where = (f"{path_label(type(model).__name__, path)} ({last_kind})" if last_kind in ("Softmax", "Sigmoid", "Softmax2d")
             else "the model's forward (F.softmax / torch.sigmoid?)")
    if loss_name in _CE_NAMES and task.task in ("classification", "causal_lm"):
        for dim in sorted({1, out.dim() - 1}):
            if out.shape[dim] < 2:
                continue
            sums = out.sum(dim)
            if bool((out >= 0).all()) and bool(((sums - 1).abs() <= PROB_SUM_TOLERANCE).all()):
                nll = "NLLLoss" in loss_name or "nll" in loss_name
                return [(HealthWarning(
                    code="probability_outputs", severity="warning",
                    message=(f"the model's outputs are probabilities: on the first training examples every row of "
                             f"{out.shape[dim]} values is non-negative and sums to 1, made by {where}; "
                             + ("NLLLoss expects log-probabilities, so its loss is -p, not -log p" if nll else
                                "cross-entropy applies its own softmax, so it trains on a softmax of probabilities: "
                                f"the loss cannot fall below about {_softmax_floor(out.shape[dim]):.3g} even at 100% "
                                "accuracy, and its gradients fade as the model grows confident")),
                    suggestion=(("use nn.LogSoftmax instead of the Softmax, or drop it and use CrossEntropyLoss" if nll
                                 else "remove the Softmax from the model (cross-entropy wants the raw scores, the "
                                      "logits); apply softmax only when you need probabilities, after training")),
                    fix={}, step=0, epoch=0), False)]
    if loss_name in _BCE_LOGITS_NAMES and task.task in ("binary", "multilabel") and last_kind == "Sigmoid" \
            and bool(((out > 0) & (out < 1)).all()):
        return [(HealthWarning(
            code="probability_outputs", severity="warning",
            message=(f"the model ends in {where}, so its outputs are probabilities in (0, 1), and the loss is binary "
                     "cross-entropy with logits, which applies its own sigmoid: a sigmoid of a probability lies in "
                     "(0.5, 0.73), so the loss has a floor far above 0 and its gradients fade"),
            suggestion=("remove the Sigmoid from the model (BCEWithLogitsLoss wants the raw scores), or keep it and "
                        "pass loss=torch.nn.BCELoss()"),
            fix={}, step=0, epoch=0), False)]
    return []


def _softmax_floor(c: int) -> float:
    """Cross-entropy of softmax(p) at a perfect one-hot p: -log(e / (e + c - 1))."""
    import math
    return -math.log(math.e / (math.e + c - 1))


def merge_splits(found: list) -> list:
    """One ``(warning, fatal)`` per code: a run keeps one warning per code, so the train and val
    findings of a code are joined into one message (fatal when either is)."""
    merged: dict = {}
    for w, fatal in found:
        if w.code not in merged:
            merged[w.code] = (HealthWarning(code=w.code, severity=w.severity, message=w.message,
                                            suggestion=w.suggestion, fix=dict(w.fix), step=w.step,
                                            epoch=w.epoch), fatal)
            continue
        old, old_fatal = merged[w.code]
        old.message += "; " + w.message
        if w.suggestion not in old.suggestion:
            old.suggestion += "; " + w.suggestion
        merged[w.code] = (old, old_fatal or fatal)
    return list(merged.values())


def preflight(split: str, x, y, task, loss_name: str) -> list:
    """All data checks on one split: a list of ``(HealthWarning, fatal)``. ``x``: the inputs (a
    tensor, or ``[(name, tensor)]``); ``y``: the targets, or None when a custom step reads them."""
    found = check_finite(split, x, y)
    if y is not None and task.task != "custom":
        found += check_labels(split, y, task, loss_name)
        found += check_balance(split, y, task)
    if not any(w.code == "bad_input_data" for w, _ in found):
        found += check_scale(split, x, y, task, loss_name)
    return found
