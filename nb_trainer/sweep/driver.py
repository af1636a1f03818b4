"""The driver's side of a sweep: Tune's results become Run records, written to the store from here.

:class:`TrialResults` is a ``ray.tune.Callback``: Tune calls it on the thread that runs
``Tuner.fit()`` with every trial's start, each reported epoch, its end or its error. It
hands them to the :class:`~nb_trainer.sweep.sweep.Sweep`, which mirrors each trial as a
:class:`~nb_trainer.Run` (the same fields the panel, the runs table and the store read)
and writes it to the Trainer's store: one writer, on the driver; trials never open the
SQLite file. :class:`StopSweep` is the ``Stopper`` that ends every trial and starts no new
one once ``sweep.stop()`` was called; :class:`Quiet` keeps Tune's progress out of the cells.

Imports Ray Tune: it is imported only when a sweep starts.
"""
from __future__ import annotations

import threading

from ray.tune import Callback, ProgressReporter, Stopper
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback


class TrialResults(Callback):
    """Forwards Tune's trial events to the sweep (on ``Tuner.fit()``'s thread)."""

    def __init__(self, sweep):
        self.sweep = sweep

    def __getstate__(self):
        # Tune pickles its run config into the experiment's state; the live sweep stays here
        return {"sweep": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.sweep._trial_started(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.sweep._trial_result(trial.trial_id, dict(trial.config), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sweep._trial_ended(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = None
        try:
            error = trial.get_pickled_error() or trial.get_error()
        except (OSError, ValueError, TypeError) as e:   # the error file could not be read back
            error = RuntimeError(f"the trial failed on its worker; its error could not be read ({e})")
        self.sweep._trial_ended(trial.trial_id, error or RuntimeError("the trial failed on its worker"))


class StopSweep(Stopper):
    """Stop every trial, and start no new one, once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.event = threading.Event()

    def __call__(self, trial_id, result) -> bool:
        return self.event.is_set()

    def stop_all(self) -> bool:
        return self.event.is_set()


class Quiet(ProgressReporter):
    """Tune's progress reporter, saying nothing: the panel and the runs show a sweep's progress.

    Tune's own notebook reporter would display an empty HTML output at once, with
    ``clear_output``, into whatever cell is running when the sweep's Tuner starts (wiping it),
    then a status table."""

    def setup(self, *args, **kwargs):
        pass

    def should_report(self, trials, done: bool = False) -> bool:
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        pass


class _NoLog:
    """Takes the place of one of Tune's default result loggers (CSV, JSON, TensorBoard), writing nothing.

    Tune adds each of them unless a callback of its type is given. The sweep's results go to the
    run store, and the loggers' files to a folder deleted afterwards; writing them per result cost
    the driver about 13 ms of every trial's report round trip here (19 ms median with them, 6 ms
    without), which a trial waits for at each epoch."""

    def __init__(self):    # no super().__init__(): the TensorBoard logger's imports tensorboardX
        pass

    def setup(self, *args, **kwargs):
        pass

    def log_trial_start(self, trial):
        pass

    def log_trial_restore(self, trial):
        pass

    def log_trial_save(self, trial):
        pass

    def log_trial_result(self, iteration, trial, result):
        pass

    def log_trial_end(self, trial, failed: bool = False):
        pass

    def on_experiment_end(self, trials, **info):
        pass


class NoCSV(_NoLog, CSVLoggerCallback):
    pass


class NoJSON(_NoLog, JsonLoggerCallback):
    pass


class NoTensorBoard(_NoLog, TBXLoggerCallback):
    pass


NO_LOGGERS = (NoCSV, NoJSON, NoTensorBoard)
