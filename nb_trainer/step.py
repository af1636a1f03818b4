"""The one seam between a batch and a model: inputs, forward, loss, predictions and targets.

A :class:`Layout` says, once per Trainer, which parts of a batch are the
model's inputs and which the target (fastai's ``n_inp``: data, not a guess
made at every step):

- ``(x, y)``; ``(x1, ..., xk, y)`` for a ``forward`` with k required
  positional parameters (or ``inputs=k``); ``(x, y, sample_weight)`` for a
  one-input model (Keras' convention: the loss is ``sum(w * l) / N``);
- a dict: ``model(**batch)`` with the keys ``forward`` takes (every key when
  it takes ``**kwargs``); the target is the value under ``target=`` or the
  first of :data:`TARGET_KEYS` present. A Hugging Face model that is passed
  ``labels`` computes its own loss, which is trained on unless ``loss=`` was
  given. A causal language model whose batch has no labels is given its
  ``input_ids`` as labels (it shifts them itself);
- anything at all with ``step=fn``: ``fn(model, batch)`` returns the loss, or
  ``(loss, outputs, targets)`` so that metrics can be computed.

A model's output may be a tensor, a tuple or list (the first element is the
prediction), or a dict / ``ModelOutput`` (``loss`` when present, the
prediction under ``logits``, else its first tensor).

:class:`Step` applies the layout: the engine's training step, evaluation, the
LR finder and ``Trainer.evaluate`` all call it, and nothing else touches a
batch's structure. It does not log, schedule or checkpoint.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch

from .data import batch_size_of, tensors_in
from .metrics import metrics_for, per_example

TARGET_KEYS = ("labels", "label", "target", "targets", "y")
_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class StepResult(NamedTuple):
    """What one step gives: the loss (0-d tensor, with grad in training), the prediction and
    targets the metrics read (None for a step that returns only a loss), examples in the batch."""

    loss: torch.Tensor
    pred: Optional[torch.Tensor]
    target: Optional[torch.Tensor]
    n: int


@dataclass(frozen=True)
class Signature:
    """What a model's ``forward`` takes."""

    required: int            # positional parameters without a default
    positional: int          # positional parameters in all
    names: frozenset         # every named parameter
    var_positional: bool     # *args
    var_keyword: bool        # **kwargs

    def takes(self, key: str) -> bool:
        return self.var_keyword or key in self.names


def signature_of(model: torch.nn.Module) -> Signature:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C++ forward: assume one input
        return Signature(1, 1, frozenset(), False, False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return Signature(
        required=sum(1 for p in positional if p.default is p.empty),
        positional=len(positional),
        names=frozenset(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)),
        var_positional=any(p.kind == p.VAR_POSITIONAL for p in params),
        var_keyword=any(p.kind == p.VAR_KEYWORD for p in params))


def is_causal_lm(model: torch.nn.Module) -> bool:
    """A Hugging Face causal language model (GPT2LMHeadModel, LlamaForCausalLM, ...)."""
    return type(model).__name__.endswith(_CAUSAL_LM_SUFFIXES)


@dataclass(frozen=True)
class Layout:
    """Which parts of a batch are inputs and which the target.

    ``kind``: "pair" ``(x, y)``, "tuple" ``(x1, ..., xk, y[, w])``, "dict", "tensor" (a
    causal LM's token ids alone) or "custom" (the user's step reads the batch).
    """

    kind: str
    n_inputs: int = 1
    weighted: bool = False
    target_key: Optional[str] = None      # dict: where the target is
    pass_keys: Optional[tuple] = None     # dict: the keys given to forward (None: all of them)
    positional_key: Optional[str] = None  # dict: the one key given positionally (forward(x) and one input)
    labels_key: Optional[str] = None      # dict / tensor: the target is also given to forward under this name
    target_is_input: bool = False         # dict: the target is an input too (a causal LM's input_ids)

    def describe(self) -> str:
        if self.kind == "pair":
            return "(inputs, targets)"
        if self.kind == "tuple":
            names = ", ".join(f"x{i + 1}" for i in range(self.n_inputs))
            return f"({names}, targets{', sample_weight' if self.weighted else ''})"
        if self.kind == "dict":
            passed = "every key" if self.pass_keys is None else ", ".join(self.pass_keys)
            how = f"model({self.positional_key!r} value)" if self.positional_key else f"model(**{{{passed}}})"
            return f"dict batch: {how}, target {self.target_key!r}"
        if self.kind == "tensor":
            return "token ids (also the labels)"
        return "custom step"


def _describe_batch(batch) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "a dict with keys " + ", ".join(repr(k) for k in batch)
    if isinstance(batch, (tuple, list)):
        parts = ", ".join(f"{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in batch)
        return f"a {type(batch).__name__} of {len(batch)} ({parts})"
    return f"a {type(batch).__name__}"


def make_layout(model: torch.nn.Module, batch, inputs: Optional[int] = None, target: Optional[str] = None,
                custom: bool = False, causal_lm: bool = False) -> Layout:
    """Decide the layout from the model's signature and the first batch; raise a clear error
    (``TypeError`` / ``ValueError`` naming what was given and what is accepted) when it fits none."""
    if inputs is not None and (isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 1):
        raise ValueError(f"inputs={inputs!r} is not accepted: inputs must be an integer >= 1 "
                         "(how many leading batch elements the model's forward takes)")
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target={target!r} is not accepted: target must be the key of the target in "
                        "dict batches (a str), or None")
    if custom:
        return Layout("custom")
    sig = signature_of(model)
    if isinstance(batch, Mapping):
        return _dict_layout(sig, batch, target, causal_lm)
    if isinstance(batch, torch.Tensor):
        if causal_lm:
            return Layout("tensor", labels_key="labels" if sig.takes("labels") else None)
        raise TypeError(f"each batch is {_describe_batch(batch)} with no targets; give (inputs, targets) "
                        "pairs, a dict with a target key, or step=fn(model, batch) -> loss")
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"each batch is {_describe_batch(batch)}; accepted batches are (inputs, targets), "
                        "(x1, ..., xk, targets), (x, targets, sample_weight), a dict, or anything with step=")
    n = len(batch)
    if inputs is not None:
        k = inputs
        if n not in (k + 1, k + 2):
            raise ValueError(f"inputs={k}: each batch is {_describe_batch(batch)}; with {k} input(s) a batch "
                             f"must be ({k} inputs, targets) or ({k} inputs, targets, sample_weight)")
    else:
        k = max(sig.required, 1)
        if sig.var_positional and n >= 2:
            k = max(k, n - 1)
        if n not in (k + 1, k + 2) or (n == k + 2 and k != 1):
            takes = f"forward takes {sig.required} required input(s)"
            raise ValueError(f"each batch is {_describe_batch(batch)}, which fits neither {takes} + targets "
                             f"({k + 1} elements) nor (x, targets, sample_weight); pass inputs=k to say how "
                             "many leading elements are inputs, or step=fn(model, batch)")
    weighted = n == k + 2
    if weighted:
        w = batch[-1]
        y = batch[-2]
        if not (isinstance(w, torch.Tensor) and w.dim() == 1 and w.is_floating_point()
                and isinstance(y, torch.Tensor) and y.dim() >= 1 and len(w) == len(y)):
            raise ValueError(f"each batch is {_describe_batch(batch)}: read as (x, targets, sample_weight), but "
                             "the last element is not a float vector of one weight per example; if the model "
                             "takes two inputs, pass inputs=2")
    return Layout("pair" if (k == 1 and n == 2) else "tuple", n_inputs=k, weighted=weighted)


def _dict_layout(sig: Signature, batch: Mapping, target: Optional[str], causal_lm: bool) -> Layout:
    keys = list(batch)
    if target is not None:
        if target not in batch:
            raise ValueError(f"target={target!r} is not a key of the batch; its keys are "
                             + ", ".join(repr(k) for k in keys))
        key = target
    else:
        key = next((k for k in TARGET_KEYS if k in batch), None)
    passed = None if sig.var_keyword else tuple(k for k in keys if k in sig.names)
    if key is None:
        if causal_lm and "input_ids" in batch:
            # a causal LM is its own target: the labels are the input ids (it shifts them)
            return Layout("dict", target_key="input_ids", pass_keys=passed,
                          labels_key="labels" if sig.takes("labels") else None, target_is_input=True)
        raise ValueError("each batch is a dict with keys " + ", ".join(repr(k) for k in keys)
                         + "; none is a target (looked for " + ", ".join(repr(k) for k in TARGET_KEYS)
                         + "): pass target='<key>', or step=fn(model, batch)")
    labels_key = key if sig.takes(key) else None
    if passed is not None and not [k for k in passed if k != key]:
        inputs = [k for k in keys if k != key and isinstance(batch[k], torch.Tensor)]
        if sig.required == 1 and len(inputs) == 1:
            # forward(x) and one input tensor under another name ({"image": ..., "label": ...})
            return Layout("dict", target_key=key, pass_keys=(), positional_key=inputs[0])
        raise ValueError("each batch is a dict with keys " + ", ".join(repr(k) for k in keys)
                         + f", but the model's forward takes {', '.join(sorted(sig.names)) or 'no named inputs'}: "
                         "name the batch's keys after forward's parameters, or pass step=fn(model, batch)")
    return Layout("dict", target_key=key, pass_keys=passed, labels_key=labels_key)


def output_parts(out) -> tuple:
    """``(prediction, loss)`` of a model's output; either may be None."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, Mapping):
        loss = out.get("loss")
        pred = out.get("logits")
        if pred is None:
            pred = next((v for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor)), None)
        return pred, loss
    if isinstance(out, (tuple, list)) and out:
        first = out[0]
        if isinstance(first, (torch.Tensor, Mapping, tuple, list)):
            return output_parts(first)[0], None
    return None, None


def describe_output(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys " + ", ".join(repr(k) for k in out)
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return f"a {type(out).__name__}"


class Step:
    """One batch through the model: ``step(model, batch) -> StepResult``.

    ``loss_fn(pred, target)`` is the loss by task or the user's; with
    ``use_model_loss`` the model's own ``loss`` output is trained on instead.
    ``custom``: the user's ``fn(model, batch)``.
    """

    def __init__(self, layout: Layout, loss_fn: Optional[Callable] = None, use_model_loss: bool = False,
                 custom: Optional[Callable] = None, weighted_loss: Optional[Callable] = None):
        self.layout = layout
        self.loss_fn = loss_fn
        self.use_model_loss = use_model_loss
        self.custom = custom
        self.weighted_loss = weighted_loss
        kind = layout.kind
        # the common (x, y) case gets its own short path: it runs once a step
        self._call = {"pair": self._pair, "custom": self._custom}.get(kind, self._general)

    def __call__(self, model, batch) -> StepResult:
        return self._call(model, batch)

    # -- the parts ------------------------------------------------------------------
    def split(self, batch) -> tuple:
        """``(args, kwargs, target, weight)`` of a batch (not for a custom step)."""
        lay = self.layout
        kind = lay.kind
        if kind == "pair":
            return (batch[0],), {}, batch[1], None
        if kind == "tuple":
            k = lay.n_inputs
            return tuple(batch[:k]), {}, batch[k], (batch[k + 1] if lay.weighted else None)
        if kind == "dict":
            y = batch[lay.target_key]
            if lay.positional_key is not None:
                return (batch[lay.positional_key],), {}, y, None
            keys = batch.keys() if lay.pass_keys is None else lay.pass_keys
            kwargs = {k: batch[k] for k in keys if (k != lay.target_key or lay.target_is_input) and k in batch}
            if lay.labels_key and self.use_model_loss:
                # the model computes its own loss from the labels (Hugging Face); with our loss it
                # need not, and is not given them
                kwargs[lay.labels_key] = y
            return (), kwargs, y, None
        if kind == "tensor":
            kwargs = {lay.labels_key: batch} if (lay.labels_key and self.use_model_loss) else {}
            return (batch,), kwargs, batch, None
        raise TypeError("a custom step reads the batch itself")

    def forward(self, model, batch):
        """The model's raw output on ``batch`` (the probes read it; no loss)."""
        if self.layout.kind == "custom":
            return self._custom_parts(model, batch)[1]
        args, kwargs, _, _ = self.split(batch)
        return model(*args, **kwargs)

    def inputs_of(self, batch) -> list:
        """``[(name, tensor)]``: the input tensors of ``batch`` (the data checks read them)."""
        if self.layout.kind == "custom":
            return [(f"batch tensor {i}", t) for i, t in enumerate(tensors_in(batch))]
        args, kwargs, y, w = self.split(batch)
        named = [("inputs" if len(args) == 1 and not kwargs else f"inputs[{i}]", a) for i, a in enumerate(args)]
        named += [(f"batch[{k!r}]", v) for k, v in kwargs.items() if v is not y]
        return [(n, t) for n, t in named if isinstance(t, torch.Tensor)] + \
            [(f"{n}.{i}", t) for n, v in named if not isinstance(v, torch.Tensor)
             for i, t in enumerate(tensors_in(v))]

    # -- calls --------------------------------------------------------------------------
    def _pair(self, model, batch) -> StepResult:
        x, y = batch
        out = model(x)
        if type(out) is not torch.Tensor:
            pred, own = output_parts(out)
            loss = own if self.use_model_loss else self.loss_fn(pred, y)
            return StepResult(loss, pred, y, y.shape[0])
        return StepResult(self.loss_fn(out, y), out, y, y.shape[0])

    def _general(self, model, batch) -> StepResult:
        args, kwargs, y, w = self.split(batch)
        pred, own = output_parts(model(*args, **kwargs))
        if self.use_model_loss:
            loss = own
            if loss is None:
                raise ValueError("the model returned no loss for this batch (it did for the first one); "
                                 "pass loss= to have nb_trainer compute it")
        elif w is not None:
            loss = self.weighted_loss(pred, y, w)
        else:
            loss = self.loss_fn(pred, y)
        return StepResult(loss, pred, y, y.shape[0] if y.dim() else batch_size_of(batch))

    def _custom_parts(self, model, batch) -> tuple:
        got = self.custom(model, batch)
        if isinstance(got, torch.Tensor):
            return got, None, None
        if isinstance(got, (tuple, list)) and len(got) == 3:
            loss, out, target = got
            return loss, output_parts(out)[0] if out is not None else None, target
        raise TypeError(f"step returned {describe_output(got)}; step(model, batch) must return a scalar "
                        "loss tensor, or (loss, outputs, targets)")

    def _custom(self, model, batch) -> StepResult:
        loss, pred, target = self._custom_parts(model, batch)
        n = target.shape[0] if isinstance(target, torch.Tensor) and target.dim() else batch_size_of(batch)
        return StepResult(loss, pred, target, n or 1)


def check_step_result(result: StepResult, what: str) -> None:
    """Raise a clear error when a step's loss is not a finite-shaped scalar tensor."""
    loss = result.loss
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{what} gave a loss of type {type(loss).__name__}; it must be a scalar torch tensor")
    if loss.numel() != 1:
        raise ValueError(f"{what} gave a loss of shape {tuple(loss.shape)}; it must be a scalar (one value): "
                         "reduce it, e.g. with .mean()")
    if not loss.is_floating_point():
        raise TypeError(f"{what} gave a loss of dtype {loss.dtype}; it must be a floating-point tensor")


def evaluate(step: Step, model, batches, task, device, prefix: str = "val_", autocast=None) -> dict:
    """Loss and task metrics of ``model`` over ``batches`` (eval mode, no gradients).

    ``task``: a :class:`~nb_trainer.data.TaskInfo`. The loss is the mean over examples
    (each batch weighted by its size); causal LMs also get perplexity. ``autocast``: a
    context-manager factory (the run's mixed precision), or None.
    """
    was_training = model.training
    model.eval()
    acc = metrics_for(task.task, task.n_classes, device)
    loss_sum: Any = None
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if autocast is None:
                    r = step(model, batch)
                else:
                    with autocast():
                        r = step(model, batch)
                batch_loss = r.loss.detach().float() * r.n
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                n += r.n
                if acc is not None and r.pred is not None:
                    acc.update(r.pred.float() if r.pred.dtype in (torch.float16, torch.bfloat16) else r.pred,
                               r.target)
    finally:
        model.train(was_training)
    loss = float(loss_sum) / n if n else float("nan")
    result = {prefix + "loss": loss}
    if acc is not None:
        result.update(acc.compute(prefix))
    if task.task == "causal_lm":
        result[prefix + "perplexity"] = math.exp(min(loss, 700.0)) if math.isfinite(loss) else float("nan")
    return result
