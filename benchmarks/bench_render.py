"""What a live-plot frame costs, in the kernel and in the renderer, at 1k / 10k / 100k points.

Workload: a current run with N logged steps (epochs of 100 steps) and three
earlier runs of N steps each, 800x480 frames. Each frame the current run gains
25 steps (what a log interval adds), then:

* kernel side: ``figure.snapshot`` (read the new tail, decimate) and pickling
  the snapshot (what ``Renderer.submit``'s I/O thread sends) — this is the only
  time a frame holds the kernel's GIL;
* renderer side: ``LiveFigure.render`` (blit + PNG) on steady frames, a
  full redraw (what an x-limit change or a new run at new limits costs), and
  one at limits drawn before (a restarted run's first frame);
* end to end: submit to the renderer process and wait for the PNG.

Run: ``python benchmarks/bench_render.py [--frames 40]``. Prints a table and
writes benchmarks/results/bench_render.json.
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time
from pathlib import Path

import numpy as np

from nb_trainer.config import TrainConfig
from nb_trainer.run import Run, StepHistory
from nb_trainer.ui import figure as F
from nb_trainer.ui import render as R

STEPS_PER_EPOCH = 100


def make_run(n: int, lr: float, note: str, seed: int, planned_steps: int) -> Run:
    rng = np.random.default_rng(seed)
    run = Run(TrainConfig(lr=lr, epochs=max(1, planned_steps // STEPS_PER_EPOCH)), task="classification",
              note=note)
    run.history = StepHistory(capacity=10**7)       # keep every point: the benchmark is about N
    run.steps_per_epoch = STEPS_PER_EPOCH
    run.status = "finished"
    grow(run, n, rng)
    return run


def grow(run: Run, k: int, rng) -> None:
    start = len(run.history) + 1
    steps = np.arange(start, start + k)
    loss = 2.3 * np.exp(-steps / 20_000) + 0.1 + 0.05 * rng.random(k)
    run.history.extend(step=steps.tolist(), epoch=((steps - 1) // STEPS_PER_EPOCH + 1).tolist(),
                       loss=loss.tolist(), grad_norm=np.exp(rng.standard_normal(k) * 0.3).tolist(),
                       lr=[run.config.lr] * k, layer_norms=[[]] * k)
    for e in range(len(run.epochs) + 1, int(steps[-1]) // STEPS_PER_EPOCH + 1):
        run.epochs.append({"epoch": e, "train_loss": float(loss[-1]), "val_loss": float(loss[-1]) + 0.1,
                           "val_accuracy": 1 - 0.4 / e, "lr": run.config.lr})


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 2)


def bench(n: int, frames: int, renderer: R.Renderer) -> dict:
    rng = np.random.default_rng(0)
    runs = [make_run(n, lr, f"lr {lr * 3:g} → {lr:g}", i, n) for i, lr in enumerate((0.03, 0.01, 0.003))]
    current = make_run(n, 0.001, "lr 0.003 → 0.001", 9, 2 * n)
    current.status = "running"
    runs.append(current)
    cache = F.SnapshotCache()

    t = time.perf_counter()
    snap = F.snapshot(runs, "classification", cache=cache)
    cold = time.perf_counter() - t

    fig = F.LiveFigure()
    fig.render(snap)                                   # first (full) draw
    snap_t, pickle_t, kib, frame_t, e2e_t = [], [], [], [], []
    sent = []
    for _ in range(frames):
        grow(current, 25, rng)
        t = time.perf_counter()
        snap = F.snapshot(runs, "classification", cache=cache)
        snap_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        blob = pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL)
        pickle_t.append(time.perf_counter() - t)
        sent.append(len(blob))
        t = time.perf_counter()
        png = fig.render(snap)
        frame_t.append(time.perf_counter() - t)
        kib.append(len(png) / 1024)
        t = time.perf_counter()
        renderer.wait(n, renderer.submit(n, snap), timeout=60)
        e2e_t.append(time.perf_counter() - t)
    full_t, reuse_t = [], []
    for _ in range(5):
        fresh = F.LiveFigure()
        fresh.render(snap)                             # figure creation is not part of a redraw
        for times, keep_axes in ((full_t, False), (reuse_t, True)):
            fresh._background = None
            if not keep_axes:
                fresh._chrome.clear()                  # everything drawn anew (new limits)
            t = time.perf_counter()
            fresh.render(snap)
            times.append(time.perf_counter() - t)
    return {
        "points": n,
        "kernel_snapshot_cold_ms": round(cold * 1e3, 2),
        "kernel_snapshot_ms": ms(snap_t),
        "kernel_pickle_ms": ms(pickle_t),
        "kernel_total_ms": ms([a + b for a, b in zip(snap_t, pickle_t)]),
        "sent_kib": round(statistics.median(sent) / 1024, 1),
        "renderer_frame_ms": ms(frame_t),
        "renderer_full_redraw_ms": ms(full_t),
        # a full redraw at limits drawn before (a restarted run's first frame): lines and legends over kept axes
        "renderer_redraw_same_limits_ms": ms(reuse_t),
        "renderer_full_draws": fig.full_draws,
        "png_kib": round(statistics.median(kib), 1),
        "end_to_end_ms": ms(e2e_t),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    renderer = R.Renderer()
    t = time.perf_counter()
    renderer.wait("warmup", renderer.submit("warmup", F.snapshot([], "classification")), timeout=120)
    startup = time.perf_counter() - t
    try:
        rows = [bench(n, args.frames, renderer) for n in (1_000, 10_000, 100_000)]
    finally:
        renderer.close()
    cols = list(rows[0])
    print(f"renderer process start + first frame: {startup:.2f} s")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_render.json").write_text(json.dumps({"startup_s": round(startup, 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
