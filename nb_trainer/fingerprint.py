"""A fingerprint of a model's architecture and its data's shapes.

Runs with the same fingerprint are comparable: the same layers with the same parameter
shapes, trained on data of the same shapes, sizes and task. A new Trainer (in a new kernel,
after a restart) finds its model's earlier runs in the store by it. Weights and values do
not count: the architecture and the shapes do.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional


def _shape_of(value) -> Any:
    """Per-example shape and dtype of a batch part (tensor, array, tuple, dict), batch size left out."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return {"shape": list(shape)[1:], "dtype": str(getattr(value, "dtype", ""))}
    if isinstance(value, dict):
        return {str(k): _shape_of(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    return type(value).__name__


def architecture(model) -> list:
    """Every module's type and every parameter's and buffer's name, shape and dtype."""
    parts: list = [[name, type(m).__name__] for name, m in model.named_modules()]
    parts += [[name, list(p.shape), str(p.dtype)] for name, p in model.named_parameters()]
    parts += [[name, list(b.shape), str(b.dtype)] for name, b in model.named_buffers()]
    return parts


def fingerprint(model, sample=None, n_train: Optional[int] = None, n_val: Optional[int] = None,
                task: Optional[str] = None) -> str:
    """A short hex digest of the architecture of ``model`` and the shapes of its data.

    ``sample`` is a batch as the data layer hands it out (e.g. ``(x, y)``); ``n_train`` and
    ``n_val`` the number of examples when known.
    """
    description = {"model": architecture(model), "data": None if sample is None else _shape_of(sample),
                   "n_train": n_train, "n_val": n_val, "task": task}
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def of_trainer(trainer) -> str:
    """The fingerprint of a Trainer's model and data."""
    def sample(source):
        try:
            return source.sample()
        except Exception:  # a data source that cannot give a sample: its shapes do not count
            return None
    train, val = trainer.train_data, trainer.val_data
    return fingerprint(trainer.model, sample(train), getattr(train, "n", None),
                       None if val is None else getattr(val, "n", None), trainer.task)
