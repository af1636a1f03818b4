"""nb_trainer: tune a PyTorch training run live in a Jupyter notebook.

>>> import nb_trainer as nbt
>>> t = nbt.Trainer(model, (X, y), (X_val, y_val))
>>> run = t.start(lr=1e-3, optimizer="adam", epochs=20)

In a notebook: ``%load_ext nb_trainer`` then ``t = %nbtrain model train val``.
"""
from .config import FIELDS, OPTIMIZERS, TrainConfig
from .health.warning import CODES, HealthWarning
from .run import Run

# Trainer (and with it torch) loads on first use, so that processes which only need
# the light modules (the live-plot renderer process imports nb_trainer.ui.render)
# do not pay torch's import time and ~190 MB of memory.


def __getattr__(name):
    if name == "Trainer":
        from .session import Trainer
        globals()["Trainer"] = Trainer
        return Trainer
    if name in _SWEEP_NAMES:   # the search-space helpers need neither torch nor Ray
        from . import sweep
        globals()[name] = getattr(sweep, name)
        return globals()[name]
    raise AttributeError(f"module 'nb_trainer' has no attribute {name!r}")

_SWEEP_NAMES = ("loguniform", "uniform", "choice")

__version__ = "0.1.0"
__all__ = ["Trainer", "TrainConfig", "HealthWarning", "Run", "load_runs", "FIELDS", "OPTIMIZERS", "CODES",
           "loguniform", "uniform", "choice"]


def load_runs(path=".nb_trainer"):
    """Records of the runs kept in the store at ``path``, from this and earlier kernels."""
    from .store import load_runs as _load_runs
    return _load_runs(path)


def load_ipython_extension(ipython):
    """``%load_ext nb_trainer``: register the magics."""
    from .magics import load_ipython_extension as _load
    _load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as _unload
    _unload(ipython)
