"""Turning what the user passes into batches on the device.

Accepted for ``train`` / ``val``:

- in-memory arrays: an ``(X, y)`` pair, an ``(x1, ..., xk, y)`` or
  ``(x, y, sample_weight)`` tuple, or a dict of equal-length arrays
  (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``); tensors,
  numpy arrays or lists;
- a map-style ``Dataset`` (batched here, its items tuples or dicts);
- an ``IterableDataset``, or a ``DataLoader`` over anything (batched as the
  user set it up; no ``len`` means an epoch of unknown length).

A batch is whatever structure the data yields (a tuple, a list, a dict,
nested); :func:`to_device` moves every tensor in it to the device,
recursively, leaving other values (strings, ids) alone. Floating tensors
follow the model's float dtype (float64 numpy arrays are the common case);
integer tensors keep theirs. Which parts of a batch are inputs and which the
target is the step's business (``step.py``), not this module's.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

# How many examples the task inference and the data checks look at when the
# data is a Dataset or DataLoader (a full pass could take minutes).
SAMPLE_LIMIT = 4096
# For data without a length (a stream), the sample is kept and trained on first,
# so it is small: the stream is read once, never twice.
STREAM_SAMPLE_LIMIT = 512


def _to_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind in "OUSV":
            raise TypeError(f"{what}: a numpy array of dtype {a.dtype} cannot be trained on; "
                            "convert it to numbers first (e.g. class names to ids)")
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, (list, tuple)):
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: could not turn the list into a tensor ({e})") from None
        return _to_tensor(arr, what)
    raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def float_dtype_of(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


# -- batch structures -----------------------------------------------------------

def to_device(batch, device, float_dtype, non_blocking: bool = True):
    """``batch`` with every tensor moved to ``device`` (floating ones cast to ``float_dtype``).

    Tuples, lists and dicts (also dict subclasses such as Hugging Face's
    ``BatchEncoding``) are walked recursively; numpy arrays become tensors;
    anything else is returned as it is.
    """
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point() and batch.dtype != float_dtype:
            batch = batch.to(float_dtype)
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, np.ndarray) and batch.dtype.kind in "biuf":
        return to_device(torch.from_numpy(np.ascontiguousarray(batch)), device, float_dtype, non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, float_dtype, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, float_dtype, non_blocking) for v in batch) \
            if not hasattr(batch, "_fields") else type(batch)(*(to_device(v, device, float_dtype, non_blocking)
                                                               for v in batch))
    return batch


def tensors_in(batch) -> list:
    """Every tensor in ``batch``, depth first."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for v in batch.values() for t in tensors_in(v)]
    if isinstance(batch, (tuple, list)):
        return [t for v in batch for t in tensors_in(v)]
    return []


def batch_size_of(batch) -> int:
    """Examples in ``batch``: the first dimension of its first tensor (0 without one)."""
    for t in tensors_in(batch):
        if t.dim():
            return int(t.shape[0])
    return 0


def slice_batch(batch, stop: int, n: Optional[int] = None):
    """The first ``stop`` examples of ``batch``: every tensor whose first dimension is the
    batch's (``n``) is sliced; other values are kept as they are."""
    if n is None:
        n = batch_size_of(batch)
    if isinstance(batch, torch.Tensor):
        return batch[:stop] if batch.dim() and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        return {k: slice_batch(v, stop, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        items = [slice_batch(v, stop, n) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def cat_batches(batches: list):
    """One batch of the examples of ``batches`` (same structure), or None when their tensors do
    not line up (sequences padded to a different length per batch)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    try:
        if isinstance(first, torch.Tensor):
            return torch.cat(batches) if first.dim() else first
        if isinstance(first, Mapping):
            parts = {k: cat_batches([b[k] for b in batches]) for k in first}
            return None if any(v is None and first[k] is not None for k, v in parts.items()) else parts
        if isinstance(first, (tuple, list)):
            parts = [cat_batches([b[i] for b in batches]) for i in range(len(first))]
            if any(p is None and f is not None for p, f in zip(parts, first)):
                return None
            return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    except (RuntimeError, KeyError, IndexError, TypeError):
        return None
    return first


def _index(columns, idx):
    if isinstance(columns, dict):
        return {k: v[idx] for k, v in columns.items()}
    return tuple(c[idx] for c in columns)


# -- sources ----------------------------------------------------------------------

class Source:
    """Batches of one split, on the device.

    ``n``: examples, or None when unknown (a stream). ``batches(batch_size,
    generator, shuffle)`` yields batches; ``sample()`` a list of batches
    covering the first examples, for the task inference and the data checks.
    """

    n: Optional[int]

    def batches(self, batch_size: int, generator: Optional[torch.Generator], shuffle: bool) -> Iterator:
        raise NotImplementedError

    def sample(self, limit: int = SAMPLE_LIMIT) -> list:
        raise NotImplementedError

    def num_batches(self, batch_size: int) -> Optional[int]:
        raise NotImplementedError


class TensorSource(Source):
    """In-memory arrays (a tuple or a dict of columns): batches are index slices of a
    device-side permutation."""

    def __init__(self, columns, device, float_dtype):
        moved = to_device(columns, device, float_dtype, non_blocking=False)
        self.columns = moved if isinstance(moved, dict) else tuple(moved)
        self.n = batch_size_of(self.columns)
        self.device = tensors_in(self.columns)[0].device
        self._pair = isinstance(self.columns, tuple) and len(self.columns) == 2

    def batches(self, batch_size, generator, shuffle):
        n = self.n
        cols = self.columns
        if shuffle:
            # permute on the CPU with the run's generator: repeatable on any device
            order = torch.randperm(n, generator=generator).to(self.device)
            if self._pair:  # the common (X, y) case, without the generic indexing
                x, y = cols
                for i in range(0, n, batch_size):
                    idx = order[i:i + batch_size]
                    yield x[idx], y[idx]
            else:
                for i in range(0, n, batch_size):
                    yield _index(cols, order[i:i + batch_size])
        else:
            for i in range(0, n, batch_size):
                yield _index(cols, slice(i, i + batch_size))

    def num_batches(self, batch_size):
        return -(-self.n // batch_size)

    def sample(self, limit=None):
        return [self.columns]


class LoaderSource(Source):
    """A Dataset (batched here), an IterableDataset, or a DataLoader (batched as the user set it up).

    Data without a length may be a one-shot stream: the batches read for the sample are
    kept and the first pass trains on them, then on the rest of the same iterator, so
    nothing is read twice or skipped.
    """

    def __init__(self, data, device, float_dtype, is_loader: bool):
        self.data = data
        self.device = device
        self.float_dtype = float_dtype
        self.is_loader = is_loader
        self.iterable = isinstance(data.dataset if is_loader else data, IterableDataset)
        try:
            self.n = len(data.dataset) if is_loader else len(data)
        except TypeError:
            self.n = None
        self.streaming = self.n is None or self.iterable
        self._peeked: Optional[list] = None   # raw batches read by sample() (streams only)
        self._peek_iter = None

    def _loader(self, batch_size, generator, shuffle):
        if self.is_loader:
            return self.data
        if self.iterable:  # an IterableDataset orders itself; DataLoader refuses shuffle for it
            return DataLoader(self.data, batch_size=batch_size)
        return DataLoader(self.data, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def _move(self, batch):
        return to_device(batch, self.device, self.float_dtype)

    def batches(self, batch_size, generator, shuffle):
        if self._peeked is not None:
            peeked, it = self._peeked, self._peek_iter
            self._peeked = self._peek_iter = None
            for batch in peeked:
                yield self._move(batch)
            for batch in it:
                yield self._move(batch)
            return
        for batch in self._loader(batch_size, generator, shuffle):
            yield self._move(batch)

    def num_batches(self, batch_size):
        if self.is_loader:
            try:
                return len(self.data)
            except TypeError:
                return None
        if self.iterable:
            return None
        return None if self.n is None else -(-self.n // batch_size)

    def sample(self, limit=SAMPLE_LIMIT):
        if self.streaming:
            if self._peeked is None:
                self._peek_iter = iter(self._loader(64, None, False))
                self._peeked, seen = [], 0
                for batch in self._peek_iter:
                    self._peeked.append(batch)
                    seen += batch_size_of(batch) or 1
                    if seen >= min(limit, STREAM_SAMPLE_LIMIT):
                        break
            batches = [self._move(b) for b in self._peeked]
        else:
            loader = self.data if self.is_loader else DataLoader(self.data, batch_size=256, shuffle=False)
            batches, seen = [], 0
            for batch in loader:
                batches.append(self._move(batch))
                seen += batch_size_of(batches[-1]) or 1
                if seen >= limit:
                    break
        if not batches:
            raise ValueError("the data is empty: it yielded no batch")
        return batches


def _columns(data, what: str):
    """In-memory columns of ``data`` as tensors, checked to have one length."""
    if isinstance(data, Mapping):
        cols = {k: _to_tensor(v, f"{what}[{k!r}]") for k, v in data.items()}
        names = [f"{what}[{k!r}]" for k in cols]
    else:
        cols = [_to_tensor(v, f"{what}[{i}]" + (" (inputs)" if i == 0 else
                                              " (targets)" if i == len(data) - 1 == 1 else ""))
                for i, v in enumerate(data)]
        names = [f"{what}[{i}]" for i in range(len(cols))]
    tensors = list(cols.values()) if isinstance(cols, dict) else cols
    if any(t.dim() == 0 for t in tensors):
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        raise ValueError(f"{what}: every array needs a first (example) dimension; got shapes {shapes}")
    lengths = {len(t) for t in tensors}
    if len(lengths) > 1:
        if len(tensors) == 2 and not isinstance(cols, dict):
            raise ValueError(f"{what}: inputs have {len(tensors[0])} examples but targets have "
                             f"{len(tensors[1])}; they must match")
        sizes = ", ".join(f"{n} has {len(t)}" for n, t in zip(names, tensors))
        raise ValueError(f"{what}: the arrays must have the same number of examples; {sizes}")
    if lengths == {0}:
        raise ValueError(f"{what}: there are no examples (length 0)")
    return cols


def make_source(data, what: str, device, model: torch.nn.Module) -> Source:
    """Wrap ``data`` (the ``train`` or ``val`` argument) as a :class:`Source`."""
    float_dtype = float_dtype_of(model)
    if isinstance(data, DataLoader):
        return LoaderSource(data, device, float_dtype, is_loader=True)
    if isinstance(data, Dataset):
        return LoaderSource(data, device, float_dtype, is_loader=False)
    if isinstance(data, Mapping) and data:
        return TensorSource(_columns(data, what), device, float_dtype)
    if isinstance(data, (tuple, list)) and len(data) >= 2:
        return TensorSource(_columns(data, what), device, float_dtype)
    if isinstance(data, (tuple, list)):
        raise TypeError(f"{what}: a {type(data).__name__} of {len(data)} array(s); expected (X, y), (x1, ..., xk, y) "
                         "or (x, y, sample_weight)")
    raise TypeError(
        f"{what}={type(data).__name__}: expected an (X, y) pair of tensors or numpy arrays, "
        "an (x1, ..., xk, y) tuple, a dict of arrays, a torch Dataset or IterableDataset, or a DataLoader"
    )


# -- the task -------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskInfo:
    """What the data and the model's output say the task is."""

    task: str            # a name of tasks.TASK_TABLE
    n_outputs: int       # size of the model's last output dimension (1 for a flat output; C, K or the vocab)
    output_shape: tuple  # the model's output shape per example (first dim dropped)
    per_position: bool = False  # classification with a class per position (tokens, pixels)

    @property
    def n_classes(self) -> int:
        return self.n_outputs if self.task in ("classification", "causal_lm") else 2


def _is_binary_values(y: torch.Tensor) -> bool:
    finite = y[torch.isfinite(y)] if y.is_floating_point() else y
    if finite.numel() == 0:
        return False
    return bool(((finite == 0) | (finite == 1)).all())


def _is_integral(y: torch.Tensor) -> bool:
    finite = y[torch.isfinite(y)]
    return finite.numel() > 0 and bool((finite == finite.round()).all())


def infer_task(task: str, y: Optional[torch.Tensor], out: Optional[torch.Tensor],
               causal_lm: bool = False) -> TaskInfo:
    """Decide the task from the targets and the model's output (a prediction tensor).

    A causal LM (by its class, or ``task="causal_lm"``): causal_lm. One output and 0/1
    targets: binary. ``(N, K)`` 0/1 targets against K outputs, not all rows one-hot:
    multilabel. Integer targets: classification, per position when the output has a class
    dimension more than the targets. Float targets: regression. No prediction to read (a
    step returning only a loss): "custom". ``task`` other than "auto" is taken as given.
    """
    if out is None:
        return TaskInfo("custom", 0, ())
    n_outputs = 1 if out.dim() <= 1 else int(out.shape[-1])
    shape = tuple(out.shape[1:])
    # shapes per example: the output is of a few probe examples, the targets of the whole sample
    per_position = (y is not None and out.dim() > 2 and not y.is_floating_point()
                    and (tuple(out.shape[1:-1]) == tuple(y.shape[1:]) or tuple(out.shape[2:]) == tuple(y.shape[1:])))
    if per_position and tuple(out.shape[1:-1]) != tuple(y.shape[1:]):
        n_outputs = int(out.shape[1])  # (N, C, ...): torch's segmentation layout
    if task != "auto":
        return TaskInfo(task, n_outputs, shape, per_position and task == "classification")
    if causal_lm:
        return TaskInfo("causal_lm", n_outputs, shape)
    if y is None:
        return TaskInfo("custom", n_outputs, shape)
    if n_outputs == 1 and _is_binary_values(y):
        return TaskInfo("binary", n_outputs, shape)
    if n_outputs > 1 and tuple(y.shape[1:]) == tuple(out.shape[1:]) and y.dim() == 2 and _is_binary_values(y):
        one_hot = y.is_floating_point() and bool((y.sum(1) == 1).all())
        if not one_hot:  # one-hot float rows are class probabilities: cross-entropy's soft labels
            return TaskInfo("multilabel", n_outputs, shape)
    if not y.is_floating_point() and not y.is_complex():
        return TaskInfo("classification", n_outputs, shape, per_position)
    if n_outputs > 1 and y.dim() == 1 and _is_integral(y):
        # class ids stored as floats: the data checks say so rather than train a regression
        return TaskInfo("classification", n_outputs, shape)
    return TaskInfo("regression", n_outputs, shape)
