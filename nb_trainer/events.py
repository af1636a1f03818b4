"""A small thread-safe publish/subscribe for run events.

The training thread publishes; subscribers (the panel, the store, tests)
receive on a thread of their own, so a slow subscriber never blocks
training. Each subscriber has a bounded queue: when it falls too far behind,
the oldest *coalescable* events ("logged") are dropped first, never the
"epoch_ended" or "run_*" ones.

A subscriber may take only some kinds, and may let "logged" events wait up to
``latency`` seconds to be delivered together with what follows: a fast run
logs dozens of times a second, and each delivery wakes a thread in the
training's process (the panel's refresh only needs a few a second). Any other
kind, and a "logged" event whose run's status changed (paused, resumed), is
delivered at once, with the "logged" events before it, in order.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

RUN_STARTED = "run_started"
LOGGED = "logged"
EPOCH_ENDED = "epoch_ended"
WARNING = "warning"
RUN_ENDED = "run_ended"
KINDS = (RUN_STARTED, LOGGED, EPOCH_ENDED, WARNING, RUN_ENDED)
_COALESCABLE = (LOGGED,)


@dataclass
class Event:
    kind: str
    run: Any
    data: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)      # when it was published (time.time())
    status: Any = None                                # the run's status then


class Subscription:
    """One subscriber's queue and delivery thread. ``close()`` ends it."""

    def __init__(self, callback: Callable[[Event], None], kinds, max_pending: int, latency: float = 0.0):
        self.callback = callback
        self.kinds = frozenset(kinds) if kinds else frozenset(KINDS)
        self._pending: collections.deque[Event] = collections.deque()
        self._max = max_pending
        self._latency = latency
        self._due: float | None = None      # when what is pending is delivered (monotonic; None: nothing is)
        self._status = None                 # the run's status in the latest event
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._deliver, name="nbt-events", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        if event.kind not in self.kinds:
            return
        with self._cond:
            if self._closed:
                return
            if len(self._pending) >= self._max:
                for i, old in enumerate(self._pending):
                    if old.kind in _COALESCABLE:
                        del self._pending[i]
                        self.dropped += 1
                        break
                else:
                    if event.kind in _COALESCABLE:
                        self.dropped += 1
                        return
            self._pending.append(event)
            changed = self._status is not None and event.status != self._status
            self._status = event.status
            if self._latency > 0 and event.kind in _COALESCABLE and not changed:     # a pause or resume goes at once
                if self._due is None:
                    self._due = time.monotonic() + self._latency
                    self._cond.notify()         # the delivery thread sleeps until then
                return
            self._due = 0.0
            self._cond.notify()

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._pending:
                        wait = self._due - time.monotonic() if self._due else 0.0
                        if wait <= 0:
                            break
                    else:
                        wait = None
                    self._cond.wait(wait)
                if self._closed and not self._pending:
                    return
                event = self._pending.popleft()
                self._due = 0.0 if self._pending else None     # once due, all that is pending goes out
                self._busy = True
            try:
                self.callback(event)
            except Exception:  # a broken subscriber must not take the others down
                log.exception("nb_trainer event subscriber %r failed on %s", self.callback, event.kind)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event has been delivered (those waiting out ``latency`` at once)."""
        with self._cond:
            if self._pending:
                self._due = 0.0
                self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class EventBus:
    """Publish events to every subscriber without waiting for any of them."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[Event], None], kinds=None, max_pending: int = 256,
                  latency: float = 0.0) -> Subscription:
        """Call ``callback(event)`` on a thread of its own for each event of ``kinds`` (default: all).

        ``latency``: seconds a "logged" event may wait, to be delivered with the ones after it."""
        unknown = set(kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds: got {sorted(unknown)!r}; accepted: {', '.join(KINDS)}")
        if not isinstance(latency, (int, float)) or not 0 <= latency <= 10:
            raise ValueError(f"latency: got {latency!r}; accepted: seconds from 0 to 10")
        sub = Subscription(callback, kinds, max_pending, float(latency))
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub.close()

    def publish(self, kind: str, run: Any, **data: Any) -> None:
        event = Event(kind, run, data, status=getattr(run, "status", None))
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.put(event)

    def flush(self, timeout: float | None = 5.0) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.flush(timeout)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()
