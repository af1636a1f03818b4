"""What the run store and the LR finder cost, on the digits reference workload.

Reference workload: scikit-learn's digits (standardized, 1497 train / 300 val),
MLP 64-256-256-10, Adam, batch 64, one torch thread.

1. Store cost per epoch (target: <= 1% of the epoch's time).
   Two Trainers on the same data and initial weights, one with a store in a
   temporary folder and one with ``store=None``, train the same run in turn
   (the order alternates each pair). Each epoch's wall time is the interval
   between consecutive epoch ends, taken by a callback placed after the store
   callback, so it includes the store's write. Per pair: the median epoch
   time with the store minus without; reported: the median over pairs,
   relative to the median epoch time; the same with the training thread's
   CPU time (``time.thread_time``), which other processes on a shared
   machine do not disturb. The store's own time in its epoch-end callback is
   also measured directly. The targets are checked on the direct time and
   the CPU-time difference; the wall-clock difference is reported (on a
   loaded shared machine it swings by several ms either way).

2. ``lr_find`` wall time against a 100-step training run (target: <= 1.5x).
   A training run of 4 epochs (96 steps + 4 validations, scaled to 100 steps)
   and ``t.lr_find()`` (default arguments: it stops when the loss blows up),
   plus a full 100-step finder (``end_lr=0.1``, never blows up), alternating,
   median of the pairs.

Run: ``python benchmarks/bench_store.py [--pairs 25] [--epochs 20] [--check]`` (about a minute).
Results also go to ``benchmarks/results/bench_store.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nb_trainer as nbt  # noqa: E402
from nb_trainer.store import StoreCallback  # noqa: E402


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.float64)
    std = x.std(0)
    std[std == 0] = 1.0
    x = torch.tensor((x - x.mean(0)) / std, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:-300], y[:-300]), (x[-300:], y[-300:])


def reference_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


class EpochClock:
    """Time of each epoch end (after the store callback has written it)."""

    def __init__(self):
        self.ends = []
        self.cpu = []

    def on_run_start(self, run, engine):
        self.ends = [time.perf_counter()]
        self.cpu = [time.thread_time()]

    def on_log(self, run, engine, new): ...
    def on_probe(self, run, engine, probe): ...
    def on_run_end(self, run, engine): ...

    def on_epoch_end(self, run, engine, record):
        self.ends.append(time.perf_counter())
        self.cpu.append(time.thread_time())      # this is the training thread: its CPU time

    def epoch_times(self, cpu: bool = False) -> list:
        # the first epoch is warm-up (probes, first allocation): left out
        ends = self.cpu if cpu else self.ends
        return [b - a for a, b in zip(ends[1:], ends[2:])]


class TimedStore(StoreCallback):
    """The store callback, timing its own epoch-end write."""

    def __init__(self, inner: StoreCallback):
        super().__init__(inner.store, inner.trainer)
        self.seconds = []

    def on_epoch_end(self, run, engine, record):
        t0 = time.perf_counter()
        super().on_epoch_end(run, engine, record)
        self.seconds.append(time.perf_counter() - t0)


def bench_store(train, val, pairs: int, epochs: int) -> dict:
    folder = tempfile.mkdtemp(prefix="nbt-bench-store-")
    with_store = nbt.Trainer(reference_model(), train, val, store=folder)
    without = nbt.Trainer(reference_model(), train, val, store=None)
    assert with_store.store is not None
    timed = TimedStore(with_store.callbacks[0])
    with_store.callbacks[0] = timed
    clocks = {}
    for name, t in (("store", with_store), ("none", without)):
        clocks[name] = EpochClock()
        t.callbacks.append(clocks[name])
    for t in (with_store, without):          # warm-up
        t.start(epochs=2, optimizer="adam", lr=1e-3, batch_size=64)
        t.wait()
    diffs, medians, cpu_diffs, cpu_medians = [], {"store": [], "none": []}, [], {"store": [], "none": []}
    for i in range(pairs):
        order = (("store", with_store), ("none", without)) if i % 2 == 0 else (("none", without), ("store", with_store))
        got, got_cpu = {}, {}
        for name, t in order:
            t.start(epochs=epochs, optimizer="adam", lr=1e-3, batch_size=64)
            t.wait()
            got[name] = statistics.median(clocks[name].epoch_times())
            got_cpu[name] = statistics.median(clocks[name].epoch_times(cpu=True))
            medians[name].append(got[name])
            cpu_medians[name].append(got_cpu[name])
        diffs.append(got["store"] - got["none"])
        cpu_diffs.append(got_cpu["store"] - got_cpu["none"])
    epoch = statistics.median(medians["none"])
    epoch_cpu = statistics.median(cpu_medians["none"])
    write = statistics.median(timed.seconds)
    with_store.close()
    without.close()
    return {
        "epoch_seconds_median": epoch,
        "store_minus_none_median_seconds": statistics.median(diffs),
        "store_minus_none_fraction": statistics.median(diffs) / epoch,
        "pair_differences_seconds": diffs,
        "epoch_cpu_seconds_median": epoch_cpu,
        "store_minus_none_cpu_median_seconds": statistics.median(cpu_diffs),
        "store_minus_none_cpu_fraction": statistics.median(cpu_diffs) / epoch_cpu,
        "pair_cpu_differences_seconds": cpu_diffs,
        "store_write_median_seconds": write,
        "store_write_p90_seconds": sorted(timed.seconds)[int(0.9 * len(timed.seconds))],
        "store_write_fraction": write / epoch,
        "pairs": pairs, "epochs_per_run": epochs, "store_folder": folder,
    }


def bench_finder(train, val, pairs: int) -> dict:
    t = nbt.Trainer(reference_model(), train, val, store=None)
    t.lr_find()                                # warm-up
    t.start(epochs=1)
    t.wait()
    train_100, find_default, find_full, steps_default = [], [], [], []
    for i in range(pairs):
        jobs = ["train", "find", "full"] if i % 2 == 0 else ["full", "find", "train"]
        for job in jobs:
            t0 = time.perf_counter()
            if job == "train":
                run = t.start(epochs=4, optimizer="adam", lr=1e-3, batch_size=64)
                t.wait()
                train_100.append((time.perf_counter() - t0) * 100 / run.step)
            elif job == "find":
                result = t.lr_find()
                find_default.append(time.perf_counter() - t0)
                steps_default.append(len(result.lrs))
            else:
                result = t.lr_find(end_lr=0.1)
                assert len(result.lrs) == 100, result.stop_reason
                find_full.append(time.perf_counter() - t0)
    t.close()
    base = statistics.median(train_100)
    return {
        "train_100_steps_seconds": base,
        "lr_find_default_seconds": statistics.median(find_default),
        "lr_find_default_steps": statistics.median(steps_default),
        "lr_find_default_ratio": statistics.median(find_default) / base,
        "lr_find_100_steps_seconds": statistics.median(find_full),
        "lr_find_100_steps_ratio": statistics.median(find_full) / base,
        "pairs": pairs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, val = digits()
    store = bench_store(train, val, args.pairs, args.epochs)
    finder = bench_finder(train, val, max(args.pairs, 5))
    print(f"digits reference, MLP 64-256-256-10, Adam, batch 64, 1 thread; {args.pairs} pairs")
    print(f"  epoch (store=None), median          {store['epoch_seconds_median'] * 1e3:8.2f} ms")
    print(f"  store write per epoch, median        {store['store_write_median_seconds'] * 1e6:8.1f} us"
          f"  = {store['store_write_fraction']:.2%} of the epoch (p90 {store['store_write_p90_seconds'] * 1e6:.0f} us)")
    print(f"  epoch with store - without, median   {store['store_minus_none_median_seconds'] * 1e6:8.1f} us"
          f"  = {store['store_minus_none_fraction']:+.2%}  (pairs: "
          + ", ".join(f"{d * 1e6:+.0f}" for d in store["pair_differences_seconds"]) + " us)")
    print(f"  same, training thread's CPU time     {store['store_minus_none_cpu_median_seconds'] * 1e6:8.1f} us"
          f"  = {store['store_minus_none_cpu_fraction']:+.2%} of {store['epoch_cpu_seconds_median'] * 1e3:.2f} ms (pairs: "
          + ", ".join(f"{d * 1e6:+.0f}" for d in store["pair_cpu_differences_seconds"]) + " us)")
    print(f"  training run, per 100 steps          {finder['train_100_steps_seconds'] * 1e3:8.1f} ms")
    print(f"  lr_find() default ({finder['lr_find_default_steps']:.0f} steps)       "
          f"{finder['lr_find_default_seconds'] * 1e3:8.1f} ms  = {finder['lr_find_default_ratio']:.2f}x")
    print(f"  lr_find(end_lr=0.1), 100 steps       {finder['lr_find_100_steps_seconds'] * 1e3:8.1f} ms"
          f"  = {finder['lr_find_100_steps_ratio']:.2f}x")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_store.json").write_text(json.dumps({"store": store, "lr_find": finder}, indent=2))
    ok = (store["store_write_fraction"] <= 0.01 and store["store_minus_none_cpu_fraction"] <= 0.01
          and finder["lr_find_default_ratio"] <= 1.5 and finder["lr_find_100_steps_ratio"] <= 1.5)
    print("targets met" if ok else "TARGET MISSED")
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
