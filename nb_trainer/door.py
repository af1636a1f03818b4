"""Checks at the door: what the user passes to ``Trainer(...)`` and ``start(...)``.

Each check raises ``TypeError`` or ``ValueError`` in the caller's thread, naming
the argument, the value given and what is accepted, so a mistake never
surfaces later as a torch, optimizer or autograd error on the training
thread (or, worse, as a Trainer left unusable).
"""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .config import OPTIMIZERS, TrainConfig
from .store import check_store_path


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n - 1] + "…"


# -- the device ------------------------------------------------------------------------------

def available_devices() -> list[str]:
    """The devices this PyTorch can train on here, as ``device=`` accepts them."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; "auto" (or None): CUDA when present, else CPU."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "'auto', " + ", ".join(repr(d) for d in available_devices()) + " (or a torch.device)"
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device={_short(device)} is not accepted: use {accepted}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a device: use {accepted}") from None
    if dev.type == "meta":
        raise ValueError(f"device={device!r} is not accepted: the meta device holds no data, so nothing can "
                         f"train on it; use {accepted}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch was built without CUDA" if not torch.backends.cuda.is_built()
                   else "no CUDA GPU is visible to this process")
            raise ValueError(f"device={device!r} is not available: {why}; use {accepted}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={device!r} is not available: this machine has {n} CUDA device(s); "
                             f"use {accepted}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} is not available: MPS (Apple GPUs) is not supported by this "
                             f"PyTorch on this machine; use {accepted}")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as e:  # whatever the backend raises, the user's answer is the same
            raise ValueError(f"device={device!r} is not available here ({type(e).__name__}: {e}); "
                             f"use {accepted}") from None
    return dev


# -- the model, the data, the store ------------------------------------------------------------

def check_model(model) -> None:
    """An ``nn.Module`` with real (not meta) tensors and something to train."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    meta = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(
            f"model={type(model).__name__} has tensors on the 'meta' device ({', '.join(meta[:3])}"
            f"{', …' if len(meta) > 3 else ''}), which hold no values, so it cannot train. Materialize it "
            "first: model.to_empty(device='cpu') and then initialize or load its weights")
    check_trainable(model)


def check_trainable(model: nn.Module) -> None:
    """At least one parameter with ``requires_grad``: otherwise there is nothing to train."""
    params = list(model.parameters())
    if any(p.requires_grad for p in params):
        return
    if not params:
        why = "it has no parameters at all"
    else:
        why = f"all {len(params)} of its parameter tensors have requires_grad=False (frozen)"
    raise ValueError(f"model={type(model).__name__} has no trainable parameters: {why}, so there is nothing to "
                     "train. Unfreeze the ones to train (p.requires_grad_(True)), or pass a model with parameters")


def check_data(data, what: str) -> None:
    """Refuse arrays whose values are not numbers (strings, dates) before torch sees them."""
    if data is None:
        return
    if isinstance(data, (tuple, list)):
        n = len(data)
        for i, part in enumerate(data):
            role = "targets" if n >= 2 and i == n - 1 else "inputs"
            _check_values(part, f"{what}[{i}] ({role})", role)
    elif isinstance(data, Mapping):
        for key, part in data.items():
            _check_values(part, f"{what}[{key!r}]", "values")


def _check_values(part, what: str, role: str) -> None:
    kind, shown = None, None
    if isinstance(part, np.ndarray):
        if part.dtype.kind in "biufc":
            return
        kind, shown = part.dtype.kind, f"a numpy array of dtype {part.dtype}"
    elif isinstance(part, list) and part and isinstance(part[0], (str, bytes)):
        kind, shown = "U", f"a list of {type(part[0]).__name__}"
    if kind is None:
        return
    if kind in "USO" and role == "targets":
        fix = ("encode the labels as integers first, e.g. classes, y = np.unique(y, return_inverse=True) "
               "(or sklearn.preprocessing.LabelEncoder)")
    elif kind in "US":
        fix = "turn the text into numbers first (a vocabulary index, one-hot columns, or a tokenizer's ids)"
    else:
        fix = "convert it to numbers first (for example .astype(np.float32))"
    raise TypeError(f"{what}: {shown} cannot be trained on: its values are not numbers; {fix}")


def check_store(store) -> Optional[str]:
    """``store`` as a folder path, or None (keep nothing on disk)."""
    if store is None:
        return None
    return check_store_path(store, "store")


# -- the loss ----------------------------------------------------------------------------------

def check_loss(loss, loss_fn, output, targets) -> None:
    """A user's loss callable, tried on the model's output for two training examples.

    It must give one number (a 0-d tensor) from the output and the targets;
    the named losses are ours and need no trying. Skipped when the output is
    not a plain tensor (a model that returns a dict or its own loss).
    """
    if loss is None or isinstance(loss, str) or not isinstance(output, torch.Tensor):
        return
    name = getattr(loss, "__name__", type(loss).__name__)
    try:
        with torch.no_grad():
            value = loss_fn(output, targets[:len(output)])
    except Exception as e:  # the user's function: what it raised is the message
        raise ValueError(f"loss={name}: calling it on the model's output (shape {tuple(output.shape)}) and the "
                         f"targets (shape {tuple(targets[:len(output)].shape)}) of two training examples raised "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"loss={name} returned {type(value).__name__} {_short(value, 40)}, not a tensor: it must "
                        "compute a 0-d tensor from the model's output (so it can be backpropagated)")
    if value.dim() != 0:
        raise ValueError(f"loss={name} returned a tensor of shape {tuple(value.shape)}, not one number: it must "
                         "return a 0-d tensor, e.g. reduce it with .mean() or .sum()")
    if not (value.is_floating_point() or value.is_complex()):
        raise ValueError(f"loss={name} returned a {value.dtype} tensor: a loss must be a float to have gradients")


# -- start() and restart() ------------------------------------------------------------------------

def check_config_arg(config) -> None:
    """``start()``'s positional argument: a ``TrainConfig`` or None, nothing else."""
    if config is None or isinstance(config, TrainConfig):
        return
    hint = ""
    if isinstance(config, str) and config.lower() in OPTIMIZERS:
        hint = f"; to choose the optimizer, name it: t.start(optimizer={config!r})"
    elif isinstance(config, Mapping):
        hint = "; to pass options from a dict, unpack it: t.start(**options)"
    raise TypeError(f"config={_short(config)} is not accepted: start()'s first argument must be a "
                    f"nb_trainer.TrainConfig or None; pass options by name, e.g. t.start(lr=0.01){hint}")


def check_delay(delay) -> None:
    """``restart()``'s positional argument: the quiet period in seconds."""
    accepted = "delay must be a number of seconds >= 0; pass options by name, e.g. t.restart(lr=0.01)"
    if isinstance(delay, bool) or not isinstance(delay, numbers.Real):
        raise TypeError(f"delay={_short(delay)} is not accepted: {accepted}")
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"delay={delay!r} is not accepted: {accepted}")
