"""Hooks into a run: a base class whose hooks do nothing, and one module per behaviour."""
from .base import Callback, is_improvement
from .early_stopping import EarlyStopping

__all__ = ["Callback", "EarlyStopping", "is_improvement"]
