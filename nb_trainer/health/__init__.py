"""Training health: data checks before the first step, rules over a run's history."""
from .warning import CODES, HealthWarning

__all__ = ["CODES", "HealthWarning"]
