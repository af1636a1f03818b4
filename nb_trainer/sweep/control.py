"""Stop requests from the driver to running trials, through one small actor in the cluster.

Tune stops a function trainable only when it next reports (an epoch end), which can be
long; so each trial also waits on this actor (a long poll, one pending call per trial)
and, told to stop, ends its run at the next step. The driver stops every trial
(``sweep.stop()``) or one (a trial the scheduler ended early, so that it frees its
worker now rather than an epoch later).

The class is plain Python: :func:`start` makes it a Ray actor, so importing this module
needs no Ray.
"""
from __future__ import annotations

import asyncio
from typing import Optional


class SweepControl:
    """The stop flags of one sweep. Its methods are coroutines: an async actor serves every
    trial's pending ``wait`` at once."""

    def __init__(self) -> None:
        self._all: Optional[str] = None
        self._trials: dict[str, str] = {}
        self._changed: Optional[asyncio.Event] = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def stop(self, trial_id: Optional[str] = None, reason: str = "stopped") -> None:
        """Ask one trial (or, with no id, every trial) to stop."""
        if trial_id is None:
            self._all = self._all or reason
        else:
            self._trials.setdefault(trial_id, reason)
        event, self._changed = self._event(), asyncio.Event()
        event.set()     # wakes every waiter; they look again at the flags

    def _reason(self, trial_id: str) -> Optional[str]:
        return self._trials.get(trial_id) or self._all

    async def wait(self, trial_id: str, timeout: float) -> Optional[str]:
        """The reason ``trial_id`` is to stop, as soon as there is one; None after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._reason(trial_id) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._event().wait(), left)
            except asyncio.TimeoutError:
                return None
        return self._reason(trial_id)


def start():
    """A new control actor (needs no CPU of its own)."""
    import ray
    return ray.remote(num_cpus=0, max_restarts=0)(SweepControl).remote()
