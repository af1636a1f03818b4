"""The event bus: publishing never waits for a subscriber, important events are
never dropped, a broken subscriber does not stop delivery."""
from __future__ import annotations

import threading
import time

import pytest

import nb_trainer as nbt
from nb_trainer import events as ev


@pytest.fixture
def bus():
    b = ev.EventBus()
    yield b
    b.close()


def test_publish_does_not_wait_for_a_subscriber_that_sleeps(bus):
    release = threading.Event()
    got = []

    def sleepy(event):
        got.append(event)
        release.wait(1.0)  # 1 s per event, unless the test ends first

    sub = bus.subscribe(sleepy)
    t0 = time.perf_counter()
    for i in range(200):
        bus.publish(ev.LOGGED, None, i=i)
    elapsed = time.perf_counter() - t0
    release.set()
    assert elapsed < 0.2, f"200 publishes took {elapsed:.3f} s"
    sub.close()


def test_epoch_and_run_events_are_never_dropped(bus):
    got = []
    gate = threading.Event()

    def slow(event):
        gate.wait(5)
        got.append(event)

    sub = bus.subscribe(slow, max_pending=4)
    bus.publish(ev.RUN_STARTED, None)
    for epoch in range(1, 21):
        for i in range(30):
            bus.publish(ev.LOGGED, None, i=i)
        bus.publish(ev.EPOCH_ENDED, None, epoch=epoch)
    bus.publish(ev.RUN_ENDED, None)
    gate.set()
    assert sub.flush(timeout=5)
    kinds = [e.kind for e in got]
    assert kinds[0] == ev.RUN_STARTED and kinds[-1] == ev.RUN_ENDED
    assert [e.data["epoch"] for e in got if e.kind == ev.EPOCH_ENDED] == list(range(1, 21))
    assert sub.dropped > 0  # the queue did overflow: "logged" events were what went
    assert kinds.count(ev.LOGGED) == 20 * 30 - sub.dropped


def test_logged_events_keep_their_order_when_some_are_dropped(bus):
    got = []
    gate = threading.Event()
    sub = bus.subscribe(lambda e: (gate.wait(5), got.append(e.data["i"])), max_pending=8)
    for i in range(100):
        bus.publish(ev.LOGGED, None, i=i)
    gate.set()
    sub.flush(timeout=5)
    assert got == sorted(got) and got[-1] == 99


def test_a_subscriber_that_raises_keeps_receiving_and_others_too(bus, caplog):
    good, bad_calls = [], []

    def broken(event):
        bad_calls.append(event.kind)
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(good.append)
    for kind in (ev.RUN_STARTED, ev.LOGGED, ev.EPOCH_ENDED, ev.RUN_ENDED):
        bus.publish(kind, None)
    bus.flush(timeout=5)
    assert bad_calls == [ev.RUN_STARTED, ev.LOGGED, ev.EPOCH_ENDED, ev.RUN_ENDED]
    assert [e.kind for e in good] == bad_calls
    assert "subscriber bug" in caplog.text


def test_kinds_filter_what_a_subscriber_receives(bus):
    got = []
    bus.subscribe(got.append, kinds=[ev.EPOCH_ENDED])
    bus.publish(ev.LOGGED, None)
    bus.publish(ev.EPOCH_ENDED, None, epoch=1)
    bus.flush(timeout=5)
    assert [e.kind for e in got] == [ev.EPOCH_ENDED]


def test_unsubscribe_ends_the_delivery_thread(bus):
    before = threading.active_count()
    sub = bus.subscribe(lambda e: None)
    assert threading.active_count() == before + 1
    bus.unsubscribe(sub)
    assert threading.active_count() == before
    bus.publish(ev.LOGGED, None)  # nobody left: nothing to do, nothing raised


def test_a_slow_subscriber_does_not_slow_training(small_digits, make_mlp):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    t.start(epochs=1)  # warm-up: torch imports its compiler stack on the first optimizer (~1 s)
    t.wait()
    release = threading.Event()
    got = []
    t.events.subscribe(lambda e: (got.append(e.kind), release.wait(1.0)))
    t0 = time.perf_counter()
    run = t.start(epochs=5, batch_size=32)
    t.wait(timeout=10)
    elapsed = time.perf_counter() - t0
    assert run.status == "finished"
    assert elapsed < 1.0, f"5 tiny epochs took {elapsed:.2f} s with a subscriber sleeping 1 s per event"
    release.set()
    t.events.flush(timeout=5)
    assert got.count(ev.EPOCH_ENDED) == 5 and got[-1] == ev.RUN_ENDED
    t.close()


class _Run:
    status = "running"


def test_logged_events_wait_out_the_latency_and_go_together_in_order(bus):
    """A subscriber with a latency gets "logged" events in batches (one wake of its thread for many), the
    other kinds at once with the "logged" ones before them, all in order, and flush delivers what waits."""
    got, wakes, last = [], [], [0.0]

    def on(event):
        now = time.monotonic()
        if now - last[0] > 0.05:
            wakes.append(now)
        last[0] = now
        got.append((event.kind, event.data.get("i")))

    run = _Run()
    bus.subscribe(on, latency=0.3)
    t0 = time.monotonic()
    for i in range(20):
        bus.publish(ev.LOGGED, run, i=i)
    time.sleep(0.1)
    assert got == []                                    # still waiting
    bus.publish(ev.EPOCH_ENDED, run, i=20)              # not coalescable: now, with what waited
    deadline = time.monotonic() + 5
    while len(got) < 21 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [(ev.LOGGED, i) for i in range(20)] + [(ev.EPOCH_ENDED, 20)]
    assert time.monotonic() - t0 < 0.3 + 0.25
    got.clear()
    for i in range(10):
        bus.publish(ev.LOGGED, run, i=i)
        time.sleep(0.02)
    bus.flush(timeout=5)                                 # flush does not wait the latency out
    assert [i for _, i in got] == list(range(10))
    got.clear()
    t1 = time.monotonic()
    for i in range(10):
        bus.publish(ev.LOGGED, run, i=i)
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [i for _, i in got] == list(range(10))
    assert last[0] - t1 >= 0.25                          # they waited, and came in one go


def test_a_pause_or_resume_is_delivered_at_once_and_carries_its_time_and_status(bus):
    got = []
    run = _Run()
    bus.subscribe(lambda e: got.append((e.status, e.at, time.time())), latency=5.0)
    bus.publish(ev.LOGGED, run)
    run.status = "paused"
    t = time.time()
    bus.publish(ev.LOGGED, run)
    run.status = "running"
    deadline = time.monotonic() + 2
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s for s, _, _ in got] == ["running", "paused"]      # the status when published, not now
    assert abs(got[1][1] - t) < 0.05 and got[1][2] - t < 1.0    # at once, not 5 s later


def test_bad_kinds_and_latency_are_refused_by_name(bus):
    with pytest.raises(ValueError, match="kinds.*epoch_end"):
        bus.subscribe(print, kinds=["epoch_end"])
    with pytest.raises(ValueError, match="latency"):
        bus.subscribe(print, latency=-1)
