"""Sampled diagnostics the health rules read: update/weight ratios and dead units.

- **update ratio** ‖ΔW‖/‖W‖ of every weight matrix over one optimizer step
  (a copy of the matrices before the step and two norms after it);
- **dead units**: a forward pass of a fixed probe batch (the first
  ``PROBE_BATCH`` training examples) with hooks on the ReLU modules; a unit
  (feature or channel) is dead when it outputs 0 for every probe example.

Probes cost a copy or a forward pass, so they are spaced by time: at least
once every ``PROBE_SECONDS`` and at the start of each epoch while they take
under ``PROBE_SHARE`` of the time, plus the engine's fixed epoch-end probes.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from .data import batch_size_of, cat_batches, slice_batch

PROBE_SECONDS = 1.0
PROBE_SHARE = 0.01
PROBE_BATCH = 256

_RELU = (nn.ReLU, nn.ReLU6)


class Probes:
    def __init__(self, model: nn.Module, step, params: list, param_names: list):
        self.model = model
        self.step = step
        self.matrices = [p for p in params if p.dim() > 1]
        self.matrix_names = [n for n, p in zip(param_names, params) if p.dim() > 1]
        self.batch = None          # the fixed probe batch
        self._batch_n = 0
        self._full = False         # the batch has PROBE_BATCH examples, or cannot grow (ragged batches)
        self.last_t = 0.0
        self.cost = 0.0
        self.last_dead_t = -PROBE_SECONDS  # the first probe looks for dead units too
        self.count = 0

    # -- the probe batch ----------------------------------------------------------------
    def collect(self, batch) -> None:
        """Grow the probe batch from the first epoch's batches, up to PROBE_BATCH examples even
        when batches are smaller: a unit is called dead when it outputs 0 on all of them, which a
        few examples would say by chance."""
        if self._full:
            return
        n = batch_size_of(batch)
        if n == 0:
            self._full = True
            return
        part = slice_batch(batch, PROBE_BATCH - self._batch_n, n)
        grown = part if self.batch is None else cat_batches([self.batch, part])
        if grown is None:  # sequences padded per batch do not line up: keep what there is
            self._full = True
            return
        self.batch = _detach(grown)
        self._batch_n = batch_size_of(self.batch)
        self._full = self._batch_n >= PROBE_BATCH

    def stop_collecting(self) -> None:
        self._full = True

    # -- timing --------------------------------------------------------------------------
    def epoch_due_time(self) -> float:
        """When this epoch's first probe is due: at once before any probe; else once the last
        probe's cost is under PROBE_SHARE of the time since it, and PROBE_SECONDS after it at the latest."""
        if not self.count:
            return 0.0
        return self.last_t + min(PROBE_SECONDS, self.cost / PROBE_SHARE)

    def dead_units_due(self) -> bool:
        return time.perf_counter() - self.last_dead_t >= PROBE_SECONDS

    # -- taking one ------------------------------------------------------------------------
    def before_update(self) -> list:
        return [w.detach().clone() for w in self.matrices]

    def take(self, step_no: int, epoch: int, before: Optional[list], dead_units: bool = True) -> dict:
        t0 = time.perf_counter()
        ratios = []
        if before:
            deltas = torch._foreach_sub([w.detach() for w in self.matrices], before)
            num = torch.stack(torch._foreach_norm(deltas))
            den = torch.stack(torch._foreach_norm(before)).clamp(min=1e-12)
            ratios = (num / den).tolist()
        dead = self._dead_units() if dead_units else {}
        probe = {"step": step_no, "epoch": epoch, "update_ratio": dict(zip(self.matrix_names, ratios)),
                 "dead_relu": dead, "examples": self._batch_n}
        self.count += 1
        self.last_t = time.perf_counter()
        self.cost = self.last_t - t0
        return probe

    def _dead_units(self) -> dict:
        model = self.model
        relus = [(n, m) for n, m in model.named_modules() if isinstance(m, _RELU)]
        if not relus or self.batch is None:
            return {}
        self.last_dead_t = time.perf_counter()
        outs = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: outs.__setitem__(name, out))
                 for n, m in relus]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.step.forward(model, self.batch)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        dead = {}
        # (N, C, L) from a Conv1d has its units (channels) at dim 1; (N, T, D) from a sequence model last
        units_last = not any(isinstance(m, nn.Conv1d) for m in model.modules())
        for name, out in outs.items():
            if not isinstance(out, torch.Tensor):
                continue
            o = out.detach()
            if o.dim() >= 2:
                # a unit (feature or channel) is dead when it outputs 0 for every example (and position)
                units = (o.reshape(-1, o.shape[-1]).transpose(0, 1) if o.dim() == 3 and units_last
                         else o.transpose(0, 1).reshape(o.shape[1], -1))
                dead[name] = {"dead_units": float((units <= 0).all(1).float().mean()),
                              "zero_outputs": float((o <= 0).float().mean()),
                              "units": int(units.shape[0])}
        return dead


def _detach(batch):
    if isinstance(batch, torch.Tensor):
        return batch.detach()
    if isinstance(batch, dict):
        return {k: _detach(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        items = [_detach(v) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch
