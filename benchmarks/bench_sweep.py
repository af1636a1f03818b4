"""A sweep on a warm local Ray against the same trials run one after another with ``t.start``.

Workload: scikit-learn's digits (standardized, 1497 train / 300 val), MLP 64-1024-1024-10, Adam,
batch 32 (about half a second an epoch), one torch thread per run; 8 learning rates (a grid, ``scheduler="fifo"`` so every
trial trains every epoch: the same work on both sides). The epochs per run are calibrated so
that one run takes about ``--seconds`` (10) on this machine.

Per repeat, alternating which side goes first:

- **sequential**: the 8 configs with ``t.start(...)``; ``t.wait()``, one after another, in this
  process (the kernel's way);
- **sweep**: ``t.sweep({"lr": [...8...]}, parallel=2, scheduler="fifo")`` on the local Ray
  started once before the first repeat, until ``sweep.wait()`` returns. Warm: ``ray.init`` is
  not counted, and the first repeat starts once the cluster's idle workers (one per core, which
  import torch, Ray Tune and the trial code while idle) are ready and the machine is quiet. The
  first sweep's trials run on those workers; a sweep's trial workers end with it, and it asks the
  local Ray for as many idle workers again, which import while idle: each side of a repeat starts
  once the machine is quiet. The summary gives the first sweep and the later ones apart.

Beside each repeat, **the machine's ceiling** for this workload, without Ray: two runs in two plain
processes (each a Trainer, set up and warmed before the clock starts) side by side against the same
two one after another. Two single-threaded runs of this MLP slow each other down: each one's
weights, gradients and Adam state (about 17 MB at 1024 hidden units) fit the shared L3 cache
(32 MiB here) alone, and two do not, so each pays more CPU per epoch beside the other. No sweep
can beat that ratio; the sweep's speed-up over it is what Ray and Tune cost.

Reported: the **speed-up** (sequential wall time / sweep wall time; target >= 1.6 on 2 cores),
and the **time to the first epoch** (from the ``t.sweep`` call to the first trial's first epoch
reaching the driver); and the CPU time per epoch of a trial's worker process against the
sequential runs' (what running as a trial costs, which other jobs on the machine do not change).
The machine is shared: look at the range over repeats, and run it when ``uptime`` shows a low load
(with both cores busy elsewhere, two trials cannot run faster than one after another).

Every connection stays on loopback: the script sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
``RAY_USAGE_STATS_ENABLED=0`` and ``HOME`` (a temporary folder holding an empty
``ray_bootstrap_config.yaml``) before Ray is imported.

Run: ``python benchmarks/bench_sweep.py [--repeats 3] [--seconds 10]`` (about 2 minutes a repeat).
Results also go to ``benchmarks/results/bench_sweep.json``.
"""
from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="nbt-bench-home-")
open(os.path.join(_HOME, "ray_bootstrap_config.yaml"), "w").close()
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "HOME": _HOME})

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the trial workers import this checkout's nb_trainer too
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
import nb_trainer as nbt  # noqa: E402
from nb_trainer.sweep import cluster  # noqa: E402

from bench_store import digits  # noqa: E402  (the standardized digits split, 1497 / 300)

LRS = [3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2]


def trainer(store, hidden: int = 1024, batch_size: int = 32) -> nbt.Trainer:
    train, val = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return nbt.Trainer(model, train, val, store=store, optimizer="adam", batch_size=batch_size)


def calibrate(t: nbt.Trainer, seconds: float) -> int:
    """Epochs that make one run last about ``seconds`` here."""
    t.start(lr=1e-3, epochs=2)
    t.wait()                        # the process's first run (its imports, first allocations) is not the measure
    t.start(lr=1e-3, epochs=4)
    run = t.wait()
    per_epoch = (run.ended_at - run.started_at) / len(run.epochs)   # the run's own overheads included
    return max(2, round(seconds / per_epoch))


def sequential(t: nbt.Trainer, epochs: int) -> tuple[float, float]:
    """Wall time of the 8 runs, and the process CPU time per epoch."""
    t0, c0 = time.perf_counter(), time.process_time()
    for lr in LRS:
        t.start(lr=lr, epochs=epochs)
        run = t.wait()
        assert run.status == "finished", (run.status, run.error)
    return time.perf_counter() - t0, (time.process_time() - c0) / (len(LRS) * epochs)


def sweep(t: nbt.Trainer, epochs: int) -> tuple[float, float, float, object]:
    """Wall time of the sweep, time to its first epoch, and a trial worker's CPU time per epoch (median;
    from its first epoch's report to its last: the process's CPU, whatever else the machine runs)."""
    from nb_trainer import events as ev
    cpu_at_first: dict = {}
    t0 = time.perf_counter()
    started = time.time()
    sw = t.sweep({"lr": LRS}, parallel=2, scheduler="fifo", epochs=epochs)
    sw.events.subscribe(lambda e: e.kind == ev.EPOCH_ENDED and cpu_at_first.setdefault(e.run.id, e.run.worker["cpu_s"]),
                        max_pending=10_000)
    sw.wait()
    took = time.perf_counter() - t0
    assert sw.status == "finished" and all(r.status == "finished" and len(r.epochs) == epochs for r in sw.runs), sw
    cpu = statistics.median((r.worker["cpu_s"] - cpu_at_first[r.id]) / (epochs - 1) for r in sw.runs
                            if r.id in cpu_at_first)
    return took, sw.first_epoch_at - started, cpu, sw


def child(epochs: int, hidden: int, batch_size: int) -> None:
    """One plain process's run, for the ceiling: set up and warmed, then trained when the parent says go."""
    torch.set_num_threads(1)
    t = trainer(None, hidden, batch_size)
    t.start(lr=1e-3, epochs=2)
    t.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.perf_counter(), time.process_time()
    t.start(lr=1e-3, epochs=epochs)
    run = t.wait()
    assert run.status == "finished", (run.status, run.error)
    print(time.perf_counter() - t0, time.process_time() - c0, flush=True)


def ceiling(epochs: int, hidden: int, batch_size: int) -> dict:
    """Two runs in plain processes, one after another and side by side: the most two-way parallelism gives here."""
    import subprocess

    def together(n: int) -> list:
        procs = [subprocess.Popen([sys.executable, __file__, "--child", str(epochs), "--hidden", str(hidden),
                                   "--batch-size", str(batch_size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for _ in range(n)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = [p.communicate()[0].split() for p in procs]
        return [(float(o[0]), float(o[1])) for o in out]

    alone = together(1) + together(1)
    side = together(2)
    one_after_another, side_by_side = sum(w for w, _ in alone), max(w for w, _ in side)
    return {"one_after_another_s": one_after_another, "side_by_side_s": side_by_side,
            "ceiling": one_after_another / side_by_side,
            "cpu_per_epoch_alone_s": statistics.mean(c for _, c in alone) / epochs,
            "cpu_per_epoch_side_by_side_s": statistics.mean(c for _, c in side) / epochs}


def settle(timeout: float = 60.0) -> float:
    """Wait until the machine is quiet (the local Ray's idle workers done with their imports); seconds waited."""
    import psutil
    t0 = time.perf_counter()
    psutil.cpu_percent()
    while time.perf_counter() - t0 < timeout:
        if psutil.cpu_percent(interval=1.0) < 15:
            break
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="wall time of one run, about")
    ap.add_argument("--hidden", type=int, default=1024, help="width of the MLP's two hidden layers")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_sweep.json"))
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)   # epochs: one run of the ceiling
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.hidden, args.batch_size)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as store:
        t = trainer(store, args.hidden, args.batch_size)
        epochs = calibrate(t, args.seconds)
        print(f"load average at start: {os.getloadavg()}")
        print(f"MLP 64-{args.hidden}-{args.hidden}-10, batch {args.batch_size}: {len(LRS)} runs of {epochs} epochs (about {args.seconds:g} s each); starting a local Ray ...")
        t0 = time.perf_counter()
        info = cluster.connect()
        print(f"ray.init: {time.perf_counter() - t0:.1f} s, {info['cpus']} CPUs")
        print(f"the cluster's idle workers were ready (their imports done, the machine quiet) "
              f"{settle():.1f} s later")
        rows = []
        for i in range(args.repeats):
            # each side starts on a quiet machine: after a sweep, the idle workers it asks Ray for
            # import torch and Tune (about 15 s of CPU here), which would slow a sequential side next
            if i % 2 == 0:
                settle()
                seq, seq_cpu = sequential(t, epochs)
                settle()
                par, first, trial_cpu, sw = sweep(t, epochs)
            else:
                settle()
                par, first, trial_cpu, sw = sweep(t, epochs)
                settle()
                seq, seq_cpu = sequential(t, epochs)
            per_trial = statistics.median(r.ended_at - r.started_at for r in sw.runs)
            settle()
            top = ceiling(epochs, args.hidden, args.batch_size)
            rows.append({"sequential_s": seq, "sweep_s": par, "speedup": seq / par, "first_epoch_s": first,
                         "trial_median_s": per_trial, "cpu_per_epoch_sequential_s": seq_cpu,
                         "cpu_per_epoch_trial_s": trial_cpu, "load": os.getloadavg()[0], "plain_processes": top,
                         "of_ceiling": seq / par / top["ceiling"]})
            print(f"repeat {i + 1}: sequential {seq:.1f} s, sweep {par:.1f} s -> speed-up {seq / par:.2f}x; "
                  f"first epoch after {first:.1f} s; a trial took {per_trial:.1f} s (median); CPU per epoch "
                  f"{seq_cpu:.3f} s sequential, {trial_cpu:.3f} s in a trial; load {os.getloadavg()[0]:.2f}",
                  flush=True)
            print(f"          ceiling (2 plain processes, no Ray): {top['one_after_another_s']:.1f} s one after another, "
                  f"{top['side_by_side_s']:.1f} s side by side -> {top['ceiling']:.2f}x, CPU per epoch "
                  f"{top['cpu_per_epoch_alone_s']:.3f} s alone, {top['cpu_per_epoch_side_by_side_s']:.3f} s side by side; "
                  f"the sweep reached {seq / par / top['ceiling']:.2f} of it", flush=True)
        cluster.shutdown()
    speedups = [r["speedup"] for r in rows]
    firsts = [r["first_epoch_s"] for r in rows]
    summary = {"hidden": args.hidden, "batch_size": args.batch_size, "epochs": epochs, "trials": len(LRS), "parallel": 2, "repeats": rows,
               "speedup_median": statistics.median(speedups), "speedup_range": [min(speedups), max(speedups)],
               "first_epoch_median_s": statistics.median(firsts), "first_epoch_range_s": [min(firsts), max(firsts)],
               "first_sweep": {"speedup": rows[0]["speedup"], "first_epoch_s": rows[0]["first_epoch_s"]}}
    print(f"speed-up: median {summary['speedup_median']:.2f}x, range {min(speedups):.2f}-{max(speedups):.2f}x "
          f"(target >= 1.6x); time to the first epoch: median {summary['first_epoch_median_s']:.1f} s, "
          f"range {min(firsts):.1f}-{max(firsts):.1f} s")
    tops = [r["plain_processes"]["ceiling"] for r in rows]
    ofs = [r["of_ceiling"] for r in rows]
    summary.update({"ceiling_median": statistics.median(tops), "ceiling_range": [min(tops), max(tops)],
                    "of_ceiling_median": statistics.median(ofs), "of_ceiling_range": [min(ofs), max(ofs)]})
    print(f"the machine's ceiling (2 plain processes side by side): median {statistics.median(tops):.2f}x, range "
          f"{min(tops):.2f}-{max(tops):.2f}x; the sweep's speed-up over it: median {statistics.median(ofs):.2f}, "
          f"range {min(ofs):.2f}-{max(ofs):.2f}")
    print(f"the first sweep (on the cluster's idle workers): speed-up {rows[0]['speedup']:.2f}x, first epoch after "
          f"{rows[0]['first_epoch_s']:.1f} s")
    if len(rows) > 1:
        later = rows[1:]
        summary["later_sweeps"] = {
            "speedup_median": statistics.median(r["speedup"] for r in later),
            "speedup_range": [min(r["speedup"] for r in later), max(r["speedup"] for r in later)],
            "first_epoch_median_s": statistics.median(r["first_epoch_s"] for r in later)}
        ls = summary["later_sweeps"]
        print(f"later sweeps (on the idle workers the one before asked for): speed-up median {ls['speedup_median']:.2f}x, range "
              f"{ls['speedup_range'][0]:.2f}-{ls['speedup_range'][1]:.2f}x, first epoch after "
              f"{ls['first_epoch_median_s']:.1f} s (median)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
