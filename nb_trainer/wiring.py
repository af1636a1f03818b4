"""Connecting a model to its data, once, when the Trainer is made.

From the first training batches and the model this decides the batch layout,
runs the model on a few examples of the training and the validation data (a
feature mismatch is an error here, in the caller's thread, not after an
epoch), infers the task, picks the loss (ours by task, the model's own
``loss`` output, or the user's), and builds the :class:`~nb_trainer.step.Step`
that every later path shares. Every mistake it can see raises ``TypeError`` /
``ValueError`` naming what was given and what is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import door
from .data import TaskInfo, cat_batches, infer_task, slice_batch
from .metrics import LOSSES, per_example, resolve_loss
from .tasks import task_of
from .step import Layout, Step, StepResult, check_step_result, describe_output, is_causal_lm, make_layout, output_parts

PROBE_EXAMPLES = 8  # examples the model is run on at the door


@dataclass
class Wiring:
    step: Step
    task: TaskInfo
    loss_name: str           # a LOSSES name, the user's callable's name, "model" or "custom"
    loss_from: str           # "ours", "model" (its own loss output), "user" (loss=) or "step" (step=)
    targets: Optional[torch.Tensor]  # the training sample's targets (baselines, data checks), or None
    output: Optional[torch.Tensor] = None  # the model's prediction on the first examples (data checks)

    @property
    def layout(self) -> Layout:
        return self.step.layout


def _run_model(model, fn, what: str, layout: Layout):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn()
    except (TypeError, ValueError) as e:
        if layout.kind == "custom" and str(e).startswith("step returned"):
            raise
        raise type(e)(f"the model could not run on the {what} batch ({layout.describe()}): "
                      f"{type(e).__name__}: {e}") from None
    except (RuntimeError, IndexError, KeyError, AttributeError, AssertionError) as e:
        raise ValueError(f"the model could not run on the {what} batch ({layout.describe()}): "
                         f"{type(e).__name__}: {e}") from None
    finally:
        model.train(was_training)


def targets_of(step: Step, batches: list) -> Optional[torch.Tensor]:
    """The targets of ``batches`` as one tensor (flattened per batch when they do not line up,
    e.g. sequences padded to a different length per batch); None for a custom step."""
    if step.layout.kind == "custom":
        return None
    ys = [step.split(b)[2] for b in batches]
    ys = [y for y in ys if isinstance(y, torch.Tensor)]
    if not ys:
        return None
    joined = cat_batches(ys)
    if joined is None:
        joined = torch.cat([y.reshape(-1) for y in ys])
    return joined


def inputs_of(step: Step, batches: list) -> list:
    """``[(name, tensor)]`` of every input tensor of ``batches``, joined across batches where they line up."""
    per_batch = [step.inputs_of(b) for b in batches]
    names = [n for n, _ in per_batch[0]]
    joined = []
    for i, name in enumerate(names):
        parts = [b[i][1] for b in per_batch if len(b) > i]
        t = cat_batches(parts)
        joined.append((name, t if t is not None else torch.cat([p.reshape(-1) for p in parts])))
    return joined


def wire(model: torch.nn.Module, train_batches: list, val_batches: Optional[list], task: str = "auto",
         loss=None, target: Optional[str] = None, inputs: Optional[int] = None,
         step: Optional[Callable] = None) -> Wiring:
    """Decide how ``model`` trains on batches like ``train_batches``; see the module doc."""
    if step is not None and not callable(step):
        raise TypeError(f"step={step!r} is not accepted: step must be a function step(model, batch) returning "
                        "the loss, or (loss, outputs, targets)")
    causal = is_causal_lm(model) or task == "causal_lm"
    first = train_batches[0]
    layout = make_layout(model, first, inputs=inputs, target=target, custom=step is not None, causal_lm=causal)
    probe = slice_batch(first, PROBE_EXAMPLES)
    # the first look passes labels to a model that takes them: a Hugging Face model then returns its own loss
    looking = Step(layout, use_model_loss=True, custom=step)
    if step is not None:
        loss_t, pred, probe_target = _run_model(model, lambda: looking._custom_parts(model, probe), "training", layout)
        check_step_result(StepResult(loss_t, pred, probe_target, 1), "step")
        raw_loss = loss_t
    else:
        out = _run_model(model, lambda: looking.forward(model, probe), "training", layout)
        pred, raw_loss = output_parts(out)
        if pred is None:
            raise TypeError(f"the model returned {describe_output(out)}; nb_trainer needs a tensor, a tuple or "
                            "list whose first element is the prediction, or a dict / ModelOutput with 'logits'")
        probe_target = looking.split(probe)[2]
    targets = targets_of(looking, train_batches)
    if step is not None and isinstance(probe_target, torch.Tensor):
        targets = probe_target
    info = infer_task(task, targets if targets is not None else probe_target, pred, causal_lm=causal)

    use_model_loss = step is None and loss is None and isinstance(raw_loss, torch.Tensor)
    if step is not None:
        loss_name, loss_fn, loss_from = "custom", None, "step"
    elif use_model_loss:
        loss_name, loss_fn, loss_from = task_of(info.task).loss, None, "model"
    else:
        if info.task == "custom":
            raise ValueError("the batches have no targets the metrics can read; pass step=fn(model, batch)")
        loss_name, loss_fn = resolve_loss(loss, info.task)
        loss_from = "ours" if loss is None or isinstance(loss, str) else "user"
    weighted = None
    if layout.weighted:
        weighted = per_example(loss_name)
        if weighted is None:
            raise ValueError(f"the batches carry sample weights (x, y, sample_weight), which need a built-in loss; "
                             f"loss={loss!r} cannot be weighted per example: use one of "
                             + ", ".join(k for k in LOSSES if per_example(k)) + ", or step=")
    built = Step(layout, loss_fn=loss_fn, use_model_loss=use_model_loss, custom=step, weighted_loss=weighted)
    if loss_from == "user":
        # the user's loss callable must give one number: found here, not in autograd
        two = slice_batch(first, 2)
        out2 = _run_model(model, lambda: looking.forward(model, two), "training", layout)
        door.check_loss(loss, loss_fn, output_parts(out2)[0], looking.split(two)[2])
    elif loss_from == "model":
        result = _run_model(model, lambda: built(model, probe), "training", layout)
        check_step_result(result, "the model's own loss output")
    if val_batches:
        vprobe = slice_batch(val_batches[0], PROBE_EXAMPLES)
        try:
            vlayout = make_layout(model, val_batches[0], inputs=inputs, target=target, custom=step is not None,
                                  causal_lm=causal)
        except (TypeError, ValueError) as e:
            raise type(e)(f"val: {e}") from None
        shape_of = lambda lay: (lay.kind, lay.n_inputs, lay.weighted, lay.target_key)  # noqa: E731
        if shape_of(vlayout) != shape_of(layout):
            raise ValueError(f"val batches are laid out as {vlayout.describe()} but train batches as "
                             f"{layout.describe()}; give both splits the same structure")
        if step is not None:
            _run_model(model, lambda: built._custom(model, vprobe), "val", layout)
        else:
            _run_model(model, lambda: built.forward(model, vprobe), "val", layout)
    return Wiring(built, info, loss_name, loss_from, targets, pred if isinstance(pred, torch.Tensor) else None)
