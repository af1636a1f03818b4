"""The run store: records round-trip, weights load safely, failures never stop training."""
from __future__ import annotations

import math
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import warnings

import pytest
import torch

import nb_trainer as nbt
from nb_trainer.config import TrainConfig
from nb_trainer.health.warning import HealthWarning
from nb_trainer.run import Run
from nb_trainer.store import (DB_NAME, RunRecord, RunStore, StoreCallback, StoreWarning, load_runs,
                              load_weights, owner_alive)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fabricated_run(run_id=None) -> Run:
    """A run with the awkward values a store must keep: NaN, inf, unicode, warnings, live changes."""
    config = TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-4, dropout=0.25, epochs=7, seed=11)
    run = Run(config, task="classification", note="lr 0.01 → 0.003 ünïcode", run_id=run_id)
    run.status = "running"
    run.started_at = time.time()
    run.warnings.append(HealthWarning("overfitting", "warning", "val loss up 20% since epoch 2",
                                      "raise weight_decay", fix={"weight_decay": 1e-3}, step=40, epoch=3))
    run.warnings.append(HealthWarning("class_imbalance", "info", "class 3 is 2% of the data",
                                      "weight the loss", fix={}, step=None, epoch=None))
    return run


def _add_epoch(run: Run, i: int, **extra) -> None:
    run.epochs.append({"epoch": i, "train_loss": 1 / 3 + i, "val_loss": 0.1 * i + 1e-17,
                       "val_accuracy": i / 7, "lr": run.config.lr, "seconds": 0.0123456789, **extra})
    run.step += 10


def test_record_round_trip_keeps_every_field_exactly(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated_run()
    store.record_start(run, "MLP")
    _add_epoch(run, 1, odd=float("nan"), inf=float("inf"))
    store.record_epoch(run)
    run.config = run.config.replace(lr=1e-3)          # a live change
    run.changes.append({"step": 15, "epoch": 2, "changes": {"lr": 1e-3}})
    _add_epoch(run, 2)
    run.warnings[0].count = 2
    run.best_epoch, run.best_val_loss = 1, run.epochs[0]["val_loss"]
    store.record_epoch(run)
    run.status, run.error, run.ended_at = "failed", ValueError("labels out of range"), time.time()
    run.stop_reason = "it failed"
    store.record_end(run, None)

    [rec] = load_runs(tmp_path / "s")
    assert isinstance(rec, RunRecord)
    assert rec.id == run.id
    assert rec.status == "failed" and rec.error == "ValueError: labels out of range"
    assert rec.config == run.config and rec.config.lr == 1e-3
    assert rec.initial_config == run.initial_config and rec.initial_config.lr == 3e-3
    assert rec.task == "classification" and rec.model == "MLP" and rec.note == run.note
    assert rec.changes == run.changes
    assert rec.best_epoch == 1 and rec.best_val_loss == run.best_val_loss
    assert rec.started_at == run.started_at and rec.ended_at == run.ended_at and rec.steps == 20
    assert rec.stop_reason == "it failed"
    assert len(rec.epochs) == 2
    first = rec.epochs[0]
    assert math.isnan(first.pop("odd")) and first.pop("inf") == math.inf
    expected = dict(run.epochs[0])
    expected.pop("odd"), expected.pop("inf")
    assert first == expected                           # floats exactly, not approximately
    assert rec.epochs[1] == run.epochs[1]
    assert [w.to_dict() for w in rec.warnings] == [w.to_dict() for w in run.warnings]
    assert rec.warnings[0].count == 2
    assert rec.weights_path is None


def test_trained_run_reads_back_as_it_was_in_memory(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    run = t.start(epochs=3, lr=0.01)
    t.wait()
    t.close()
    [rec] = nbt.load_runs(tmp_path / "s")
    mine, theirs = run.to_record(), rec.to_record()
    for key in ("id", "task", "config", "status", "error", "epochs", "warnings", "note", "best_epoch",
                "started_at", "ended_at", "steps"):
        assert theirs[key] == mine[key], key
    assert rec.status == "finished" and len(rec.epochs) == 3
    assert rec.model == "Sequential"


def test_best_weights_are_saved_and_load_back_into_a_model(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    best = {}

    class Keep:
        """Keep the weights of each epoch, to compare with what the store saved."""
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_epoch_end(self, run, engine, record):
            best[record["epoch"]] = {k: v.clone() for k, v in engine.model.state_dict().items()}

    t.callbacks.append(Keep())
    run = t.start(epochs=4, lr=0.05)
    t.wait()
    [rec] = nbt.load_runs(tmp_path / "s")
    assert rec.weights_path is not None and rec.weights_path.is_file()
    fresh = make_mlp(64, 10, seed=123)
    assert rec.load_into(fresh) is fresh
    assert _states_equal(fresh.state_dict(), best[run.best_epoch])
    assert _states_equal(load_weights(tmp_path / "s", run.id), best[run.best_epoch])
    assert _states_equal(rec.state_dict(), best[run.best_epoch])


def test_a_malicious_weights_file_is_refused_and_never_runs(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    run = t.start(epochs=1)
    t.wait()
    [rec] = nbt.load_runs(tmp_path / "s")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(rec.weights_path, "wb") as f:          # what a tampered or foreign file could hold
        pickle.dump({"0.weight": Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        rec.load_into(make_mlp(64, 10))
    with pytest.raises(pickle.UnpicklingError):
        load_weights(tmp_path / "s", run.id)
    assert not marker.exists()


def test_weights_of_a_run_without_finished_epochs_and_of_an_unknown_run(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated_run()
    store.record_start(run)
    run.status, run.ended_at = "stopped", time.time()
    store.record_end(run, None)
    with pytest.raises(FileNotFoundError, match="no saved weights"):
        load_weights(tmp_path / "s", run.id)
    with pytest.raises(KeyError, match="nope"):
        load_weights(tmp_path / "s", "nope")


def test_a_store_under_a_regular_file_warns_and_training_goes_on(tmp_path, small_digits, make_mlp):
    # a path under a regular file cannot be made a folder, even by root
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    where = blocker / "store"
    (x, y), val = small_digits
    with pytest.warns(StoreWarning) as caught:
        t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=where, diagnostics=False)
    message = str(caught[0].message)
    assert str(where) in message
    assert "Training goes on without a store" in message
    assert "NotADirectoryError" in message or "FileExistsError" in message
    assert caught[0].filename == __file__            # points at the user's Trainer(...) line
    assert t.store is None
    run = t.start(epochs=2)
    t.wait()
    assert run.status == "finished" and len(run.epochs) == 2
    assert blocker.read_text() == "not a folder"


def test_a_store_whose_database_cannot_be_opened_warns(tmp_path, small_digits, make_mlp):
    (tmp_path / "s" / DB_NAME).mkdir(parents=True)  # a folder where the database file should be
    (x, y), val = small_digits
    with pytest.warns(StoreWarning, match="unable to open database"):
        t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    assert t.store is None
    t.start(epochs=1)
    assert t.wait().status == "finished"


def test_store_none_keeps_nothing_on_disk(tmp_path, monkeypatch, small_digits, make_mlp):
    monkeypatch.chdir(tmp_path)
    (x, y), val = small_digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=None, diagnostics=False)
    t.start(epochs=2)
    t.wait()
    assert t.store is None and not any(isinstance(c, StoreCallback) for c in t.callbacks)
    assert list(tmp_path.iterdir()) == []


def test_default_store_is_dot_nb_trainer_in_the_working_folder(tmp_path, monkeypatch, small_digits, make_mlp):
    monkeypatch.chdir(tmp_path)
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, diagnostics=False)
    run = t.start(epochs=1)
    t.wait()
    assert (tmp_path / ".nb_trainer" / DB_NAME).is_file()
    assert [r.id for r in nbt.load_runs()] == [run.id]


def test_trainers_in_threads_share_one_store(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    trainers = [nbt.Trainer(make_mlp(64, 10, seed=i), (x, y), val, store=tmp_path / "s", diagnostics=False)
                for i in range(3)]
    runs = []
    for round_ in range(2):
        for t in trainers:                     # all three train at once, on their own threads
            runs.append(t.start(epochs=4, lr=0.01 * (round_ + 1)))
        for t in trainers:
            t.wait()
    records = {r.id: r for r in nbt.load_runs(tmp_path / "s")}
    assert len(records) == 6
    for run in runs:
        rec = records[run.id]
        assert rec.status == "finished" and rec.epochs == run.epochs and rec.config == run.config


def test_two_kernels_with_the_same_run_id_keep_both_runs(tmp_path):
    store_a, store_b = RunStore(tmp_path / "s"), RunStore(tmp_path / "s")
    a, b = _fabricated_run("20250101-120000-1"), _fabricated_run("20250101-120000-1")
    key_a = store_a.record_start(a)
    key_b = store_b.record_start(b)
    assert key_a == a.id and key_b != key_a and b.store_id == key_b
    _add_epoch(a, 1)
    _add_epoch(b, 1)
    b.epochs[0]["train_loss"] = 99.0
    store_a.record_epoch(a)
    store_b.record_epoch(b)
    records = {r.id: r for r in load_runs(tmp_path / "s")}
    assert records[key_a].epochs[0]["train_loss"] != 99.0
    assert records[key_b].epochs[0]["train_loss"] == 99.0


def test_a_store_write_that_fails_is_warned_and_caught_up(tmp_path, small_digits, make_mlp, monkeypatch):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    real = RunStore.record_epoch
    calls = []

    def flaky(self, run):
        calls.append(len(run.epochs))
        if len(calls) == 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self, run)

    monkeypatch.setattr(RunStore, "record_epoch", flaky)
    with pytest.warns(StoreWarning, match="database is locked"):
        run = t.start(epochs=4)
        t.wait()
    assert run.status == "finished" and run.error is None
    [rec] = nbt.load_runs(tmp_path / "s")
    assert [e["epoch"] for e in rec.epochs] == [1, 2, 3, 4]
    assert isinstance(t.store.last_error, sqlite3.OperationalError)


def test_a_live_run_of_this_process_reads_running(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated_run()
    store.record_start(run)
    [rec] = load_runs(tmp_path / "s")
    assert rec.status == "running" and not rec.done


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process start times come from /proc")
def test_owner_alive_sees_dead_reused_and_foreign_processes():
    import socket
    from nb_trainer.store import _BOOT_ID, _owner
    me = _owner()
    assert owner_alive(me["owner_host"], me["owner_boot"], me["owner_pid"], me["owner_start"]) is True
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()                                        # reaped: the pid is free
    assert owner_alive(socket.gethostname(), _BOOT_ID, done.pid, "12345") is False
    parent = os.getppid()                              # alive, but started at another time: a reused pid
    assert owner_alive(socket.gethostname(), _BOOT_ID, parent, "1") is False
    assert owner_alive(socket.gethostname(), "another-boot", parent, None) is (_BOOT_ID is None)
    assert owner_alive("some-other-host", _BOOT_ID, parent, "1") is None    # cannot tell: left as stored


def test_a_run_whose_process_died_reads_interrupted(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated_run()
    store.record_start(run)
    _add_epoch(run, 1)
    store.record_epoch(run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(tmp_path / "s" / DB_NAME) as conn:   # as if that process had written it
        conn.execute("UPDATE runs SET owner_pid=?, owner_start='1' WHERE id=?", (gone.pid, run.id))
    [rec] = load_runs(tmp_path / "s")
    assert rec.stored_status == "running" and rec.status == "interrupted" and rec.done
    assert "ended during the run" in rec.stop_reason and len(rec.epochs) == 1


def test_load_runs_of_a_missing_store_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=DB_NAME):
        load_runs(tmp_path / "empty")


def test_delete_removes_records_and_weights(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    keep, drop = t.start(epochs=1), None
    t.wait()
    drop = t.start(epochs=1, lr=0.01)
    t.wait()
    weights = [r.weights_path for r in nbt.load_runs(tmp_path / "s") if r.id == drop.id][0]
    assert t.store.delete(drop.id) is True and t.store.delete(drop.id) is False
    assert [r.id for r in nbt.load_runs(tmp_path / "s")] == [keep.id]
    assert not weights.exists()


def test_the_database_is_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = RunStore(tmp_path / "s")
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_a_config_from_another_version_reads_back_with_what_this_one_accepts(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated_run()
    store.record_start(run)
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("""UPDATE runs SET config='{"lr": 100.0, "epochs": 7, "cycle_length": 3}' WHERE id=?""", (run.id,))
    with pytest.warns(StoreWarning, match="could not be read in full"):
        [rec] = load_runs(tmp_path / "s")
    assert rec.config == TrainConfig(epochs=7)        # lr out of this version's range: the default
    assert rec.problems == ["config: lr=100.0 is not accepted by this version (left out)"]
