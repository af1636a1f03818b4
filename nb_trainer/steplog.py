"""Per-step values on their way to the host: gradient norms, sampled, and the pending buffer.

The engine never reads a value back from the device at a step (that would
stall a GPU once a step). Each step's loss, its per-parameter gradient norms
(when sampled) and its batch size are appended here as device tensors; at a
log the buffer is brought to the host in one transfer.

Per-layer gradient norms (``torch._foreach_norm``) read every gradient once:
about 3% of a step of the digits MLP on one CPU thread, well under 1% of a
step of a larger model or on a GPU. :class:`NormSampler` times them over the
first steps of a run and, when they cost more than ``NORM_SHARE`` of a step,
takes them every k-th step (k <= ``NORM_MAX_STRIDE``) instead of every step.
The loss is still read at every step (the epoch's mean, divergence). With
gradient clipping the norm is needed, so taken, at every step.
"""
from __future__ import annotations

import math
import time

import torch

NORM_SHARE = 0.005
NORM_MAX_STRIDE = 8
NORM_CALIBRATION = (5, 25)  # steps [5, 25) of a run are timed: after the first, slower, steps


class NormSampler:
    """Takes the per-parameter gradient norms, every step or every k-th (see the module doc)."""

    def __init__(self, params: list, device):
        self.params = params
        self.stride = 1
        self.stride_fixed = False   # keep every step's norm (float16: a skipped step shows in it)
        self._zero = torch.zeros((), device=device)
        self._seconds = 0.0
        self._t0 = 0.0

    def norms(self) -> list:
        """The current gradients' norms: one 0-d tensor per parameter, on the device. A parameter
        the loss did not reach has no gradient: 0, so the norms always line up with the names."""
        if not self.params:
            return [self._zero]
        return torch._foreach_norm([p.grad if p.grad is not None else self._zero for p in self.params])

    def take(self, step: int, needed: bool):
        """The norms of this step when it is sampled (or ``needed``: clipping), else None."""
        if not needed and step % self.stride:
            return None
        start, end = NORM_CALIBRATION
        if start <= step < end:
            t = time.perf_counter()
            norms = self.norms()
            self._seconds += time.perf_counter() - t
            return norms
        return self.norms()

    def step_started(self, step: int) -> None:
        if step == NORM_CALIBRATION[0]:
            self._t0 = time.perf_counter()

    def step_done(self, step: int) -> None:
        """``step``: steps done so far. At the end of the timed window, choose the stride."""
        start, end = NORM_CALIBRATION
        if step != end or self.stride_fixed:
            return
        steps = end - start
        step_seconds = (time.perf_counter() - self._t0) / steps
        share = self._seconds / steps / max(step_seconds, 1e-9)
        self.stride = max(1, min(NORM_MAX_STRIDE, math.ceil(share / NORM_SHARE - 1e-9)))


class PendingSteps:
    """Steps trained since the last log, their values still on the device."""

    def __init__(self):
        self.losses: list = []    # every step's loss (0-d tensors)
        self.layers: list = []    # per sampled step: the list of per-parameter gradient norms
        self.sampled: list = []   # which pending steps have norms (indices into losses)
        self.sizes: list = []     # examples per step
        self.lrs: list = []       # the lr each step was taken with (a schedule moves it every step)

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, layer_norms, size: int, lr: float) -> None:
        self.losses.append(loss.detach())
        if layer_norms is not None:
            self.layers.append(layer_norms)
            self.sampled.append(len(self.losses) - 1)
        self.sizes.append(size)
        self.lrs.append(lr)

    def read(self, latest_norms) -> tuple:
        """Bring everything to the host in one transfer: ``(losses, sampled, norms, per_layer,
        sizes, lrs)``. ``latest_norms()``: the norms of the latest step, taken when it was not sampled
        (its gradients are still in place), so the history always ends at the latest step."""
        n = len(self.losses)
        if not self.sampled or self.sampled[-1] != n - 1:
            self.layers.append(latest_norms())
            self.sampled.append(n - 1)
        m = len(self.sampled)
        losses_t = torch.stack(self.losses).float()
        layers = torch.stack([t for step in self.layers for t in step]).view(m, -1).float()
        # every loss, then per sampled step its global and per-layer norms
        flat = torch.cat([losses_t, torch.linalg.vector_norm(layers, dim=1), layers.reshape(-1)]).tolist()
        width = layers.shape[1]
        per_layer = [flat[n + m + i * width:n + m + (i + 1) * width] for i in range(m)]
        out = (flat[:n], self.sampled, flat[n:n + m], per_layer, self.sizes, self.lrs)
        self.__init__()
        return out
