"""The panel driven by a Trainer, no frontend: widgets are plain Python objects here."""
from __future__ import annotations

import statistics
import time

import pytest
import torch

import nb_trainer as nbt
from nb_trainer.ui import status as S

from conftest import Slow, mlp, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def trainer(small_digits):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10, hidden=16), train, val, store=None, epochs=2)
    yield t
    t.close()


@pytest.fixture
def slow_trainer(small_digits):
    train, val = small_digits
    t = nbt.Trainer(Slow(mlp(64, 10, hidden=16), 0.005), train, val, store=None, epochs=50, batch_size=32)
    yield t
    t.close()


def test_controls_cover_every_config_field(trainer):
    panel = trainer.panel()
    assert set(panel.controls) == set(nbt.FIELDS)
    cfg = trainer.defaults
    assert panel.controls["lr"].value == pytest.approx(cfg.lr)
    assert panel.controls["optimizer"].value == cfg.optimizer
    assert panel.controls["weight_decay"].value == 0.0  # the "off" position


def test_recipe_controls_restart_with_their_values_and_float16_is_not_offered_on_a_cpu(trainer):
    panel = trainer.panel()
    assert "16" not in panel.controls["precision"].options and "bf16" in panel.controls["precision"].options
    panel.controls["schedule"].value = "onecycle"
    assert wait_until(lambda: len(trainer.runs) == 1, timeout=5)
    trainer.wait()
    panel.controls["accumulate"].value = 2
    assert wait_until(lambda: len(trainer.runs) == 2, timeout=5)
    run = trainer.wait()
    assert (run.config.schedule, run.config.accumulate) == ("onecycle", 2)
    assert run.steps_per_epoch == 2   # 256 examples, batches of 64, 2 a step


def test_lr_slider_spans_the_documented_range(trainer):
    lr = trainer.panel().controls["lr"]
    assert 10 ** lr.min == pytest.approx(1e-5) and 10 ** lr.max == pytest.approx(1.0)


def test_dropout_disabled_with_reason_when_model_has_none(trainer):
    dropout = trainer.panel().controls["dropout"]
    assert dropout.disabled
    assert "no nn.Dropout" in dropout.tooltip


def test_dropout_enabled_with_model_p(small_digits):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10, hidden=16, dropout=0.3), train, val, store=None)
    try:
        d = t.panel().controls["dropout"]
        assert not d.disabled and d.value == pytest.approx(0.3)
    finally:
        t.close()


def test_control_change_starts_a_run_with_that_value(trainer):
    panel = trainer.panel()
    panel.controls["lr"].value = 0.01
    assert wait_until(lambda: len(trainer.runs) == 1, timeout=5)
    assert trainer.runs[-1].config.lr == pytest.approx(0.01)
    trainer.wait()


def test_rapid_changes_end_in_exactly_one_run_with_the_last_value(trainer):
    panel = trainer.panel()
    values = [10 ** (-4 + 3 * i / 49) for i in range(50)]
    t0 = time.monotonic()
    for v in values:
        panel.controls["lr"].value = v
        time.sleep(0.01)
    assert time.monotonic() - t0 < 1.0
    time.sleep(0.8)  # past the debounce
    trainer.wait()
    assert len(trainer.runs) == 1
    assert trainer.runs[0].config.lr == pytest.approx(values[-1])


def test_live_mode_changes_running_optimizer_without_new_run(slow_trainer):
    panel = slow_trainer.panel()
    run = slow_trainer.start()
    assert wait_until(lambda: run.step >= 3)
    panel.mode.value = "live"
    panel.controls["lr"].value = 0.02
    assert wait_until(lambda: run.changes, timeout=3)
    assert len(slow_trainer.runs) == 1
    assert run.config.lr == pytest.approx(0.02)
    assert run.changes[-1]["changes"] == {"lr": pytest.approx(0.02)}
    assert run.status == "running"
    slow_trainer.stop()
    slow_trainer.wait()


def test_live_mode_restarts_for_fields_that_cannot_change_live(slow_trainer):
    panel = slow_trainer.panel()
    run = slow_trainer.start()
    assert wait_until(lambda: run.step >= 2)
    panel.mode.value = "live"
    panel.controls["batch_size"].value = 64
    assert wait_until(lambda: len(slow_trainer.runs) == 2, timeout=5)
    assert slow_trainer.runs[-1].config.batch_size == 64
    slow_trainer.stop()
    slow_trainer.wait()


def test_api_runs_show_their_config_in_the_controls(trainer):
    panel = trainer.panel()
    trainer.start(lr=3e-3, optimizer="sgd")
    trainer.wait()
    assert wait_until(lambda: panel.controls["optimizer"].value == "sgd")
    assert panel.controls["lr"].value == pytest.approx(3e-3)
    time.sleep(0.5)
    assert len(trainer.runs) == 1  # showing the config did not start another run


def test_bad_control_value_is_shown_not_raised(trainer):
    panel = trainer.panel()
    panel._on_control("lr", -1.0)
    assert "lr=-1.0" in panel.message.value
    assert not trainer.runs


def test_failed_run_shows_red_error(small_digits):
    class Boom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.calls = 0

        def forward(self, x):
            if self.training:
                self.calls += 1
                if self.calls > 3:
                    raise RuntimeError("boom at step 4")
            return self.lin(x)

    train, val = small_digits
    t = nbt.Trainer(Boom(), train, val, store=None)
    try:
        panel = t.panel()
        t.start()
        t.wait()
        panel.refresh()
        assert "failed" in panel.status.value and "#cf222e" in panel.status.value
        assert "boom at step 4" in panel.status.value
        assert panel.progress.bar_style == "danger"
    finally:
        t.close()


def test_warnings_with_fix_get_an_apply_button_that_retrains(trainer):
    panel = trainer.panel()
    run = trainer.start()
    trainer.wait()
    run.add_warning(nbt.HealthWarning("lr_too_high", "warning", "loss rose 3x", "lower lr", fix={"lr": 1e-4}))
    panel.refresh()
    row, text, button = panel.warning_rows[0]
    assert row.layout.display is None and "lr_too_high" in text.value
    assert "lr=0.0001" in button.description
    panel.apply_fix(0)
    assert panel.controls["lr"].value == pytest.approx(1e-4)
    assert len(trainer.runs) == 2 and trainer.runs[-1].config.lr == pytest.approx(1e-4)
    trainer.wait()


def test_runs_table_lists_runs_with_diff_and_status(trainer):
    trainer.start()
    trainer.wait()
    trainer.start(lr=0.01)
    trainer.wait()
    table = S.runs_table_html(trainer.runs, trainer.task)
    assert table.count("nbt-run-row") == 2
    assert "lr=0.01" in table and "finished" in table


def test_progress_text_has_epoch_step_rate(trainer):
    run = trainer.start()
    trainer.wait()
    done, total, text = S.progress(run)
    assert done == total
    assert f"epoch 2/2 · step {run.step}" in text and "steps/s" in text


def test_plot_gets_png_frames(trainer):
    panel = trainer.panel()
    trainer.start()
    trainer.wait()
    assert wait_until(lambda: panel.plot.value[:8] == b"\x89PNG\r\n\x1a\n", timeout=20)
    first = panel.plot.value
    trainer.start(lr=0.02)
    trainer.wait()
    assert wait_until(lambda: panel.plot.value != first, timeout=20)


def test_find_lr_button_shows_curve_and_sets_the_slider(trainer):
    panel = trainer.panel()
    panel.buttons["lr_find"].click()
    assert wait_until(lambda: "suggested lr" in panel.lr_text.value or "failed" in panel.lr_text.value, timeout=60)
    assert "suggested lr" in panel.lr_text.value, panel.lr_text.value
    assert panel.lr_plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    suggestion = panel._suggested_lr
    assert suggestion is not None and 1e-7 < suggestion < 10
    assert not trainer.runs  # the finder trains a copy: no run
    panel.use_lr.click()
    assert panel.controls["lr"].value == pytest.approx(suggestion)
    assert wait_until(lambda: len(trainer.runs) == 1, timeout=5)
    # the run takes the value as the slider and the suggestion show it (two significant digits)
    assert trainer.runs[-1].config.lr == float(f"{suggestion:.2g}")
    trainer.wait()


def test_code_button_shows_a_snippet_that_reproduces_the_run(trainer):
    panel = trainer.panel()
    trainer.start(lr=0.02, optimizer="sgd")
    trainer.wait()
    panel.refresh()
    panel.code_button.click()
    assert 'optimizer="sgd"' in panel.export_text.value and "lr=0.02" in panel.export_text.value


# -- what a person sees (issue: the panel as a person sees it) ---------------------------------------
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_plot_is_never_an_empty_image_and_the_renderer_starts_with_the_panel(trainer):
    from nb_trainer.ui import render
    panel = trainer.panel()
    assert bytes(panel.plot.value).startswith(PNG)       # a placeholder frame, not a broken-image icon
    renderer = render.get_renderer(start=False)
    assert renderer._thread is not None                  # started at build, ahead of the first frame


def test_start_with_nothing_changed_changes_nothing(small_digits):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10, hidden=16, dropout=0.1), train, val, store=None, epochs=1)
    try:
        panel = t.panel()
        panel.buttons["start"].click()
        t.wait()
        assert t.runs[0].note == "first run" and t.runs[0].config.dropout is None
        panel.buttons["start"].click()
        t.wait()
        assert t.runs[1].note == "same config", t.runs[1].note    # not "dropout None → 0.1"
    finally:
        t.close()


def test_start_reads_restart_while_a_run_trains(slow_trainer):
    panel = slow_trainer.panel()
    panel.refresh()
    assert panel.buttons["start"].description == "Start"
    slow_trainer.start()
    panel.refresh()
    assert panel.buttons["start"].description == "Restart"
    slow_trainer.stop()
    slow_trainer.wait()
    panel.refresh()
    assert panel.buttons["start"].description == "Start"


def test_slider_values_reach_the_run_as_the_slider_shows_them(trainer):
    from nb_trainer.export import config_snippet
    panel = trainer.panel()
    panel.controls["lr"].value = 10 ** -2.35                 # what ArrowRight from 4e-3 gives: 0.0044668...
    assert wait_until(lambda: len(trainer.runs) == 1, timeout=5)
    run = trainer.wait()
    assert run.config.lr == 0.0045                            # the readout says 4.5e-3
    assert "lr=0.0045" in config_snippet(run) and "0.00446" not in config_snippet(run)


def test_rate_and_eta_stand_still_while_paused():
    clock = S.PauseClock()

    class FakeRun:
        config = nbt.TrainConfig(epochs=10)
        steps_per_epoch, step, epoch, epochs, status = 100, 300, 4, [{}] * 3, "running"
        started_at, ended_at = 1000.0, None
    run = FakeRun()
    clock.observe(run, now=1010.0)
    run.status = "paused"
    clock.observe(run, now=1010.0)
    assert clock.active_seconds(run, now=1010.0) == clock.active_seconds(run, now=1100.0) == 10.0
    run.status = "running"
    clock.observe(run, now=1100.0)
    assert clock.active_seconds(run, now=1105.0) == 15.0      # the 90 s paused do not count


def test_progress_and_runs_table_agree_on_epochs_after_stop(slow_trainer):
    run = slow_trainer.start(epochs=50)
    assert wait_until(lambda: len(run.epochs) >= 1 and run.step > run.steps_per_epoch * len(run.epochs) + 1,
                      timeout=20)
    slow_trainer.stop()
    slow_trainer.wait()
    _, _, text = S.progress(run)
    table = S.runs_table_html(slow_trainer.runs, slow_trainer.task)
    assert f"epoch {len(run.epochs)}/50" in text and f"<td>{len(run.epochs)}/50</td>" in table


def test_a_live_change_shows_in_the_status_and_the_table_keeps_the_starting_config(slow_trainer):
    panel = slow_trainer.panel()
    run = slow_trainer.start(lr=1e-3)
    assert wait_until(lambda: run.step >= 3)
    slow_trainer.change(lr=3e-3)
    assert wait_until(lambda: run.changes, timeout=5)
    slow_trainer.stop()
    slow_trainer.wait()
    panel.refresh()
    assert "lr 0.001 → 0.003 (live, step" in panel.status.value
    row = S.runs_table_html(slow_trainer.runs, slow_trainer.task)
    assert "lr=0.001" in row or "adam, lr=0.001" in row
    assert "→ live: lr=0.003" in row


def test_csv_button_shows_a_link_that_downloads_the_epochs(trainer):
    import base64
    import re
    from nb_trainer.export import epochs_csv
    panel = trainer.panel()
    run = trainer.start()
    trainer.wait()
    panel.refresh()
    panel.csv_button.click()
    link = panel.download.value
    assert "download=" in link and panel.download.layout.display is None
    data = re.search(r"href='data:text/csv;base64,([^']+)'", link).group(1)
    assert base64.b64decode(data).decode() == epochs_csv(run)


def test_the_static_rendering_carries_the_figure_the_status_and_the_runs(trainer, monkeypatch):
    from nb_trainer.ui import static
    published = []
    monkeypatch.setattr(static, "publish", lambda data, display_id, update: published.append((data, update)))
    panel = trainer.panel()
    panel._display_id = "nbt-test"                   # what displaying the panel sets
    panel._static_sig = panel._static_signature()
    trainer.start()
    trainer.wait()
    trainer.start(lr=0.02)
    trainer.wait()
    assert wait_until(lambda: published, timeout=30)
    assert wait_until(lambda: "run 2 finished" in published[-1][0]["text/plain"], timeout=30)
    data, update = published[-1]
    assert update and data["text/html"].count("nbt-run-row") == 2
    assert "data:image/png;base64," in data["text/html"]
    import base64
    assert base64.b64decode(data["image/png"]).startswith(PNG)
    assert "best val accuracy" in data["text/plain"] and "Panel(" not in data["text/plain"]
    n = len(published)
    assert not panel.publish_static()                # nothing changed: nothing sent again
    assert len(published) == n


def test_a_runs_end_is_saved_while_its_thread_is_still_finishing(trainer, monkeypatch):
    # RUN_ENDED comes (and the status is final) a moment before the run's thread is gone: the saved
    # rendering must not wait for the thread, nor for the panel's next refresh (FRAME_SECONDS later)
    import threading
    from nb_trainer.ui import static
    published = []
    monkeypatch.setattr(static, "publish", lambda data, display_id, update: published.append(data))
    panel = trainer.panel()
    panel._display_id = "nbt-test"
    panel._static_sig = panel._static_signature()
    trainer.start()
    trainer.wait()
    release = threading.Event()
    lingering = threading.Thread(target=release.wait, daemon=True)
    lingering.start()
    trainer._thread = lingering                      # the run's thread, still running its last lines
    try:
        assert trainer.running and trainer.current.status == "finished"
        n = len(published)
        panel._static_sig = None                     # as if this run's end had not been published yet
        panel._wake.set()
        # the panel's thread publishes it (or this call does, if it comes first)
        assert panel.publish_static() or wait_until(lambda: len(published) > n, timeout=30)
        assert "run 1 finished" in published[-1]["text/plain"]
    finally:
        release.set()


def test_the_panel_lists_and_draws_this_models_runs_of_earlier_kernels(small_digits, tmp_path, monkeypatch):
    from nb_trainer.ui import earlier, figure
    train, val = small_digits
    old = nbt.Trainer(mlp(64, 10, hidden=16), train, val, store=str(tmp_path / "s"), epochs=2)
    old.start().wait()
    old.start(lr=3e-3).wait()
    old.close()
    other = nbt.Trainer(mlp(64, 10, hidden=24), train, val, store=str(tmp_path / "s"), epochs=2)
    other.start().wait()
    other.close()
    # a new kernel: another process
    monkeypatch.setattr(earlier, "_this_process", lambda: ("another-host", -1))
    new = nbt.Trainer(mlp(64, 10, hidden=16, seed=5), train, val, store=str(tmp_path / "s"), epochs=2)
    try:
        panel = new.panel()
        assert [r.config.lr for r in panel.earlier] == [1e-3, 3e-3]      # same architecture only
        table = panel.runs_table.value
        assert table.count("nbt-run-row nbt-earlier") == 2
        assert "earlier kernels" in table
        snap = figure.snapshot(panel.plot_runs(), new.task)
        assert [r["label"] for r in snap["runs"]] == ["earlier 1", "earlier 2: lr 0.001 → 0.003"]
        assert not any(r["current"] for r in snap["runs"])
        for drawn, run in zip(snap["runs"], old.runs):
            # the gradient-norm panel too: each epoch's median norm, as its record in the store kept it
            h = run.history.columns("epoch", "grad_norm")
            want = [statistics.median(g for e, g in zip(h["epoch"], h["grad_norm"]) if e == n) for n in (1, 2)]
            assert list(drawn["grad_norm"][1]) == pytest.approx(want, rel=1e-5)
            assert list(drawn["loss"][1]) == pytest.approx([e["train_loss"] for e in run.epochs], rel=1e-5)
        new.start().wait()
        snap = figure.snapshot(panel.plot_runs(), new.task)
        assert snap["runs"][-1]["label"] == "run 1: first run" and snap["runs"][-1]["current"]
        panel.show_earlier.value = False
        assert len(panel.plot_runs()) == 1
    finally:
        new.close()
