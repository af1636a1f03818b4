"""The record every health check returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

SEVERITIES = ("info", "warning", "error")

CODES = (
    "nan_loss",
    "exploding_gradients",
    "vanishing_gradients",
    "dead_relu",
    "overfitting",
    "loss_plateau",
    "loss_oscillation",
    "lr_too_high",
    "lr_too_low",
    "underfitting",
    "bad_input_data",
    "label_mismatch",
    "class_imbalance",
    "unscaled_data",
    "probability_outputs",
)


@dataclass
class HealthWarning:
    """Something going wrong in a run, what was seen, and what to do.

    ``fix`` is a dict of ``TrainConfig`` changes that addresses it (empty
    when only a change to the model or data can). A warning is raised once
    per run and code; later sightings update ``message``, ``step`` and
    ``epoch`` and bump ``count``.
    """

    code: str
    severity: str
    message: str
    suggestion: str
    fix: dict = field(default_factory=dict)
    step: Optional[int] = None
    epoch: Optional[int] = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"code={self.code!r} is not a known warning code: one of {', '.join(CODES)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity={self.severity!r}: must be one of {', '.join(SEVERITIES)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "severity": self.severity, "message": self.message,
            "suggestion": self.suggestion, "fix": dict(self.fix), "step": self.step,
            "epoch": self.epoch, "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HealthWarning":
        return cls(**{k: d[k] for k in ("code", "severity", "message", "suggestion", "fix", "step", "epoch", "count") if k in d})

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message} — {self.suggestion}"
