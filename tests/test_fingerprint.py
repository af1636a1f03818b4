"""The fingerprint of a model and its data, and the store column that keeps it per run."""
from __future__ import annotations

import sqlite3

import pytest
import torch

import nb_trainer as nbt
from nb_trainer.fingerprint import fingerprint
from nb_trainer.store import RunStore, load_runs

from conftest import mlp


def test_same_architecture_and_data_shapes_give_the_same_fingerprint_whatever_the_weights():
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    a = fingerprint(mlp(8, 3, seed=0), (x, y), 100, 20, "classification")
    b = fingerprint(mlp(8, 3, seed=7), (x * 5, y), 100, 20, "classification")
    assert a == b and len(a) == 16


@pytest.mark.parametrize("change", ["hidden", "input", "examples", "task", "dtype"])
def test_a_different_model_or_data_gives_another_fingerprint(change):
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    base = fingerprint(mlp(8, 3), (x, y), 100, 20, "classification")
    other = {
        "hidden": lambda: fingerprint(mlp(8, 3, hidden=64), (x, y), 100, 20, "classification"),
        "input": lambda: fingerprint(mlp(8, 3), (torch.randn(32, 9), y), 100, 20, "classification"),
        "examples": lambda: fingerprint(mlp(8, 3), (x, y), 101, 20, "classification"),
        "task": lambda: fingerprint(mlp(8, 3), (x, y), 100, 20, "regression"),
        "dtype": lambda: fingerprint(mlp(8, 3), (x.double(), y), 100, 20, "classification"),
    }[change]()
    assert other != base


def test_dict_batches_have_a_fingerprint_too():
    batch = {"input_ids": torch.zeros(4, 16, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}
    assert fingerprint(mlp(8, 3), batch) == fingerprint(mlp(8, 3), dict(reversed(list(batch.items()))))


def test_each_stored_run_keeps_its_trainers_fingerprint(small_digits, tmp_path):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10, hidden=16), train, val, store=str(tmp_path / "s"), epochs=1)
    try:
        t.start().wait()
    finally:
        t.close()
    (record,) = load_runs(tmp_path / "s")
    assert record.fingerprint == t.fingerprint


def test_a_store_made_before_fingerprints_gains_the_column_and_reads_as_before(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    conn = sqlite3.connect(folder / "runs.sqlite")
    conn.executescript("""
        CREATE TABLE runs (id TEXT PRIMARY KEY, task TEXT, model TEXT, config TEXT NOT NULL,
            initial_config TEXT NOT NULL, status TEXT NOT NULL, error TEXT, stop_reason TEXT, note TEXT,
            parent TEXT, best_epoch INTEGER, best_val_loss REAL, steps INTEGER, changes TEXT, started_at REAL,
            ended_at REAL, updated_at REAL, weights TEXT, owner_host TEXT, owner_boot TEXT, owner_pid INTEGER,
            owner_start TEXT);
        INSERT INTO runs (id, task, config, initial_config, status) VALUES ('r1', 'classification', '{}', '{}',
            'finished');
        PRAGMA user_version = 1;
    """)
    conn.commit()
    conn.close()
    store = RunStore(folder)
    (record,) = store.runs()
    assert record.id == "r1" and record.fingerprint is None
