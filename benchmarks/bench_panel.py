"""Throughput cost of the live panel, and what a frame costs.

The reference workload (MLP 64-256-256-10 on scikit-learn's digits, Adam, batch 64) trains
headless and with the panel attached and rendering at its default rate, alternately in one
process; the medians of the pairs give the throughput ratio (target >= 0.95), with a bootstrap
95% interval of that median. By default there are two Trainers for the whole benchmark, one with
its panel, and a pair is one run of each (a run restarts from the same weights, as a slider does):
run-by-run alternation cancels most of a shared host's drift, which moves single 7 s stretches by
+-10%. With ``--alternate sides`` a pair is instead a new Trainer (and panel) of each for --runs
runs, then closed: it also counts making the panel and its first frames. With the panel, each
run's end also publishes its static rendering for the saved notebook (the final frame, the HTML
summary, the runs table, JSON-encoded as a kernel sends it), and the time counts until it is out
("ratio incl. static"). The ratio of the training alone (up to the run's end) is printed beside
it. Outside a kernel ipywidgets sends nothing; here the panel's widget messages are serialized and
signed as a kernel's comms do (all but the socket write, which a kernel's I/O thread does). It also prints
frames per second while training, the longest gap between frames, ms per frame at 1k/10k/100k
history points (the kernel's side: snapshot + send; the renderer's side: draw + PNG) and KiB sent
per frame.

    python benchmarks/bench_panel.py            # 30 pairs of runs
    python benchmarks/bench_panel.py --pairs 7 --scale 2     # frames for a high-density screen
    python benchmarks/bench_panel.py --alternate sides --pairs 15   # new Trainers and panels, 3 runs each
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nb_trainer as nbt  # noqa: E402
from nb_trainer.run import Run  # noqa: E402


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data / 16, dtype=torch.float32)
    y = torch.tensor(d.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


STATIC_BYTES: list[int] = []
CPU: dict = {"headless": [], "panel": [], "renderer": []}     # CPU seconds per 1000 steps


def _renderer_cpu() -> float:
    """CPU seconds the renderer process has used (0 where it cannot be read)."""
    from nb_trainer.ui import render
    pid = render.get_renderer(start=False).pid
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return 0.0
STATIC_CPU_MS: list[float] = []


COMM_MESSAGES: list[int] = []      # bytes of each widget message sent (the panel's, while measured)
PANEL_SECONDS: list[float] = []     # wall seconds of the measured panel sides
_SESSION = []


def _serialize_like_a_kernel(msg_type: str, content: dict, metadata: dict, ident=None) -> int:
    """What a kernel does to send a message, short of the socket (which its I/O thread writes): json_clean,
    the message with its header, JSON and the HMAC signature (jupyter_client's Session). Returns its bytes."""
    try:
        from ipykernel.jsonutil import json_clean
        from jupyter_client.session import Session
    except ImportError:                 # no Jupyter here: JSON alone
        import json
        return len(json.dumps({"content": content, "metadata": metadata}, default=str))
    if not _SESSION:
        _SESSION.append(Session(key=b"bench-panel"))
    session = _SESSION[0]
    msg = session.msg(msg_type, json_clean(content), metadata=json_clean(metadata))
    return sum(len(f) for f in session.serialize(msg, ident=ident))


def _publish_like_a_kernel(data, display_id, update):
    """What sending the static rendering costs in a kernel, short of the socket."""
    STATIC_BYTES.append(_serialize_like_a_kernel("update_display_data" if update else "display_data",
                                                 {"data": data, "metadata": {}, "transient": {"display_id": display_id}},
                                                 {}))


def _widget_messages_like_a_kernel() -> None:
    """Widgets made from now on send their messages as a kernel's comms do (serialized and signed; buffers,
    such as a frame's PNG, go as they are), not to ipywidgets' no-op comm outside a kernel."""
    import comm
    from comm.base_comm import BaseComm

    class KernelLikeComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            size = _serialize_like_a_kernel(msg_type, dict(data=data or {}, comm_id=self.comm_id, **keys),
                                            metadata or {}, ident=self.topic)
            COMM_MESSAGES.append(size + sum(memoryview(b).nbytes for b in buffers or ()))

    comm.create_comm = KernelLikeComm


def _timed_publish_static(panel):
    """Panel.publish_static, its CPU time in the kernel recorded (the wait for the final frame is not CPU)."""
    original = panel.publish_static

    def publish_static(*args, **kwargs):
        t0 = time.thread_time()
        done = original(*args, **kwargs)
        if done:
            STATIC_CPU_MS.append((time.thread_time() - t0) * 1e3)
        return done
    panel.publish_static = publish_static


class Side:
    """One Trainer of the reference workload, headless or with its panel attached (as if displayed)."""

    def __init__(self, train, val, epochs: int, with_panel: bool, scale: float = 1.0):
        try:
            from nb_trainer.ui import static
            static.publish = _publish_like_a_kernel
        except ImportError:             # a version before the static rendering (to compare against)
            static = None
        self.with_panel, self.static = with_panel, static
        self.t = nbt.Trainer(model(), train, val, store=None, epochs=epochs, batch_size=64, optimizer="adam")
        self.panel = None
        self.frame_times: list[float] = []
        if with_panel:
            panel = self.panel = self.t.panel()
            if static is not None:
                panel.scale = scale
                panel._display_id = "bench"              # as if displayed: the static rendering is published
                panel._static_sig = panel._static_signature()
                _timed_publish_static(panel)
            panel.plot.observe(lambda change: self.frame_times.append(time.perf_counter()), names="value")

    def runs(self, n: int = 1):
        """Train ``n`` runs one after the other (as slider restarts do), the static rendering of the last one's
        end included; returns (steps/s, frames/s while training, longest gap between frames, steps/s of the
        training alone)."""
        t, panel = self.t, self.panel
        t0 = time.perf_counter()
        cpu0, rcpu0 = time.process_time(), _renderer_cpu()
        steps = 0
        for _ in range(n):
            run = t.start()
            t.wait()
            if run.status != "finished":
                raise RuntimeError(f"run ended {run.status}: {run.error}")
            steps += run.step
        trained = time.perf_counter() - t0
        if self.with_panel and self.static is not None:
            deadline = time.monotonic() + 30
            while panel._static_sig != panel._static_signature() and time.monotonic() < deadline:
                time.sleep(0.002)
            if panel.static_updates == 0:
                raise RuntimeError("the static rendering was not published at the run's end")
        wall = time.perf_counter() - t0
        CPU["panel" if self.with_panel else "headless"].append((time.process_time() - cpu0) / steps * 1e3)
        if self.with_panel:
            CPU["renderer"].append((_renderer_cpu() - rcpu0) / steps * 1e3)
            PANEL_SECONDS.append(wall)
        frames = [f for f in self.frame_times if t0 <= f <= t0 + trained]
        gaps = np.diff([t0] + frames + [t0 + trained]) if self.with_panel else np.array([0.0])
        return steps / wall, len(frames) / trained, float(gaps.max()), steps / trained

    def close(self):
        self.t.close()


def one_run(train, val, epochs: int, with_panel: bool, scale: float = 1.0, runs: int = 1):
    """A new Trainer (and panel) for ``runs`` runs, then closed: one side of a pair of sides."""
    side = Side(train, val, epochs, with_panel, scale)
    try:
        return side.runs(runs)
    finally:
        side.close()


def fake_runs(points: int, n_runs: int = 4):
    runs = []
    for r in range(n_runs):
        run = Run(nbt.TrainConfig(lr=10 ** -(r + 2)), task="classification", note=f"lr {r}")
        steps = list(range(1, points + 1))
        rng = np.random.default_rng(r)
        loss = (2.3 * np.exp(-np.arange(points) / (points / 5)) + 0.05 * rng.random(points)).tolist()
        run.history.capacity = max(points, 20_000)
        run.history.layer_names = ["w0", "w1"]
        run.history.extend(step=steps, epoch=[1 + i * 50 // points for i in range(points)], loss=loss,
                           grad_norm=(1 + rng.random(points)).tolist(), lr=[run.config.lr] * points,
                           layer_norms=[[1.0, 1.0]] * points)
        run.steps_per_epoch = max(points // 50, 1)
        for e in range(1, 51):
            run.epochs.append({"epoch": e, "train_loss": 2.3 / e, "val_loss": 2.4 / e, "val_accuracy": 1 - 1 / e,
                               "lr": run.config.lr, "seconds": 0.1})
        run.status = "finished" if r < n_runs - 1 else "running"
        runs.append(run)
    return runs


def frame_costs(sizes=(1_000, 10_000, 100_000), repeats: int = 7):
    from nb_trainer.ui import figure, render
    renderer = render.get_renderer()
    print("\nms per frame by history length (4 runs of that many points each):")
    print(f"{'points':>8} {'kernel: snapshot':>17} {'renderer: frame':>16} {'KiB/frame':>10} {'mode':>8}")
    for n in sizes:
        runs = fake_runs(n)
        snap_ms, frame_ms, kib = [], [], []
        for i in range(repeats):
            runs[-1].history.extend(step=[n + i + 1], epoch=[50], loss=[0.1], grad_norm=[1.0], lr=[0.01],
                                    layer_norms=[[1.0, 1.0]])
            t0 = time.perf_counter()
            snap = figure.snapshot(runs, "classification")
            t1 = time.perf_counter()
            seq = renderer.submit(("bench", n), snap, size=(720, 440))
            png = renderer.wait(("bench", n), seq, timeout=30)
            t2 = time.perf_counter()
            snap_ms.append((t1 - t0) * 1e3)
            frame_ms.append((t2 - t1) * 1e3)
            kib.append(len(png) / 1024)
        print(f"{n:>8} {statistics.median(snap_ms):>15.2f}ms {statistics.median(frame_ms[1:]):>14.1f}ms "
              f"{statistics.median(kib):>10.1f} {renderer.mode:>8}")


def bootstrap_median(values, n: int = 5000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of ``values``."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    medians = np.median(rng.choice(v, size=(n, len(v)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=60, help="epochs per run (digits: ~23 steps each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 pairs of short runs (a smoke test)")
    p.add_argument("--scale", type=float, default=1.0, help="device pixels per CSS pixel of the frames (2: hi-dpi)")
    p.add_argument("--alternate", choices=("runs", "sides"), default="runs",
                   help="runs: one Trainer with a panel and one without for the whole benchmark, a pair is a run of "
                        "each; sides: a pair is a new Trainer (and panel) of each for --runs runs, then closed")
    p.add_argument("--runs", type=int, default=3, help="with --alternate sides: runs one after the other on each side")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.pairs, args.epochs = 2, 15
    train, val = digits()
    _widget_messages_like_a_kernel()
    from nb_trainer.ui import render
    render.get_renderer()  # started once per kernel, like the first panel does
    one_run(train, val, 3, True)  # warm-up: imports, first frame
    one_run(train, val, 3, False)
    for measured in (*CPU.values(), STATIC_BYTES, STATIC_CPU_MS):
        measured.clear()               # the warm-up is not measured
    headless, paneled, fps, gaps, trained_only = [], [], [], [], []
    sides = {}
    if args.alternate == "runs":
        # two Trainers for the whole benchmark, one with its panel: a pair is a run of each, as slider restarts make them
        sides = {p: Side(train, val, args.epochs, p, args.scale) for p in (False, True)}
        for side in sides.values():
            side.runs(1)                 # its first run: the panel's first frames, the figure's first draw
        for measured in (*CPU.values(), STATIC_BYTES, STATIC_CPU_MS):
            measured.clear()
    COMM_MESSAGES.clear()
    PANEL_SECONDS.clear()
    for i in range(args.pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_panel in order:
            if sides:
                rate, f, gap, training_rate = sides[with_panel].runs(1)
            else:
                rate, f, gap, training_rate = one_run(train, val, args.epochs, with_panel, args.scale, args.runs)
            if with_panel:
                paneled.append(rate)
                trained_only.append(training_rate)
                fps.append(f)
                gaps.append(gap)
            else:
                headless.append(rate)
        print(f"pair {i + 1}: headless {headless[-1]:7.1f} steps/s   panel {paneled[-1]:7.1f} steps/s   "
              f"ratio incl. static {paneled[-1] / headless[-1]:.3f} (training alone "
              f"{trained_only[-1] / headless[-1]:.3f})   {fps[-1]:.2f} frames/s   longest gap {gaps[-1]:.2f}s")
    for side in sides.values():
        side.close()
    ratios = [p_ / h for p_, h in zip(paneled, headless)]
    print(f"\nmedian steps/s: headless {statistics.median(headless):.1f}, with panel {statistics.median(paneled):.1f}")
    print(f"throughput ratio panel/headless: median of pair ratios {statistics.median(ratios):.3f} "
          f"(ratio of medians {statistics.median(paneled) / statistics.median(headless):.3f}; target >= 0.95)")
    alone = [p_ / h for p_, h in zip(trained_only, headless)]
    low, high = bootstrap_median(ratios)
    print(f"bootstrap 95% interval of that median: {low:.3f}-{high:.3f}")
    print(f"throughput ratio range over pairs: {min(ratios):.3f}-{max(ratios):.3f}; training alone: median "
          f"{statistics.median(alone):.3f}, range {min(alone):.3f}-{max(alone):.3f}")
    if STATIC_BYTES:
        print(f"static rendering at run end: {statistics.median(STATIC_BYTES) / 1024:.0f} KiB, "
              f"{statistics.median(STATIC_CPU_MS):.1f} ms of kernel CPU (median; frames at scale {args.scale:g})")
    if COMM_MESSAGES and PANEL_SECONDS:
        print(f"widget messages from the panel: {len(COMM_MESSAGES) / sum(PANEL_SECONDS):.1f} a second, "
              f"{sum(COMM_MESSAGES) / sum(PANEL_SECONDS) / 1024:.0f} KiB a second (frames included)")
    # CPU time does not depend on what else the machine runs: the kernel's CPU per step with the panel
    # against without it is the panel's cost in the kernel; the renderer's runs on another core
    kernel = statistics.median(CPU["panel"]) / statistics.median(CPU["headless"])
    print(f"kernel CPU per step, panel/headless: {kernel:.3f} (medians; range "
          f"{min(CPU['panel']) / max(CPU['headless']):.3f}-{max(CPU['panel']) / min(CPU['headless']):.3f}); "
          f"renderer process: {statistics.median(CPU['renderer']) / statistics.median(CPU['headless']):.3f} "
          f"of the training's CPU")
    print(f"frames per second while training: median {statistics.median(fps):.2f}; "
          f"longest gap between frames: {max(gaps):.2f} s (must stay under 2 s)")
    frame_costs()


if __name__ == "__main__":
    main()
