"""The panel's Sweep section and %nbsweep, without a cluster: the Trainer's ``sweep`` is stood in for
where only the arguments matter, and a Sweep is fed trial reports by hand (as Tune's callback
would) where the section must show trials."""
from __future__ import annotations

import re

import pytest

import nb_trainer as nbt
from nb_trainer.sweep.space import Choice, LogUniform, Uniform, parse_space
from nb_trainer.sweep.sweep import Sweep
from nb_trainer.sweep.trial import TrialReporter
from nb_trainer.ui.sweep_panel import default_range, parse_range, sweep_table_html

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def trainer(small_digits, make_mlp, tmp_path):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=str(tmp_path / "store"))
    yield t
    t.close()


class Recorder:
    """Stands in for Trainer.sweep: keeps the call, returns a sweep that is never started."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.calls = []

    def __call__(self, space, **kwargs):
        self.calls.append((space, kwargs))
        return None


def fed_sweep(trainer, lrs=(1e-2, 1e-4)):
    """A Sweep of ``trainer`` over ``lrs`` whose trials were trained by a twin Trainer (as a worker's) and
    reported as Tune would hand them over."""
    space, base = parse_space({"lr": list(lrs)}, trainer.config(epochs=3))
    sweep = Sweep(trainer, space, base, 1, 2, "fifo")
    worker = nbt.Trainer(trainer.model, trainer._sweep_data["train"], trainer._sweep_data["val"], store=None)
    worker.initial_state = trainer.initial_state
    for i, lr in enumerate(lrs):
        reports = []
        worker.callbacks.append(TrialReporter(sweep.metric, reports.append))
        worker.start(base.replace(lr=lr))
        worker.wait()
        worker.callbacks.pop()
        sweep._trial_started(f"t{i}", {"lr": lr})
        for r in reports:
            sweep._trial_result(f"t{i}", {"lr": lr}, r)
    trainer.sweeps.append(sweep)
    return sweep


def test_each_sweepable_control_has_a_row_with_a_range(trainer):
    section = trainer.panel().sweep
    assert set(section.rows) == {"lr", "weight_decay", "l1", "grad_clip", "momentum", "optimizer", "batch_size"}
    assert section.rows["lr"][1].value == default_range("lr", trainer.config().lr) == "0.0001 : 0.01"
    assert isinstance(parse_range("lr", "1e-4 : 1e-2"), LogUniform)
    assert isinstance(parse_range("momentum", "0.8:0.99"), Uniform)
    assert parse_range("batch_size", "32, 64") == Choice((32, 64))
    with pytest.raises(ValueError, match="low : high"):
        parse_range("lr", "1e-4")


def test_start_sweep_sweeps_the_ticked_rows_over_the_other_controls(trainer, monkeypatch):
    panel = trainer.panel()
    section = panel.sweep
    recorder = Recorder(trainer)
    monkeypatch.setattr(trainer, "sweep", recorder)
    section.buttons["start"].click()
    assert "tick at least one" in panel.message.value
    section.rows["lr"][0].value = True
    section.rows["optimizer"][0].value = True
    section.rows["optimizer"][1].value = "adam, sgd"
    panel.controls["epochs"].value = 4
    trainer.wait()
    section.trials.value, section.parallel.value, section.scheduler.value = 6, 2, "fifo"
    section.buttons["start"].click()
    (space, kwargs), = recorder.calls
    assert space == {"lr": LogUniform(1e-4, 1e-2), "optimizer": Choice(("adam", "sgd"))}
    assert kwargs["trials"] == 6 and kwargs["parallel"] == 2 and kwargs["scheduler"] == "fifo"
    assert kwargs["epochs"] == 4 and "lr" not in kwargs and "optimizer" not in kwargs


def test_the_section_lists_every_trial_and_use_best_sets_the_controls(trainer):
    panel = trainer.panel()
    section = panel.sweep
    sweep = fed_sweep(trainer)
    runs_before = len(trainer.runs)
    section.refresh()
    rows = re.findall(r"<tr class='nbt-trial-row'>(.*?)</tr>", section.table.value)
    assert len(rows) == 2 and all("3/3" in r for r in rows)
    assert "★" in rows[0] and "lr=0.01" in rows[0]              # trial 1 (lr 0.01) is the best
    assert "best: trial 1" in section.status.value
    best_first = sweep_table_html(sweep, trainer.task, sort="metric")
    assert best_first.index("lr=0.01") < best_first.index("lr=0.0001")
    assert not section.buttons["use_best"].disabled
    panel.controls["lr"].value = 3e-4
    trainer.wait()
    runs_before = len(trainer.runs)
    section.buttons["use_best"].click()
    assert panel.controls["lr"].value == pytest.approx(1e-2)
    trainer.wait()
    assert len(trainer.runs) == runs_before                      # Use best sets the controls; no run starts


def test_the_trials_are_drawn_in_the_panels_figure(trainer, wait_until):
    panel = trainer.panel()
    fed_sweep(trainer)
    assert trainer.runs == []                    # the panel itself has nothing to draw: the frame is the sweep's
    # the panel shows its placeholder frame at once; the sweep's drawn frame replaces it
    assert wait_until(lambda: panel.sweep._shown_png is not None, timeout=20)
    assert bytes(panel.plot.value) == panel.sweep._shown_png and bytes(panel.plot.value).startswith(b"\x89PNG")


# -- %nbsweep -------------------------------------------------------------------------------------------

@pytest.fixture
def shell(trainer, monkeypatch):
    from IPython.testing import globalipapp
    globalipapp.start_ipython()
    ip = globalipapp.get_ipython()
    monkeypatch.setattr(ip.display_formatter, "active_types", ["text/plain", "text/html"])   # as a notebook asks
    ip.run_line_magic("load_ext", "nb_trainer")
    recorder = Recorder(trainer)
    monkeypatch.setattr(trainer, "sweep", recorder)
    ip.user_ns["t"] = trainer
    yield ip, recorder
    ip.user_ns.pop("t", None)
    ip.run_line_magic("unload_ext", "nb_trainer")


def test_nbsweep_reads_ranges_grids_and_fixed_values(shell):
    ip, recorder = shell
    ip.run_line_magic("nbsweep", "t --lr 1e-4:1e-1 --momentum 0.8:0.95 --weight_decay 0,1e-4,1e-3 "
                                 "--optimizer adam,sgd --epochs 5 --trials 12 --parallel 2 --scheduler fifo")
    (space, kwargs), = recorder.calls
    assert space == {"lr": LogUniform(1e-4, 1e-1), "momentum": Uniform(0.8, 0.95),
                     "weight_decay": [0.0, 1e-4, 1e-3], "optimizer": ["adam", "sgd"]}
    assert kwargs == {"trials": 12, "parallel": 2, "scheduler": "fifo", "address": None, "epochs": 5}


def test_nbsweep_says_what_is_wrong(shell):
    from IPython.core.error import UsageError
    ip, _ = shell
    with pytest.raises(UsageError, match="at least one setting"):
        ip.run_line_magic("nbsweep", "t --epochs 5")
    with pytest.raises(UsageError, match="optimizer"):
        ip.run_line_magic("nbsweep", "t --optimizer adam:sgd")
    with pytest.raises(UsageError, match="lr"):
        ip.run_line_magic("nbsweep", "t --lr fast:slow")


def test_nbruns_all_lists_stored_trials_with_their_sweep(shell, trainer, tmp_path):
    from IPython.utils.capture import capture_output
    ip, _ = shell
    sweep = fed_sweep(trainer)
    with capture_output() as out:
        ip.run_line_magic("nbruns", f"--all --store {tmp_path / 'store'}")
    html = "".join(o.data.get("text/html", "") for o in out.outputs)
    assert html.count(sweep.id) == 2 and "(sweep " in html
