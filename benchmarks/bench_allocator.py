"""What keeping freed memory for the next step (``nb_trainer/allocator.py``) does to training on the CPU.

Each side is a fresh process (the allocator's settings are per process and cannot be undone):
``NBT_KEEP_FREED_MEMORY=0`` (glibc's defaults) against the default (thresholds fixed at the
first CPU run). A process builds a Trainer (``store=None``, one torch thread) and trains one run;
it reports the run's wall time, its epochs' times, and the minor page faults and the system and
user CPU time the process spent during the run (``getrusage``). Pairs alternate which side goes
first; the figures are medians over pairs, with their ranges.

Workloads:

  digits  MLP 64-1024-1024-10 on scikit-learn's digits (1497 train), Adam, batch 32 (the sweep
          benchmark's trial)
  random  MLP 784-512-512-10 on 20k random samples (bench_engine's), Adam, batch 128

Run: ``python benchmarks/bench_allocator.py [--pairs 5] [--epochs 12] [--workload digits random]``.
Results also go to ``benchmarks/results/bench_allocator.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(workload: str, epochs: int) -> None:
    import resource
    import time

    import torch
    from torch import nn
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import nb_trainer as nbt
    from nb_trainer import allocator
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if workload == "digits":
        from bench_store import digits
        train, val = digits()
        model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        batch = 32
    else:
        X, y = torch.randn(20_000, 784), torch.randint(0, 10, (20_000,))
        train, val = (X[:18_000], y[:18_000]), (X[18_000:], y[18_000:])
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        batch = 128
    t = nbt.Trainer(model, train, val, store=None, optimizer="adam", batch_size=batch)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    t.start(lr=1e-3, epochs=epochs)
    run = t.wait()
    wall = time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert run.status == "finished", (run.status, run.error)
    print(json.dumps({"wall_s": wall, "epochs_s": [e["seconds"] for e in run.epochs],
                      "minflt": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime,
                      "user_s": r1.ru_utime - r0.ru_utime, "kept": allocator.keep_freed_memory()}))


def one(workload: str, epochs: int, keep: bool) -> dict:
    env = dict(os.environ, NBT_KEEP_FREED_MEMORY="1" if keep else "0", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--epochs", str(epochs)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summary(rows: list[dict]) -> dict:
    def med(f):
        values = [f(r) for r in rows]
        return {"median": statistics.median(values), "range": [min(values), max(values)]}
    return {"wall_s": med(lambda r: r["wall_s"]), "first_epoch_s": med(lambda r: r["epochs_s"][0]),
            "later_epoch_s": med(lambda r: statistics.median(r["epochs_s"][1:])),
            "minflt_per_epoch": med(lambda r: r["minflt"] / len(r["epochs_s"])),
            "sys_share": med(lambda r: r["sys_s"] / (r["sys_s"] + r["user_s"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--workload", nargs="+", default=["digits", "random"], choices=["digits", "random"])
    ap.add_argument("--child", choices=["digits", "random"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_allocator.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.epochs)
        return
    print(f"load average at start: {os.getloadavg()}")
    results = {}
    for workload in args.workload:
        kept, default, ratios = [], [], []
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {keep: one(workload, args.epochs, keep) for keep in order}
            assert got[True]["kept"] and not got[False]["kept"], "the allocator setting did not take (not glibc?)"
            kept.append(got[True])
            default.append(got[False])
            ratios.append(got[False]["wall_s"] / got[True]["wall_s"])
            print(f"{workload} pair {i + 1}: run {got[False]['wall_s']:.2f} s with glibc's defaults, "
                  f"{got[True]['wall_s']:.2f} s keeping freed memory (x{ratios[-1]:.3f}); minor faults "
                  f"{got[False]['minflt']} vs {got[True]['minflt']}; system time {got[False]['sys_s']:.2f} vs "
                  f"{got[True]['sys_s']:.2f} s", flush=True)
        results[workload] = {"speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
                             "defaults": summary(default), "kept": summary(kept)}
        d, k = results[workload]["defaults"], results[workload]["kept"]
        print(f"{workload}: speed-up (run time with glibc's defaults / keeping freed memory) median "
              f"{statistics.median(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}x; first epoch "
              f"{d['first_epoch_s']['median']:.3f} -> {k['first_epoch_s']['median']:.3f} s; later epochs "
              f"{d['later_epoch_s']['median']:.3f} -> {k['later_epoch_s']['median']:.3f} s; minor faults an epoch "
              f"{d['minflt_per_epoch']['median']:.0f} -> {k['minflt_per_epoch']['median']:.0f}; system time "
              f"{d['sys_share']['median']:.1%} -> {k['sys_share']['median']:.1%} of the run's CPU")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"epochs": args.epochs, "pairs": args.pairs, **results}, indent=2))


if __name__ == "__main__":
    main()
