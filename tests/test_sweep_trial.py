"""A trial's reports and the driver's mirror of them, without a Ray cluster.

The trial side (:class:`TrialReporter`) is run on a local Trainer with a list standing in
for ``tune.report``; the driver side (:class:`Sweep`'s trial handlers) is fed those reports
as Tune's callback would, and writes the store.
"""
from __future__ import annotations

import pytest

import nb_trainer as nbt
from nb_trainer.sweep.space import parse_space
from nb_trainer.sweep.sweep import Sweep, apply_report
from nb_trainer.sweep.trial import TrialReporter, trial_config


def _reported_run(trainer, **config):
    reports = []
    reporter = TrialReporter("val_accuracy", reports.append, history_points=50)
    trainer.callbacks.append(reporter)
    try:
        run = trainer.start(**config)
        trainer.wait()
    finally:
        trainer.callbacks.remove(reporter)
    return run, reports


@pytest.fixture
def trainer(digits, make_mlp, tmp_path):
    train, val = digits
    return nbt.Trainer(make_mlp(64, 10), train, val, store=str(tmp_path / "store"))


def test_a_trial_reports_every_epoch_then_how_it_ended(trainer):
    run, reports = _reported_run(trainer, epochs=3, lr=1e-2)
    assert [r["nbt"]["status"] for r in reports] == ["running"] * 3 + ["finished"]
    assert [r["epoch"] for r in reports] == [1, 2, 3, 3]
    assert [r["nbt"]["record"] for r in reports[:3]] == run.epochs
    assert reports[-1]["nbt"]["record"] is None
    assert reports[1]["val_accuracy"] == run.epochs[1]["val_accuracy"]   # Tune's metric, at the top
    # each step chunk is new: together they cover the run's steps in order, at most 50 points a report
    steps = [s for r in reports for s in r["nbt"]["history"]["step"]]
    assert steps == sorted(set(steps)) and steps[-1] == run.step
    assert all(len(r["nbt"]["history"]["step"]) <= 51 for r in reports)


def test_a_diverging_trial_ends_at_once_and_says_so(trainer):
    run, reports = _reported_run(trainer, optimizer="sgd", lr=10.0, epochs=20)
    final = reports[-1]["nbt"]
    assert final["status"] == "diverged" and run.status == "diverged"
    assert len(reports) - 1 == len(run.epochs) < 20
    assert "nan_loss" in [w["code"] for w in final["warnings"]]


def test_the_drivers_mirror_reads_like_the_run(trainer):
    run, reports = _reported_run(trainer, epochs=3, lr=1e-2)
    mirror = nbt.Run(run.config, task=run.task)
    for r in reports:
        apply_report(mirror, r["nbt"])
    assert mirror.epochs == run.epochs
    assert [w.to_dict() for w in mirror.warnings] == [w.to_dict() for w in run.warnings]
    assert (mirror.step, mirror.steps_per_epoch, mirror.best_epoch) == (run.step, run.steps_per_epoch,
                                                                         run.best_epoch)
    assert mirror.history.columns("step")["step"][-1] == run.step


def test_trial_values_go_over_the_fixed_config(trainer):
    import numpy as np
    base = trainer.config(epochs=4, optimizer="sgd")
    cfg = trial_config({"lr": np.float64(0.01), "batch_size": np.int64(32), "not_a_field": 1}, base)
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.optimizer) == (0.01, 32, 4, "sgd")
    assert type(cfg.batch_size) is int


def test_the_driver_writes_every_trial_to_the_store_tagged_with_the_sweep(trainer, tmp_path):
    space, base = parse_space({"lr": [1e-2, 10.0]}, trainer.config(optimizer="sgd", epochs=3))
    sweep = Sweep(trainer, space, base, 1, 2, "fifo")           # not started: fed by hand, as Tune would
    for trial_id, lr in (("t1", 1e-2), ("t2", 10.0)):
        _, reports = _reported_run(trainer, **base.replace(lr=lr).to_dict())
        sweep._trial_started(trial_id, {"lr": lr})
        for r in reports:
            sweep._trial_result(trial_id, {"lr": lr}, r)
        sweep._trial_ended(trial_id, None)
    assert [r.status for r in sweep.runs] == ["finished", "diverged"]
    assert sweep.best is sweep.runs[0]
    stored = {r.id: r for r in nbt.load_runs(str(tmp_path / "store")) if r.sweep == sweep.id}
    assert len(stored) == 2
    for run in sweep.runs:
        assert stored[run.id].status == run.status
        assert stored[run.id].epochs == run.epochs
        assert stored[run.id].note.startswith(f"trial {run.trial_number}: lr=")


def test_a_trial_the_scheduler_ends_is_recorded_stopped_with_why(trainer):
    space, base = parse_space({"lr": [1e-2, 1e-3]}, trainer.config(epochs=3))
    sweep = Sweep(trainer, space, base, 1, 2, "asha")
    _, reports = _reported_run(trainer, lr=1e-3, epochs=3)
    sweep._trial_started("t1", {"lr": 1e-3})
    sweep._trial_result("t1", {"lr": 1e-3}, reports[0])
    sweep._trial_ended("t1", None)
    run = sweep.runs[0]
    assert run.status == "stopped" and len(run.epochs) == 1
    assert "ASHA" in run.stop_reason


def test_the_control_keeps_each_sweeps_stop_flags_apart():
    import asyncio
    from nb_trainer.sweep.control import SweepControl

    async def scenario():
        c = SweepControl()
        waiting = asyncio.ensure_future(c.wait("sweep-b", "t1", 5.0))
        await c.stop("sweep-a", None, "sweep a was stopped")
        assert await c.wait("sweep-a", "t1", 0.01) == "sweep a was stopped"
        assert await c.wait("sweep-b", "t2", 0.01) is None        # another sweep's trial runs on
        await c.stop("sweep-b", "t1", "stopped early by ASHA")
        assert await asyncio.wait_for(waiting, 1.0) == "stopped early by ASHA"   # woken at once
        assert await c.wait("sweep-b", "t2", 0.01) is None
        await c.forget("sweep-a")
        await c.forget("sweep-b")
        assert await c.wait("sweep-a", "t1", 0.01) is None and await c.wait("sweep-b", "t1", 0.01) is None
    asyncio.run(scenario())
