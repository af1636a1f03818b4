"""Turning what the user passes into batches, and inferring the task.

Accepted: an ``(X, y)`` pair of tensors or numpy arrays, a ``Dataset`` whose
items are ``(x, y)``, or a ``DataLoader``. Inputs are moved to the device and
cast to the model's floating dtype (float64 numpy arrays are the common
case); targets keep their meaning: integer targets stay integer, nothing is
reshaped. Float targets only follow the model's float dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# How many examples the task inference and the data checks look at when the
# data is a Dataset or DataLoader (a full pass could take minutes).
SAMPLE_LIMIT = 4096


def _to_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{what}: a numpy array of dtype object cannot be trained on; convert it to numbers first")
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: could not turn the list into a tensor ({e})") from None
    raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def _float_dtype_of(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


class Source:
    """Batches of one split. ``batches(batch_size, generator, shuffle)`` yields ``(x, y)`` on the device."""

    n: Optional[int]

    def batches(self, batch_size: int, generator: Optional[torch.Generator], shuffle: bool) -> Iterator:
        raise NotImplementedError

    def sample(self, limit: int = SAMPLE_LIMIT) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``limit`` examples, for task inference and the data checks."""
        raise NotImplementedError

    def num_batches(self, batch_size: int) -> Optional[int]:
        raise NotImplementedError


class TensorSource(Source):
    """In-memory tensors: batches are index slices of a device-side permutation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device, float_dtype):
        if x.is_floating_point() and x.dtype != float_dtype:
            x = x.to(float_dtype)
        if y.is_floating_point() and y.dtype != float_dtype:
            y = y.to(float_dtype)
        self.x = x.to(device)
        self.y = y.to(device)
        self.n = len(self.x)

    def batches(self, batch_size, generator, shuffle):
        n = self.n
        if shuffle:
            # permute on the CPU with the run's generator: repeatable on any device
            order = torch.randperm(n, generator=generator).to(self.x.device)
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(0, n, batch_size):
                yield self.x[i:i + batch_size], self.y[i:i + batch_size]

    def num_batches(self, batch_size):
        return -(-self.n // batch_size)

    def sample(self, limit=None):
        return self.x, self.y


class LoaderSource(Source):
    """A Dataset (batched by us) or a DataLoader (batched as the user set it up)."""

    def __init__(self, data, device, float_dtype, is_loader: bool):
        self.data = data
        self.device = device
        self.float_dtype = float_dtype
        self.is_loader = is_loader
        try:
            self.n = len(data.dataset) if is_loader else len(data)
        except TypeError:
            self.n = None

    def _move(self, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"each batch must be an (inputs, targets) pair; got {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        x, y = batch[0], batch[1]
        x = _to_tensor(x, "inputs")
        y = _to_tensor(y, "targets")
        if x.is_floating_point() and x.dtype != self.float_dtype:
            x = x.to(self.float_dtype)
        if y.is_floating_point() and y.dtype != self.float_dtype:
            y = y.to(self.float_dtype)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _loader(self, batch_size, generator, shuffle):
        if self.is_loader:
            return self.data
        return DataLoader(self.data, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def batches(self, batch_size, generator, shuffle):
        for batch in self._loader(batch_size, generator, shuffle):
            yield self._move(batch)

    def num_batches(self, batch_size):
        if self.is_loader:
            try:
                return len(self.data)
            except TypeError:
                return None
        return None if self.n is None else -(-self.n // batch_size)

    def sample(self, limit=SAMPLE_LIMIT):
        xs, ys, seen = [], [], 0
        loader = self.data if self.is_loader else DataLoader(self.data, batch_size=256, shuffle=False)
        for batch in loader:
            x, y = self._move(batch)
            xs.append(x)
            ys.append(y)
            seen += len(x)
            if seen >= limit:
                break
        if not xs:
            raise ValueError("the data is empty: it yielded no batch")
        return torch.cat(xs), torch.cat(ys)


def make_source(data, what: str, device, model: torch.nn.Module) -> Source:
    """Wrap ``data`` (the ``train`` or ``val`` argument) as a :class:`Source`."""
    float_dtype = _float_dtype_of(model)
    if isinstance(data, DataLoader):
        return LoaderSource(data, device, float_dtype, is_loader=True)
    if isinstance(data, Dataset):
        return LoaderSource(data, device, float_dtype, is_loader=False)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x = _to_tensor(data[0], f"{what}[0] (inputs)")
        y = _to_tensor(data[1], f"{what}[1] (targets)")
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(f"{what}: inputs and targets need a first (example) dimension; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
        if len(x) != len(y):
            raise ValueError(f"{what}: inputs have {len(x)} examples but targets have {len(y)}; they must match")
        if len(x) == 0:
            raise ValueError(f"{what}: there are no examples (length 0)")
        return TensorSource(x, y, device, float_dtype)
    raise TypeError(
        f"{what}={type(data).__name__}: expected an (X, y) pair of tensors or numpy arrays, "
        "a torch Dataset, or a DataLoader"
    )


@dataclass(frozen=True)
class TaskInfo:
    """What the data and the model's output say the task is."""

    task: str            # "classification" | "binary" | "regression"
    n_outputs: int       # size of the model's last output dimension (1 for a flat output)
    output_shape: tuple  # the model's output shape for a batch of 2, first dim dropped

    @property
    def n_classes(self) -> int:
        return self.n_outputs if self.task == "classification" else 2


def probe_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model on two examples, eval mode, no grad; raise a clear error if it can't."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:
        raise ValueError(
            f"the model could not run on the training inputs (shape {tuple(x.shape[1:])} per example): "
            f"{type(e).__name__}: {e}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; nb_trainer needs it to return one tensor")
    return out


def _is_binary_values(y: torch.Tensor) -> bool:
    finite = y[torch.isfinite(y)] if y.is_floating_point() else y
    if finite.numel() == 0:
        return False
    return bool(((finite == 0) | (finite == 1)).all())


def infer_task(task: str, y: torch.Tensor, out: torch.Tensor) -> TaskInfo:
    """Decide the task from the targets and the model's output.

    One output and 0/1 targets: binary. Integer targets: classification.
    Float targets: regression. ``task`` other than "auto" is taken as given.
    """
    n_outputs = 1 if out.dim() <= 1 else int(out.shape[-1])
    shape = tuple(out.shape[1:])
    if task != "auto":
        return TaskInfo(task, n_outputs, shape)
    if n_outputs == 1 and _is_binary_values(y):
        return TaskInfo("binary", n_outputs, shape)
    if not y.is_floating_point() and not y.is_complex():
        return TaskInfo("classification", n_outputs, shape)
    if n_outputs > 1 and y.dim() == 1 and _is_integral(y):
        # class ids stored as floats: the data checks say so rather than train a regression
        return TaskInfo("classification", n_outputs, shape)
    return TaskInfo("regression", n_outputs, shape)


def _is_integral(y: torch.Tensor) -> bool:
    finite = y[torch.isfinite(y)]
    return finite.numel() > 0 and bool((finite == finite.round()).all())
