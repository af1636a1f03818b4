"""The live figure (nb_trainer.ui.figure) and the renderer process (nb_trainer.ui.render)."""
from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nb_trainer.config import TrainConfig
from nb_trainer.run import Run, StepHistory
from nb_trainer.ui import figure as F
from nb_trainer.ui import render as R

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# -- helpers ------------------------------------------------------------------------------------------

def make_run(n_steps, lr=1e-2, note="first run", task="classification", steps_per_epoch=100,
             epochs=None, seed=0, status="finished", spike_at=None, capacity=10**7):
    """A real Run filled with a plausible history: decaying noisy loss, grad norms, constant lr."""
    rng = np.random.default_rng(seed)
    epochs = epochs or max(1, -(-n_steps // steps_per_epoch))
    run = Run(TrainConfig(lr=lr, epochs=epochs), task=task, note=note)
    run.history = StepHistory(capacity=capacity)
    run.steps_per_epoch = steps_per_epoch
    run.status = status
    steps = np.arange(1, n_steps + 1)
    loss = 2.3 * np.exp(-steps / max(1, n_steps / 5)) + 0.1 + 0.05 * rng.standard_normal(n_steps) ** 2
    norm = np.exp(0.3 * rng.standard_normal(n_steps)) * (1 + 2 * np.exp(-steps / max(1, n_steps / 10)))
    if spike_at is not None:
        norm[spike_at] = 500.0
        loss[spike_at] = 9.0
    extend(run, steps, loss, norm, lr, steps_per_epoch)
    for e in range(1, n_steps // steps_per_epoch + 1):
        add_epoch(run, e, task, float(loss[e * steps_per_epoch - 1]))
    return run


def extend(run, steps, loss, norm, lr, steps_per_epoch):
    run.history.extend(step=[int(s) for s in steps], epoch=[int((s - 1) // steps_per_epoch + 1) for s in steps],
                       loss=list(map(float, loss)), grad_norm=list(map(float, norm)),
                       lr=[float(lr)] * len(steps), layer_norms=[[]] * len(steps))


def add_epoch(run, e, task, val_loss):
    rec = {"epoch": e, "train_loss": val_loss, "val_loss": val_loss + 0.1, "lr": run.config.lr}
    if task == "regression":
        rec["val_r2"] = 1.0 - 0.3 / e
        rec["val_mse"] = 0.3 / e
    else:
        rec["val_accuracy"] = 1.0 - 0.4 / e
        rec["val_f1"] = 1.0 - 0.5 / e
    run.epochs.append(rec)


def five_runs(task="classification", n=1000):
    notes = ["first run", "lr 0.1 → 0.03", "lr 0.03 → 0.01", "lr 0.01 → 0.003", "lr 0.003 → 0.001"]
    runs = [make_run(n, lr=lr, note=note, task=task, seed=i)
            for i, (lr, note) in enumerate(zip([0.1, 0.03, 0.01, 0.003], notes))]
    runs.append(make_run(n // 2, lr=0.001, note=notes[4], task=task, seed=9, status="running",
                         epochs=n // 100))
    return runs


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def process_state(pid: int):
    """None when the pid is gone, else its state letter (``Z``: exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.fixture(scope="module")
def renderer():
    r = R.Renderer().start()
    yield r
    r.close()


# -- the figure -----------------------------------------------------------------------------------------

def test_figure_draws_four_panels_for_classification():
    runs = five_runs("classification")
    fig = F.LiveFigure()
    fig.update(F.snapshot(runs, "classification"))
    titles = {name: ax.get_title() for name, ax in fig.axes.items()}
    assert titles == {"loss": "loss", "metric": "val accuracy", "grad_norm": "gradient norm",
                      "lr": "learning rate"}
    assert fig.axes["grad_norm"].get_yscale() == "log" and fig.axes["lr"].get_yscale() == "log"
    cur = runs[-1]
    x, y = fig.current["metric"].get_data()
    assert list(y) == pytest.approx(cur.metric("val_accuracy"))
    assert list(x) == pytest.approx([100.0 * e for e in range(1, len(cur.epochs) + 1)])  # epochs at their steps
    x, y = fig.current["loss"].get_data()
    assert len(x) == len(cur.history) == 500 and y[0] == pytest.approx(cur.history.columns("loss")["loss"][0])
    x, y = fig.current["lr"].get_data()
    assert list(x) == [1, 500] and list(y) == [pytest.approx(0.001)] * 2     # flat stretches: their ends
    # the x axis already spans the run's planned steps (epochs x steps per epoch)
    assert fig.axes["loss"].get_xlim() == pytest.approx((0, 1000))


def test_figure_uses_r2_for_regression_and_f1_for_binary():
    runs = five_runs("regression")
    fig = F.LiveFigure()
    fig.update(F.snapshot(runs, "regression"))
    assert fig.axes["metric"].get_title() == "val R²"
    assert list(fig.current["metric"].get_data()[1]) == pytest.approx(runs[-1].metric("val_r2"))
    fig.update(F.snapshot([make_run(300, task="binary")], "binary"))
    assert fig.axes["metric"].get_title() == "val F1"
    assert list(fig.current["metric"].get_data()[1]) == pytest.approx([0.5, 0.75, 1 - 0.5 / 3])


def test_r2_far_below_zero_is_clipped_and_says_so():
    run = make_run(300, task="regression")
    run.epochs[0]["val_r2"] = -40.0
    fig = F.LiveFigure()
    fig.update(F.snapshot([run], "regression"))
    assert fig.axes["metric"].get_ylim()[0] == -1.0
    assert "off the axis" in fig.axes["metric"].get_title()


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ValueError, match="task.*'clustering'.*'classification'"):
        F.snapshot([make_run(100)], "clustering")


def test_three_earlier_runs_are_drawn_faintly_with_a_legend_saying_what_changed():
    runs = five_runs()
    fig = F.LiveFigure()
    fig.update(F.snapshot(runs, "classification"))
    # newest earlier run in the first faint slot, each fainter than the one before
    for slot, run in enumerate([runs[3], runs[2], runs[1]]):
        x, y = fig.faint[slot]["loss"].get_data()
        assert len(x) == len(run.history) and y[-1] == pytest.approx(run.history.last("loss", 1)[0])
    alphas = [fig.faint[slot]["loss"].get_alpha() for slot in range(3)]
    assert alphas == sorted(alphas, reverse=True) and alphas[0] < fig.current["loss"].get_alpha()
    texts = [t.get_text() for leg in fig.fig.legends for t in leg.get_texts()]
    assert "run 5: lr 0.003 → 0.001 — current" in texts
    assert {"run 4: lr 0.01 → 0.003", "run 3: lr 0.03 → 0.01", "run 2: lr 0.1 → 0.03"} <= set(texts)
    assert not any("first run" in t for t in texts)        # run 1 is beyond the three shown
    assert "train loss (per step)" in texts and "val loss (per epoch)" in texts


@pytest.mark.parametrize("size", [(800, 480), (640, 400), (1200, 700)])
@pytest.mark.parametrize("long_notes", [False, True])
def test_legends_cover_neither_the_plots_nor_each_other(size, long_notes):
    runs = five_runs()
    if long_notes:
        for r in runs[1:]:
            r.note = "lr 0.01 → 0.003, weight_decay 0 → 0.0001, dropout 0 → 0.2, batch_size 32 → 64"
    fig = F.LiveFigure(size)
    fig.update(F.snapshot(runs, "classification"))
    renderer = fig.canvas.get_renderer()
    boxes = [leg.get_window_extent(renderer) for leg in fig.fig.legends]
    assert len(boxes) == 2 and not boxes[0].overlaps(boxes[1])
    for box in boxes:
        assert box.x0 >= 0 and box.x1 <= size[0] and box.y1 <= size[1]
        for name, ax in fig.axes.items():
            assert not box.overlaps(ax.get_tightbbox(renderer)), name      # titles and tick labels too


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("size", [(720, 440), (1200, 700)])
def test_the_step_labels_sit_under_their_tick_labels_inside_the_figure(size, scale):
    # the x labels and titles have fixed places (matplotlib would measure every tick label to place
    # them at each full draw): below the tick labels, not on them, not off the figure; titles above
    # their plots and under the legends
    fig = F.LiveFigure(size, scale)
    fig.update(F.snapshot(five_runs(), "classification"))
    renderer = fig.canvas.get_renderer()
    px = scale
    for name in ("grad_norm", "lr"):
        ax = fig.axes[name]
        label = ax.xaxis.label.get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert ax.xaxis.label.get_text() == "step" and ticks
        lowest_tick = min(t.y0 for t in ticks)
        assert label.y1 <= lowest_tick + 0.5 * px, name              # under the tick labels
        assert label.y1 >= lowest_tick - 4 * px, name                # ... and right under them
        assert label.y0 >= 0, name                                   # inside the figure
    legends_bottom = min(leg.get_window_extent(renderer).y0 for leg in fig.fig.legends)
    for name, ax in fig.axes.items():
        title = ax.title.get_window_extent(renderer)
        assert ax.bbox.y1 <= title.y0 <= ax.bbox.y1 + 8 * px, name     # just above its plot
        assert title.y1 <= legends_bottom + 0.5 * px or name in ("grad_norm", "lr"), name


def test_a_diverged_run_says_so_in_the_legend():
    runs = five_runs()
    runs[-1].status = "diverged"
    fig = F.LiveFigure()
    fig.update(F.snapshot(runs, "classification"))
    texts = [t.get_text() for leg in fig.fig.legends for t in leg.get_texts()]
    assert "run 5: lr 0.003 → 0.001 (diverged) — current" in texts


def test_no_runs_draws_empty_axes_with_a_note():
    png = R.render_png(F.snapshot([], "classification"))
    assert png.startswith(PNG_SIGNATURE)
    fig = F.LiveFigure()
    fig.update(F.snapshot([], "regression"))
    assert fig._empty_text.get_text() == "no runs yet"


def test_rendered_frame_is_kept_as_an_artifact():
    ARTIFACTS.mkdir(exist_ok=True)
    runs = five_runs(n=4000)
    runs[-1] = make_run(2400, lr=0.001, note="lr 0.003 → 0.001", seed=9, status="running", epochs=40,
                        spike_at=1700)
    png = R.render_png(F.snapshot(runs, "classification"))
    (ARTIFACTS / "live_figure.png").write_bytes(png)
    assert Image.open(io.BytesIO(png)).size == (720, 440)


# -- decimation -----------------------------------------------------------------------------------------

def test_decimation_caps_points_and_keeps_spikes_first_and_last():
    rng = np.random.default_rng(0)
    x = np.arange(100_000, dtype=float)
    y = rng.standard_normal(100_000)
    y[54_321], y[77_777] = 1e3, -1e3
    dx, dy = F.decimate(x, y, 2000)
    assert len(dx) <= 2000
    assert 1e3 in dy and -1e3 in dy
    assert dx[np.argmax(dy)] == 54_321 and dx[np.argmin(dy)] == 77_777
    assert dx[0] == 0 and dx[-1] == 99_999 and dy[-1] == y[-1]
    assert np.all(np.diff(dx) > 0)
    # each kept point is a real point of the line
    assert np.array_equal(dy, y[dx.astype(int)])


def test_decimation_leaves_short_lines_alone_and_drops_non_finite_points():
    x = np.arange(10.0)
    y = np.arange(10.0)
    y[3] = np.nan
    y[5] = np.inf
    dx, dy = F.decimate(x, y)
    assert list(dx) == [0, 1, 2, 4, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="max_points"):
        F.decimate(x, y, 2)


def test_a_decimated_line_draws_like_the_full_line():
    run = make_run(100_000, seed=3, spike_at=60_000, status="running")
    full = F.snapshot([run], "classification", max_points=10**7, cache=F.SnapshotCache())
    small = F.snapshot([run], "classification", cache=F.SnapshotCache())
    assert len(full["runs"][0]["grad_norm"][0]) == 100_000
    assert len(small["runs"][0]["grad_norm"][0]) <= F.MAX_POINTS
    a, b = pixels(R.render_png(full)), pixels(R.render_png(small))
    differ = (np.abs(a - b).max(axis=-1) > 40).mean()
    assert differ < 0.005, differ


def test_frame_cost_is_flat_from_1k_to_100k_points():
    # What a frame costs is what gets sent and drawn: the same number of points at any length.
    sizes = {}
    for n in (1_000, 10_000, 100_000):
        snap = F.snapshot([make_run(n, seed=1, status="running")], "classification", cache=F.SnapshotCache())
        cur = snap["runs"][0]
        sizes[n] = ({s: len(cur[s][0]) for s in F.STEP_SERIES}, len(pickle.dumps(snap)))
    for n in (10_000, 100_000):
        assert 0.8 * F.MAX_POINTS <= sizes[n][0]["loss"] <= F.MAX_POINTS
        assert all(v <= F.MAX_POINTS for v in sizes[n][0].values())
    assert sizes[10_000][0]["lr"] == sizes[100_000][0]["lr"] == 2        # a constant lr: its two ends
    # everything sent is bounded: 5 lines of at most MAX_POINTS (x, y) float64 pairs
    assert sizes[100_000][1] <= 5 * F.MAX_POINTS * 16 + 4096
    assert sizes[1_000][0]["loss"] == 1_000


def test_blitted_frames_equal_a_full_redraw():
    runs = five_runs()
    fig = F.LiveFigure()
    fig.render(F.snapshot(runs, "classification"))
    extend(runs[-1], np.arange(501, 541), np.full(40, 0.5), np.full(40, 1.0), 0.001, 100)
    snap = F.snapshot(runs, "classification")
    blitted = fig.render(snap)
    assert fig.full_draws == 1 and fig.frames == 2          # the second frame was a blit
    assert np.array_equal(pixels(blitted), pixels(R.render_png(snap)))


@pytest.mark.parametrize("size, scale", [((720, 440), 1.0), ((480, 300), 1.0), ((1100, 600), 2.0)])
@pytest.mark.parametrize("change", ["grad_norm falls", "loss jumps", "metric falls"])
def test_a_y_limit_change_redraws_only_its_axes_and_equals_a_full_redraw(size, scale, change):
    """Only one axes' y limits change (what most runs do as they end): that axes alone is drawn again, and
    the frame is pixel for pixel what a full redraw at the same limits gives."""
    runs = five_runs(n=400)
    cur = runs[-1]
    partial, full = F.LiveFigure(size, scale), F.LiveFigure(size, scale)
    full._redraw_axes = lambda snap, limits: False          # the reference: every limit change redraws all
    for fig in (partial, full):
        fig.render(F.snapshot(runs, "classification"))
    steps = np.arange(201, 221)
    norm, loss = np.full(20, 1.0), np.full(20, 0.5)
    if change == "grad_norm falls":
        norm = np.full(20, 1e-6)
    elif change == "loss jumps":
        loss = np.full(20, 4e5)            # a linear axis in the hundreds of thousands: wider tick labels
    extend(cur, steps, loss, norm, 0.001, 100)
    if change == "metric falls":
        add_epoch(cur, 2, "classification", 0.5)
        cur.epochs[-1]["val_accuracy"] = 0.001      # below the metric axis: its title's note changes too
    snap = F.snapshot(runs, "classification")
    frames = [fig.render(snap) for fig in (partial, full)]
    assert partial._limits == full._limits
    assert (partial.full_draws, partial.partial_draws) == (1, 1), (partial.full_draws, partial.partial_draws)
    assert full.full_draws == 2
    assert np.array_equal(pixels(frames[0]), pixels(frames[1]))
    # and the next frames blit on that background as on a full one
    extend(cur, np.arange(221, 231), np.full(10, 0.5), np.full(10, 1.0), 0.001, 100)
    snap = F.snapshot(runs, "classification")
    assert np.array_equal(pixels(partial.render(snap)), pixels(full.render(snap)))
    assert partial.full_draws == 1


def full_redraw(fig: F.LiveFigure) -> np.ndarray:
    """The figure's current frame drawn the plain way: every artist by matplotlib's own full draw, then
    the current run's (animated) lines over it."""
    fig.canvas.draw()
    for line in fig.current.values():
        line.axes.draw_artist(line)
    return pixels(fig.png())


@pytest.mark.parametrize("size, scale", [((720, 440), 1.0), ((560, 340), 2.0)])
def test_slider_restarts_reuse_the_drawn_axes_and_equal_a_full_draw(size, scale):
    """Runs restarted from the same weights start at the limits the last one started at: their first frame
    reuses the axes drawn then (ticks, grids, titles) and draws only lines and legends over them, and looks
    exactly as a full draw does."""
    fig = F.LiveFigure(size, scale)
    runs = []
    for r in range(3):
        runs.append(make_run(0, lr=1e-3 * (r + 1), note=f"lr {r}", status="running", epochs=3, seed=r))
        for k in range(3):          # three frames a run: its start, mid-way, its end
            steps = np.arange(k * 100 + 1, k * 100 + 101)
            norm = np.geomspace(1.0, 1e-3, 300)[k * 100:k * 100 + 100]     # falls below its axis late
            extend(runs[-1], steps, np.linspace(2.3, 0.3, 300)[k * 100:k * 100 + 100], norm, 1e-3 * (r + 1), 100)
            add_epoch(runs[-1], k + 1, "classification", 2.0 - 0.5 * k)
            if k == 2:
                runs[-1].status = "finished"
            frame = pixels(fig.render(F.snapshot(runs, "classification")))
            assert np.array_equal(frame, full_redraw(fig)), (r, k)
    assert fig.full_draws == 3, fig.full_draws          # a run's start; its end changes only y limits
    # the first restart has a faint run to fit the metric axis to as well; the second finds its axes
    assert fig.chrome_draws == 2, fig.chrome_draws


def test_an_x_limit_change_is_a_full_redraw():
    run = make_run(100, status="running", epochs=1)
    fig = F.LiveFigure()
    fig.render(F.snapshot([run], "classification"))
    extend(run, np.arange(101, 400), np.full(299, 0.5), np.full(299, 1e-6), 0.01, 100)   # past x_total, and y
    fig.render(F.snapshot([run], "classification"))
    assert (fig.full_draws, fig.partial_draws) == (2, 0)


def test_axis_headroom_keeps_full_redraws_rare_while_a_run_grows():
    # no planned length (a DataLoader without len): the x axis has to grow, by doubling
    rng = np.random.default_rng(0)
    run = Run(TrainConfig(), task="classification", note="first run")
    run.status = "running"
    fig = F.LiveFigure()
    step = 0
    for frame in range(100):
        k = 50
        steps = np.arange(step + 1, step + k + 1)
        step += k
        extend(run, steps, 2.0 * np.exp(-steps / 1500) + 0.05 * rng.random(k), np.exp(rng.standard_normal(k)),
               0.01, 250)
        if step % 250 == 0:
            add_epoch(run, step // 250, "classification", float(2.0 * np.exp(-step / 1500)))
        fig.update(F.snapshot([run], "classification"))
    assert fig.frames == 100
    assert fig.full_draws <= 8, fig.full_draws     # 5000 steps: log2 growth of x, not one per frame


# -- snapshots ------------------------------------------------------------------------------------------

def test_incremental_snapshots_equal_fresh_ones_also_after_thinning():
    run = make_run(300, capacity=1000, status="running")
    cache = F.SnapshotCache()
    rng = np.random.default_rng(1)
    step = 300
    for _ in range(30):
        k = int(rng.integers(1, 120))
        steps = np.arange(step + 1, step + k + 1)
        step += k
        extend(run, steps, rng.random(k), rng.random(k) + 0.1, 0.01, 100)
        cached = F.snapshot([run], "classification", cache=cache, max_points=10**6)
        fresh = F.snapshot([run], "classification", cache=F.SnapshotCache(), max_points=10**6)
        for s in F.SERIES:
            for a, b in zip(cached["runs"][0][s], fresh["runs"][0][s]):
                assert np.array_equal(a, b), s
    assert len(run.history) < step          # the history was thinned on the way


def test_unchanged_runs_are_not_decimated_again():
    runs = five_runs()
    cache = F.SnapshotCache()
    first = F.snapshot(runs, "classification", cache=cache)
    extend(runs[-1], [501], [0.4], [1.0], 0.001, 100)
    runs[-2].status = "stopped"
    second = F.snapshot(runs, "classification", cache=cache)
    assert second["runs"][1]["loss"][1] is first["runs"][1]["loss"][1]        # run 2: unchanged, reused
    assert second["runs"][-1]["loss"][0][-1] == 501                          # the current run: new point
    assert second["runs"][-2]["status"] == "stopped"                         # run 4 rebuilt
    assert second["stamp"] != first["stamp"]


def test_epochs_map_to_their_last_step_when_steps_per_epoch_is_unknown():
    run = make_run(350, steps_per_epoch=100)
    run.steps_per_epoch = None
    snap = F.snapshot([run], "classification")
    assert list(snap["runs"][0]["val_loss"][0]) == [100, 200, 300]
    assert snap["runs"][0]["x_total"] is None


def test_snapshot_of_real_trainer_runs(small_digits, make_mlp):
    import torch
    import nb_trainer as nbt
    torch.set_num_threads(1)
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10, hidden=8), train, val, store=None, diagnostics=False)
    t.start(lr=0.05, epochs=2, batch_size=64)
    t.wait(timeout=30)
    t.start(lr=0.01, epochs=2, batch_size=64)
    t.wait(timeout=30)
    snap = F.snapshot(t.runs, t.task)
    first, cur = snap["runs"]
    assert cur["current"] and not first["current"]
    assert cur["label"] == "run 2: lr 0.05 → 0.01"
    assert list(cur["val_loss"][0]) == [4.0, 8.0]            # 256 examples / 64 per batch = 4 steps per epoch
    assert list(cur["metric"][1]) == pytest.approx(t.runs[1].metric("val_accuracy"))
    assert list(cur["loss"][0]) == list(range(1, 9))
    assert R.render_png(snap).startswith(PNG_SIGNATURE)


# -- the renderer process -------------------------------------------------------------------------------

def test_renderer_process_returns_png_frames_of_the_asked_size(renderer):
    snap = F.snapshot(five_runs(), "classification")
    seq = renderer.submit("a", snap)
    png = renderer.wait("a", seq, timeout=60)
    assert png is not None and png.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == (720, 440)
    assert renderer.pid is not None and renderer.pid != os.getpid() and renderer.mode == "process"
    seq = renderer.submit("b", snap, size=(640, 400))
    assert Image.open(io.BytesIO(renderer.wait("b", seq, timeout=30))).size == (640, 400)
    assert renderer.poll("a") == png
    # the same drawing as in-process
    assert np.array_equal(pixels(png), pixels(R.render_png(snap)))


def test_the_newest_snapshot_wins_and_unchanged_snapshots_are_skipped(renderer):
    run = make_run(200, status="running", epochs=50)
    seqs = []
    for i in range(30):
        extend(run, [201 + i], [0.3], [1.0], 0.01, 100)
        seqs.append(renderer.submit("latest", F.snapshot([run], "classification")))
    png = renderer.wait("latest", seqs[-1], timeout=30)
    assert np.array_equal(pixels(png), pixels(R.render_png(F.snapshot([run], "classification"))))
    assert renderer.submit("latest", F.snapshot([run], "classification")) is None
    assert renderer.submit("latest", F.snapshot([run], "classification"), force=True) is not None


def test_callback_gets_each_frame(renderer):
    got = []
    seq = renderer.submit("cb", F.snapshot([make_run(100)], "classification"), callback=got.append)
    png = renderer.wait("cb", seq, timeout=30)
    assert got and got[-1] == png


def test_a_bad_snapshot_is_reported_and_the_renderer_keeps_going(renderer):
    pid = renderer.pid
    bad = F.snapshot([make_run(100)], "classification")
    bad["runs"][0]["loss"] = "not arrays"
    seq = renderer.submit("bad", bad)
    assert renderer.wait("bad", seq, timeout=30) is None
    assert "Traceback" in renderer.last_error
    seq = renderer.submit("bad", F.snapshot([make_run(100)], "classification"))
    assert renderer.wait("bad", seq, timeout=30).startswith(PNG_SIGNATURE)
    assert renderer.pid == pid


def test_interrupting_the_kernel_does_not_kill_the_renderer(renderer):
    assert renderer.wait("i", renderer.submit("i", F.snapshot([make_run(50)], "classification")), timeout=60)
    pid = renderer.pid
    os.kill(pid, signal.SIGINT)          # what "interrupt kernel" sends to the kernel's process group
    time.sleep(0.3)
    seq = renderer.submit("i", F.snapshot([make_run(60)], "classification"))
    assert renderer.wait("i", seq, timeout=30) is not None and renderer.pid == pid


def test_a_killed_renderer_is_reaped_and_restarted_on_the_next_frame():
    r = R.Renderer().start()
    try:
        seq = r.submit("k", F.snapshot([make_run(100)], "classification"))
        assert r.wait("k", seq, timeout=60) is not None
        old = r.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_state(old) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(old) is None           # reaped even without a new frame: no zombie
        seq = r.submit("k", F.snapshot([make_run(120)], "classification"))
        png = r.wait("k", seq, timeout=60)
        assert png is not None and png.startswith(PNG_SIGNATURE)
        assert r.pid not in (None, old) and r.restarts == 1 and r.mode == "process"
    finally:
        r.close()
    assert r.pid is None


def test_the_renderer_exits_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from nb_trainer.ui import render
        if __name__ == "__main__":
            r = render.get_renderer()
            while r.pid is None:
                time.sleep(0.02)
            print(r.pid, flush=True)
            time.sleep(600)
    """)
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert process_state(child) not in (None, "Z")
        parent.kill()            # SIGKILL: no atexit, no multiprocessing cleanup
        parent.wait()
        deadline = time.monotonic() + 5
        # gone, or exited and waiting for init to reap it (what init does is not ours to test)
        while process_state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(child) in (None, "Z")
    finally:
        parent.kill()


def test_close_stops_the_process():
    r = R.Renderer().start()
    seq = r.submit("c", F.snapshot([make_run(50)], "classification"))
    assert r.wait("c", seq, timeout=60) is not None
    pid = r.pid
    r.close()
    assert process_state(pid) is None and r.closed
    with pytest.raises(RuntimeError, match="closed"):
        r.submit("c", F.snapshot([make_run(50)], "classification"))


def test_get_renderer_is_shared_and_replaced_once_closed():
    a = R.get_renderer(start=False)
    assert R.get_renderer(start=False) is a
    a.close()
    b = R.get_renderer(start=False)
    assert b is not a and not b.closed
    b.close()


def test_falls_back_to_drawing_in_process_when_no_process_can_start(monkeypatch):
    class NoProcesses:
        def Pipe(self, duplex=True):
            raise OSError("no processes here")
    monkeypatch.setattr(R.multiprocessing, "get_context", lambda method: NoProcesses())
    r = R.Renderer().start()
    try:
        seq = r.submit("f", F.snapshot([make_run(100)], "classification"))
        png = r.wait("f", seq, timeout=30)
        assert png is not None and png.startswith(PNG_SIGNATURE)
        assert r.mode == "inprocess" and r.pid is None and "no processes here" in r.last_error
    finally:
        r.close()


@pytest.mark.slow
def test_in_process_drawing_keeps_to_its_time_budget(monkeypatch):
    # frames that each burn 40 ms of CPU; no burst allowance, no minimum interval:
    # only the budget paces them
    def expensive_render(self, snap):
        t = time.thread_time()
        while time.thread_time() - t < 0.04:
            pass
        return PNG_SIGNATURE
    monkeypatch.setattr(F.LiveFigure, "render", expensive_render)
    monkeypatch.setattr(R, "INPROCESS_BURST", 0.0)
    monkeypatch.setattr(R, "INPROCESS_MIN_INTERVAL", 0.0)
    monkeypatch.setattr(R, "INPROCESS_BUDGET", 0.1)
    r = R.Renderer(mode="inprocess").start()
    try:
        run = make_run(200, status="running", epochs=50)
        t0 = time.perf_counter()
        # a panel asking for 50 frames a second, for 2 s (longer on a busy machine, until 3 frames came)
        while (time.perf_counter() - t0 < 2.0 or r.frames < 3) and time.perf_counter() - t0 < 60:
            extend(run, [len(run.history) + 1], [0.3], [1.0], 0.01, 100)
            r.submit("ip", F.snapshot([run], "classification"))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        # unpaced that is ~2 s of drawing; paced, 10% of the wall time (+ the frame that crossed it)
        assert r.frames >= 3 and r.poll("ip") == PNG_SIGNATURE
        assert r.inprocess_cpu_s <= 0.1 * wall + 0.04 + 0.05, (r.inprocess_cpu_s, r.frames)
        assert r.mode == "inprocess" and r.pid is None
    finally:
        r.close()


def test_neither_pyplot_nor_torch_is_imported():
    code = textwrap.dedent("""
        import sys
        from nb_trainer.ui import figure, render
        png = render.render_png(figure.snapshot([], "classification"))
        assert png[:4] == b"\\x89PNG"
        print(sorted(m for m in ("matplotlib.pyplot", "torch") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_renderer_process_works_in_a_jupyter_kernel_and_ends_with_it(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    # a class defined in the notebook: the renderer must not need anything from __main__
    cell = textwrap.dedent("""
        import numpy as np
        from nb_trainer.ui import figure, render
        class History:
            version = 1
            def __len__(self): return 50
            def columns(self, *names):
                return {n: (list(range(1, 51)) if n == "step" else [1] * 50 if n == "epoch" else
                            list(np.linspace(2, 0.5, 50))) for n in names}
        class NotebookRun:
            id, note, status, epochs, steps_per_epoch, history = "nb", "first run", "running", [], 50, History()
        r = render.get_renderer()
        png = r.wait("k", r.submit("k", figure.snapshot([NotebookRun()], "classification")), timeout=60)
        print(r.mode, r.pid, png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", r.last_error)
    """)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    mode, pid, ok, err = out.split(maxsplit=3)
    assert (mode, ok) == ("process", "True"), out
    # nbclient shut the kernel down: the renderer went with it
    deadline = time.monotonic() + 5
    while process_state(int(pid)) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state(int(pid)) in (None, "Z")


def test_axis_limits_hold_while_data_fits_and_grow_with_headroom():
    assert F.fit_linear(0.2, 2.3) == (0.0, 2.5)                     # snug first fit, 0 included, nice top
    assert F.fit_linear(0.1, 2.4, old=(0.0, 2.5)) == (0.0, 2.5)     # fits: unchanged
    lo, hi = F.fit_linear(0.1, 3.0, old=(0.0, 2.5))                 # overflow: the data fills about half
    assert lo == 0.0 and hi >= 5.8
    assert F.fit_linear(0.6, 0.9, bounds=(0.0, 1.02))[1] <= 1.02
    assert F.fit_linear(-0.5, 1.0, old=(0.0, 2.5)) == (-2.0, 2.5)   # the lower side grows, the top stays
    assert F.fit_log(0.3, 20.0) == (0.01, 100.0)                    # at least half a decade of margin
    assert F.fit_log(0.5, 30.0, old=(0.01, 100.0)) == (0.01, 100.0)
    assert F.fit_log(0.5, 300.0, old=(0.01, 100.0)) == (0.01, 1e4)  # a decade more than needed, bottom kept


def test_bad_sizes_and_snapshots_are_refused_by_name(renderer):
    with pytest.raises(ValueError, match="size.*320"):
        F.LiveFigure((100, 100))
    with pytest.raises(TypeError, match="size"):
        renderer.submit("s", F.snapshot([], "classification"), size="big")
    with pytest.raises(TypeError, match="snapshot"):
        renderer.submit("s", [1, 2, 3])
    with pytest.raises(TypeError, match="callback"):
        renderer.submit("s", F.snapshot([], "classification"), callback="not callable")


# -- readable as shown ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_text_is_at_least_10_css_pixels_at_any_scale(scale):
    fig = F.LiveFigure((720, 440), scale=scale)
    fig.update(F.snapshot(five_runs(), "classification"))
    png = fig.png()
    assert Image.open(io.BytesIO(png)).size == (int(720 * scale), int(440 * scale))
    fig.canvas.draw()
    texts = [t for ax in fig.axes.values() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    texts += [t for leg in fig.fig.legends for t in leg.get_texts()]
    texts += [ax.title for ax in fig.axes.values()]
    # points at 72 dpi x scale: a point is a CSS pixel once the PNG is shown at size / scale
    css_px = [t.get_fontsize() * fig.fig.dpi / 72 / scale for t in texts]
    assert min(css_px) >= 10, min(css_px)


def test_long_legend_labels_wrap_instead_of_being_cut():
    runs = five_runs()
    note = "optimizer adam → adamw, lr 0.001 → 0.003, weight_decay 0 → 0.0001"
    runs[-1].note = note
    fig = F.LiveFigure((720, 440))
    fig.update(F.snapshot(runs, "classification"))
    texts = [t.get_text() for leg in fig.fig.legends for t in leg.get_texts()]
    current = next(t for t in texts if "current" in t)
    assert current.replace("\n", " ") == f"run 5: {note} — current" and "\n" in current


def test_axes_follow_the_current_run_not_an_earlier_one_that_blew_up():
    exploded = make_run(300, note="first run")
    exploded.history = StepHistory()
    extend(exploded, range(1, 301), np.geomspace(2.0, 1e8, 300), np.geomspace(1, 1e6, 300), 0.1, 100)
    fixed = make_run(200, lr=0.01, note="lr 0.1 → 0.01, grad_clip off → 1", seed=3, status="running", epochs=3)
    fig = F.LiveFigure()
    fig.update(F.snapshot([exploded, fixed], "classification"))
    lo, hi = fig.axes["loss"].get_ylim()
    assert hi < 20, (lo, hi)                       # the new run's 0.1-2.4, not the old run's 1e8
    assert fig.axes["grad_norm"].get_ylim()[1] < 1e4


def test_the_renderer_draws_at_the_asked_scale(renderer):
    seq = renderer.submit("s2", F.snapshot([make_run(100)], "classification"), size=(640, 400), scale=2)
    png = renderer.wait("s2", seq, timeout=60)
    assert Image.open(io.BytesIO(png)).size == (1280, 800)
    with pytest.raises(ValueError, match="scale"):
        renderer.submit("s2", F.snapshot([], "classification"), scale=5)


def test_frames_are_drawn_in_the_kernel_until_the_renderer_process_is_up(monkeypatch):
    # a renderer process that takes long to say "ready": frames do not wait for it
    monkeypatch.setattr(R.Renderer, "_check_ready", lambda self: False)
    r = R.Renderer().start()
    try:
        seq = r.submit("early", F.snapshot([make_run(100)], "classification"))
        png = r.wait("early", seq, timeout=60)
        assert png is not None and png.startswith(PNG_SIGNATURE)
        assert r.inprocess_cpu_s > 0 and r.mode == "process"
    finally:
        r.close()


class _SlowChild:
    """A renderer process's pipe end and process, answering a frame ``after`` seconds after it was sent."""

    def __init__(self, after: float, png: bytes):
        self.after, self.png, self.sent, self.msg = after, png, None, None

    def send(self, msg):
        self.sent, self.msg = time.monotonic(), msg

    def poll(self, timeout):
        left = self.sent + self.after - time.monotonic()
        if left > 0:
            time.sleep(min(timeout, left))
        return time.monotonic() >= self.sent + self.after

    def recv(self):
        _, key, seq, _, _ = self.msg
        return ("frame", key, seq, self.png, self.after * 1e3, 1)

    def is_alive(self):
        return True


@pytest.mark.parametrize("after, drawn_here", [(0.5, False), (2.5, True)])
def test_a_first_frame_is_drawn_in_the_kernel_only_when_the_renderer_is_late(after, drawn_here):
    # a renderer drawing a new panel's first frame on a new figure takes about half a second: waited
    # for, since the kernel would draw a new figure too (0.6-1 s holding the GIL, the training thread
    # all but stopped); one that has not answered after FIRST_FRAME_PATIENCE is starved: drawn here
    assert 0.5 < R.FIRST_FRAME_PATIENCE < 2.5
    child_png = F.LiveFigure((320, 200)).render(F.snapshot([], "classification"))
    r = R.Renderer()
    child = _SlowChild(after, child_png)
    r._conn, r._proc, r._ready = child, child, True
    try:
        assert r._draw_in_child("panel", 1, F.snapshot([make_run(100)], "classification"), (320, 200, 1.0))
        assert (r.inprocess_cpu_s > 0) is drawn_here
        assert r.last_error is None, r.last_error     # drawn here, it was a frame, not an error
        assert r.poll("panel") is child_png           # the renderer's frame, the last to land, is shown
    finally:
        r._conn = r._proc = None
        r.close()


def test_the_warm_up_figure_serves_the_first_panel_and_shows_nothing_of_the_warm_up():
    """The renderer's warm-up figure becomes the first figure of that geometry: its first frame of a real
    run is the same picture a new figure draws, and a figure of another geometry is made anew."""
    spare = R._warm_up()
    assert spare is not None and spare.full_draws == 1
    snap = F.snapshot(five_runs(), "classification")
    fresh = F.LiveFigure(R.DEFAULT_SIZE).render(snap)
    import collections
    spares, figures = [spare], collections.OrderedDict()
    fig = R._figure_for(figures, "panel-1", (*R.DEFAULT_SIZE, 1.0), spares)
    assert fig is spare and spares == []
    reused = fig.render(snap)
    assert np.array_equal(pixels(reused), pixels(fresh))
    assert R._figure_for(figures, "panel-1", (*R.DEFAULT_SIZE, 1.0), spares) is spare   # cached for its key
    other = R._warm_up()
    spares = [other]
    wide = R._figure_for(figures, "panel-2", (900, 500, 1.0), spares)
    assert wide is not other and spares == [other] and wide.size == (900, 500)


def test_an_idle_renderer_readies_a_figure_for_the_next_new_panel(monkeypatch):
    """A new panel's first frame is a redraw of a figure drawn before (about 0.15 s), not a new figure's
    first draw (0.6-1 s): the renderer makes one when idle, of the geometry of its latest frame."""
    # no first frame drawn in the kernel meanwhile (tested above): on a loaded machine that draw took
    # over SPARE_IDLE_SECONDS, the renderer sat idle behind it and made a spare "panel-2" then took
    monkeypatch.setattr(R, "FIRST_FRAME_PATIENCE", 600.0)
    snap = F.snapshot(five_runs(), "classification")
    r = R.Renderer().start()
    try:
        deadline = time.monotonic() + 60
        while not r._ready and time.monotonic() < deadline:     # frames before that are drawn in the kernel
            time.sleep(0.05)
        def first_frame(key, size):
            r.last_figure_draws = None
            png = r.wait(key, r.submit(key, snap, size=size), timeout=60)
            assert png is not None and png.startswith(PNG_SIGNATURE), r.last_error
            deadline = time.monotonic() + 60     # the process's frame
            while r.last_figure_draws is None and time.monotonic() < deadline:
                time.sleep(0.02)
            return r.last_figure_draws
        assert first_frame("panel-1", R.DEFAULT_SIZE) == 2           # the start-up warm-up's figure
        assert first_frame("panel-2", R.DEFAULT_SIZE) == 1           # no time to make another: a new figure
        time.sleep(R.SPARE_IDLE_SECONDS + 1.5)
        assert first_frame("panel-3", R.DEFAULT_SIZE) == 2           # made while idle
        assert first_frame("panel-4", (900, 500)) == 1               # another size: a new figure ...
        time.sleep(R.SPARE_IDLE_SECONDS + 1.5)
        assert first_frame("panel-5", (900, 500)) == 2               # ... and the next spare is of that size
        assert r.mode == "process"
    finally:
        r.close()


def test_a_closed_panels_figure_serves_the_next_new_panel_and_shows_nothing_of_the_old_one(monkeypatch):
    """Panels closed and made again (a cell run again, a new Trainer): the new panel's first frame is a redraw
    of the closed panel's figure (0.03-0.15 s), not a new figure's first draw (0.25-1 s), and is the picture a
    new figure draws of the new panel's runs."""
    monkeypatch.setattr(R, "FIRST_FRAME_PATIENCE", 600.0)     # the process's frames only (see above)
    old = F.snapshot(five_runs(), "classification")
    new = F.snapshot(five_runs(n=400)[1:3], "classification")
    fresh = F.LiveFigure(R.DEFAULT_SIZE).render(new)
    r = R.Renderer().start()
    try:
        deadline = time.monotonic() + 60
        while not r._ready and time.monotonic() < deadline:
            time.sleep(0.05)
        def first_frame(key, snap):
            r.last_figure_draws = None
            png = r.wait(key, r.submit(key, snap), timeout=60)
            assert png is not None and png.startswith(PNG_SIGNATURE), r.last_error
            return png, r.last_figure_draws
        _, draws = first_frame("panel-1", old)
        assert draws == 2                                   # the warm-up's figure
        _, draws = first_frame("panel-2", old)
        assert draws == 1                                   # no spare left: a new figure
        r.forget("panel-1")
        png, draws = first_frame("panel-3", new)
        assert draws == 3                                   # panel-1's figure, drawn twice before
        assert np.array_equal(pixels(png), pixels(fresh))
        r.forget("panel-2")
        r.forget("panel-3")
        _, draws = first_frame("panel-4", F.snapshot(five_runs(n=600)[2:4], "classification"))
        assert draws in (2, 4)                              # one of the two kept, not a new figure
        assert r.mode == "process" and r.last_error is None
    finally:
        r.close()
