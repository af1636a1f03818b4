"""Stop requests from the driver to running trials, through one small actor in the cluster.

Tune stops a function trainable only when it next reports (an epoch end), which can be
long; so each trial also waits on this actor (a long poll, one pending call per trial)
and, told to stop, ends its run at the next step. The driver stops every trial
(``sweep.stop()``) or one (a trial the scheduler ended early, so that it frees its
worker now rather than an epoch later).

One actor serves every sweep of a Ray connection (:func:`shared`): a sweep's flags are kept
under its id and dropped when it ends. A new actor per sweep was a new worker process per
sweep (an actor cannot share one), which on a local Ray also took one of the idle, preloaded
workers meant for the sweep's first trials; this one has a ``runtime_env`` of its own, so Ray
starts a process for it once, and never gives it an idle worker.

The class is plain Python: :func:`shared` makes it a Ray actor, so importing this module
needs no Ray.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Optional

# keeps this actor's process off the local Ray's idle workers (see cluster.py): they are the trials'
OWN_ENV = {"env_vars": {"NBT_SWEEP_CONTROL": "1"}}

_lock = threading.Lock()
_shared: dict = {}      # {"job": the Ray job id the actor belongs to, "actor": its handle, "up": its first ping}


class SweepControl:
    """The stop flags of every sweep, by sweep id. Its methods are coroutines: an async actor
    serves every trial's pending ``wait`` at once."""

    def __init__(self) -> None:
        self._all: dict[str, str] = {}                  # sweep id -> why all its trials stop
        self._trials: dict[tuple, str] = {}             # (sweep id, trial id) -> why it stops
        self._changed: Optional[asyncio.Event] = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def stop(self, sweep_id: str, trial_id: Optional[str] = None, reason: str = "stopped") -> None:
        """Ask one trial of a sweep (or, with no trial id, every trial of it) to stop."""
        if trial_id is None:
            self._all.setdefault(sweep_id, reason)
        else:
            self._trials.setdefault((sweep_id, trial_id), reason)
        event, self._changed = self._event(), asyncio.Event()
        event.set()     # wakes every waiter; they look again at the flags

    async def forget(self, sweep_id: str) -> None:
        """The sweep ended: its flags go."""
        self._all.pop(sweep_id, None)
        for key in [k for k in self._trials if k[0] == sweep_id]:
            del self._trials[key]

    def _reason(self, sweep_id: str, trial_id: str) -> Optional[str]:
        return self._trials.get((sweep_id, trial_id)) or self._all.get(sweep_id)

    async def wait(self, sweep_id: str, trial_id: str, timeout: float) -> Optional[str]:
        """The reason the trial is to stop, as soon as there is one; None after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._reason(sweep_id, trial_id) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._event().wait(), left)
            except asyncio.TimeoutError:
                return None
        return self._reason(sweep_id, trial_id)

    def ping(self) -> bool:
        return True


def shared():
    """The control actor of this Ray connection (needs no CPU of its own), started on first use."""
    import ray
    job = ray.get_runtime_context().get_job_id()
    with _lock:
        actor = _shared.get("actor") if _shared.get("job") == job else None
        # an actor still starting (its process imports torch like every worker of a local Ray: seconds)
        # is used as it is: calls wait for it, and the sweep's trials need not
        if actor is not None and ray.wait([_shared["up"]], timeout=0)[0]:
            try:
                ray.get(actor.ping.remote(), timeout=10)
            except (ray.exceptions.RayError, TimeoutError):
                actor = None     # it died with its worker: a new one
        if actor is None:
            actor = ray.remote(num_cpus=0, max_restarts=0)(SweepControl).options(runtime_env=OWN_ENV).remote()
            _shared.update(job=job, actor=actor, up=actor.ping.remote())
        return actor
