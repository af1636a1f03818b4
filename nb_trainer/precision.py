"""Mixed precision: autocast around the forward pass and the loss, and float16's gradient scaler.

- ``"32"``: nothing changes.
- ``"bf16"``: ``torch.autocast(dtype=torch.bfloat16)`` on the CPU or CUDA. bfloat16 has
  float32's range, so no scaler is needed.
- ``"16"``: ``torch.autocast(dtype=torch.float16)`` with a ``torch.amp.GradScaler``, CUDA only
  (float16 autocast on a CPU is slow and its range would need the scaler too). The
  gradients are unscaled before anything reads them, so gradient norms, clipping and the
  health rules see true values; a step the scaler skips (an overflow in the scaled
  backward pass) shows as a non-finite norm, which the engine leaves out of the
  history instead of calling it an exploding gradient.
"""
from __future__ import annotations

import contextlib

import torch


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ``ValueError`` at the door when ``precision`` cannot run on ``device``."""
    if precision == "16" and device.type != "cuda":
        raise ValueError(f"precision='16' is not accepted on device {str(device)!r}: float16 mixed precision needs "
                         "a CUDA GPU (its gradient scaler is CUDA's); on this device use precision='bf16' "
                         "(bfloat16 autocast, no scaler needed) or '32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' is not accepted: this GPU does not support bfloat16; use '16' or '32'")


class Precision:
    def __init__(self, precision: str, device: torch.device):
        check_precision(precision, device)
        self.mode = precision
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "16" else None

    @property
    def scaled(self) -> bool:
        return self.scaler is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> None:
        """Bring the gradients back to their true scale (before norms and clipping read them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)   # skipped when the unscaled gradients hold Inf/NaN
            self.scaler.update()
        else:
            optimizer.step()
