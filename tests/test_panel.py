"""The panel driven by a Trainer, no frontend: widgets are plain Python objects here."""
from __future__ import annotations

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
    assert trainer.runs[-1].config.lr == pytest.approx(suggestion)
    trainer.wait()


def test_code_button_shows_a_snippet_that_reproduces_the_run(trainer):
    panel = trainer.panel()
    trainer.start(lr=0.02, optimizer="sgd")
    trainer.wait()
    panel.refresh()
    panel.code_button.click()
    assert 'optimizer="sgd"' in panel.export_text.value and "lr=0.02" in panel.export_text.value
