"""What an interrupt from the notebook (Kernel › Interrupt, the toolbar's ■) does to training.

SIGINT reaches the kernel's main thread. A cell blocked in ``Trainer.wait()`` gets a
``KeyboardInterrupt`` there; :func:`interrupted` turns it into a :class:`TrainingInterrupted`
after stopping the run, so the cell ends with one line saying what stopped, not a traceback
from ``threading.py``. An interrupt while the kernel is idle is handled by the handler the
notebook layer installs (``nb_trainer.ui.kernel``), which calls :func:`stop_all`.

No IPython here: ``_render_traceback_`` is the hook IPython looks for on an exception.
"""
from __future__ import annotations

import time
from typing import Optional

REASON = "interrupted from the notebook"
STOP_WAIT_S = 5.0      # how long an interrupted wait() waits for its run to end


class TrainingInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` that stopped a run; IPython shows :attr:`message` instead of a traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {self.message}"]


def describe(run) -> str:
    """Where ``run`` was when it stopped: "run 3 stopped at epoch 4/15 (step 180)"."""
    if run is None:
        return "no run was training"
    done = len(run.epochs)
    return (f"the run {'stopped' if run.done else 'is stopping'} after {done}/{run.config.epochs} "
            f"epoch{'s' if run.config.epochs != 1 else ''} (step {run.step})")


def interrupted(trainer, error: Optional[BaseException] = None) -> TrainingInterrupted:
    """Stop ``trainer``'s run for an interrupt, wait briefly for it to end, and say so."""
    run = trainer.current
    # the kernel's handler (nb_trainer.ui.kernel) may have stopped it already, a moment ago
    was_running = trainer.running or (run is not None and run.stop_reason == REASON
                                      and run.ended_at is not None and time.time() - run.ended_at < 10)
    trainer.stop(reason=REASON)
    if run is not None and was_running:
        deadline = time.monotonic() + STOP_WAIT_S
        while not run.done and time.monotonic() < deadline:
            run.wait(0.05)
    if isinstance(error, TrainingInterrupted):
        return error
    what = describe(run) if was_running else "no run was training"
    return TrainingInterrupted(f"{REASON}: {what}; the model keeps the weights it had.")


def stop_all(trainers) -> list:
    """Ask every training Trainer in ``trainers`` to stop (does not wait); returns those asked."""
    asked = []
    for t in list(trainers):
        if t.running or getattr(t, "_debounce", None) is not None:
            t.stop(reason=REASON)
            asked.append(t)
    return asked
