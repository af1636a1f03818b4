"""Threads and memory of the Trainer: cycles of start/stop leave nothing behind."""
from __future__ import annotations

import gc
import os
import threading
import time

import pytest

import nb_trainer as nbt

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def nbt_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("nbt-"))


def cycle(t, i):
    run = t.start(epochs=100, batch_size=16, lr=1e-3 * (1 + i % 3))
    if i % 3 == 1:
        time.sleep(0.001)
    elif i % 3 == 2:
        time.sleep(0.005)
    t.stop()
    got = t.wait(timeout=10)
    assert got is run
    assert run.done and run.status in ("stopped", "finished"), (run.status, run.error)


@pytest.mark.slow
def test_100_start_stop_cycles_leave_no_thread_and_no_memory_behind(small_digits, make_mlp):
    train, val = small_digits
    before_threads = threading.active_count()
    before_names = nbt_threads()
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    for i in range(10):  # warm-up: allocator pools, torch's lazy initialisation
        cycle(t, i)
    gc.collect()
    rss0 = rss_bytes()
    for i in range(100):
        cycle(t, i)
        assert threading.active_count() <= before_threads + 1  # at most the run that is ending
    gc.collect()
    grown = rss_bytes() - rss0
    assert threading.active_count() == before_threads
    assert nbt_threads() == before_names
    assert len(t.runs) == 110
    print(f"RSS growth over 100 cycles: {grown / 2**20:.2f} MiB")
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 100 cycles"


def test_wait_returns_the_run_and_wait_with_timeout_returns_while_running(small_digits, slow_model):
    train, val = small_digits
    t = nbt.Trainer(slow_model(), train, val, store=None)
    run = t.start(epochs=100)
    t0 = time.monotonic()
    assert t.wait(timeout=0.05) is run
    assert time.monotonic() - t0 < 1.0
    assert not run.done and t.running
    t.stop()
    assert t.wait() is run and run.done
    assert not t.running


def test_wait_without_a_run_returns_none(small_digits, make_mlp):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    assert t.wait() is None


def test_training_runs_off_the_callers_thread(small_digits, slow_model):
    train, val = small_digits
    t = nbt.Trainer(slow_model(delay=0.02), train, val, store=None)
    t0 = time.monotonic()
    run = t.start(epochs=100)
    assert time.monotonic() - t0 < 0.5  # returned at once, long before 100 epochs of 20 ms steps
    assert t.running and t._thread is not threading.current_thread()
    t.stop()
    t.wait()
    assert run.status == "stopped"


def test_close_ends_subscriber_threads(small_digits, make_mlp):
    train, val = small_digits
    before = threading.active_count()
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    got = []
    t.events.subscribe(got.append)
    t.start(epochs=1)
    t.wait()
    t.events.flush()
    assert [e.kind for e in got][0] == "run_started" and got[-1].kind == "run_ended"
    t.close()
    assert threading.active_count() == before


def test_restarts_in_quick_succession_start_one_run(small_digits, slow_model, wait_until):
    train, val = small_digits
    t = nbt.Trainer(slow_model(delay=0.002), train, val, store=None)
    first = t.start(epochs=100)
    for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3):  # a dragged slider
        t.restart(delay=0.1, lr=lr)
        time.sleep(0.01)
    assert wait_until(lambda: len(t.runs) == 2, timeout=5)
    time.sleep(0.15)
    assert len(t.runs) == 2
    assert first.status == "stopped"
    second = t.runs[1]
    assert second.config.lr == 5e-3
    t.stop()
    assert t.wait() is second
    assert second.status == "stopped" and not t.running
