"""Export: epochs as CSV, a config as code that reproduces the run, TensorBoard event files."""
from __future__ import annotations

import csv
import io
import math
import random
import sys

import pytest

import nb_trainer as nbt
from nb_trainer.config import FIELDS, OPTIMIZERS, TrainConfig
from nb_trainer.export import config_snippet, epoch_columns, epochs_csv, write_tensorboard
from nb_trainer.run import Run


def _run_with_epochs() -> Run:
    run = Run(TrainConfig(lr=0.003), task="classification")
    run.epochs = [
        {"epoch": 1, "train_loss": 2.0 / 3.0, "val_loss": 0.1 + 0.2, "val_accuracy": 0.5, "lr": 0.003,
         "seconds": 1e-3},
        {"epoch": 2, "train_loss": float("nan"), "val_loss": 1e-300, "val_accuracy": None, "lr": 0.003,
         "seconds": 2.5, "extra": 7},
    ]
    return run


def test_csv_has_one_row_per_epoch_with_exact_values():
    run = _run_with_epochs()
    text = epochs_csv(run)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "epoch,train_loss,val_loss,val_accuracy,extra,lr,seconds"
    assert len(rows) == 2
    for row, record in zip(rows, run.epochs):
        for key, value in record.items():
            if value is None:
                assert row[key] == ""
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(float(row[key]))
            else:
                assert type(value)(row[key]) == value, key      # exact round trip
    assert rows[0]["extra"] == ""


def test_csv_is_written_to_a_file_when_asked(tmp_path):
    run = _run_with_epochs()
    path = tmp_path / "epochs.csv"
    assert epochs_csv(run, path) == path.read_text()


def test_csv_of_a_run_without_epochs_is_a_header_only():
    assert epochs_csv(Run(TrainConfig())) == "\n"
    assert epoch_columns([]) == []


def _started_with(snippet: str, previous: TrainConfig) -> TrainConfig:
    """Execute a snippet against a stand-in Trainer whose start() works like the real one."""
    class FakeTrainer:
        def __init__(self):
            self.started = None

        def start(self, config=None, **changes):
            config = previous.replace(**changes) if config is None else config.replace(**changes)
            self.started = config

        def change(self, **changes):
            raise AssertionError("live changes are comments, not code")

    t = FakeTrainer()
    exec(snippet, {"t": t, "nbt": nbt})
    return t.started


def _random_config(rng: random.Random) -> TrainConfig:
    return TrainConfig(optimizer=rng.choice(OPTIMIZERS), lr=10 ** rng.uniform(-5, 0),
                       momentum=rng.choice([0.9, 0.5, 0.0]), weight_decay=rng.choice([0.0, 1e-4]),
                       l1=rng.choice([0.0, 3e-6]), dropout=rng.choice([None, 0.0, 0.3]),
                       batch_size=rng.choice([64, 17]), epochs=rng.randint(1, 50), grad_clip=rng.choice([0.0, 1.5]),
                       patience=rng.choice([0, 4]), seed=rng.randint(0, 2**40))


def test_the_snippet_reproduces_the_config_whatever_ran_before():
    rng = random.Random(0)
    for _ in range(50):
        config, previous = _random_config(rng), _random_config(rng)
        snippet = config_snippet(config)
        assert _started_with(snippet, previous) == config
        # only the fields that differ from the defaults are listed
        listed = {name for name in FIELDS if f"{name}=" in snippet.splitlines()[-1]}
        assert listed == set(TrainConfig().diff(config))


def test_the_snippet_reads_like_a_start_call():
    snippet = config_snippet(TrainConfig(lr=0.003, optimizer="adamw"))
    assert snippet == 'import nb_trainer as nbt\nt.start(nbt.TrainConfig(), optimizer="adamw", lr=0.003)'
    assert config_snippet(TrainConfig(lr=0.003, optimizer="adamw"), form="changes") == \
        't.start(optimizer="adamw", lr=0.003)'
    assert config_snippet(TrainConfig(), form="changes") == "t.start()"
    assert config_snippet(TrainConfig(dropout=0.5), var="trainer", import_line=False) == \
        "trainer.start(nbt.TrainConfig(), dropout=0.5)"


def test_the_changes_form_lists_differences_from_a_base():
    base = TrainConfig(optimizer="sgd", lr=0.1, epochs=30)
    target = TrainConfig(optimizer="sgd", lr=0.01, epochs=30, weight_decay=1e-4)
    snippet = config_snippet(target, form="changes", base=base)
    assert snippet == "t.start(lr=0.01, weight_decay=0.0001)"
    assert _started_with(snippet, base) == target


def test_a_run_s_snippet_uses_its_starting_config_and_lists_live_changes_as_comments():
    run = Run(TrainConfig(lr=0.01, epochs=5))
    run.config = run.config.replace(lr=0.001)
    run.changes.append({"step": 40, "epoch": 2, "changes": {"lr": 0.001}})
    snippet = config_snippet(run)
    assert _started_with(snippet, TrainConfig(optimizer="sgd")) == TrainConfig(lr=0.01, epochs=5)
    assert snippet.splitlines()[-1] == "# changed live at step 40 (epoch 2): t.change(lr=0.001)"


def test_the_snippet_of_a_stored_run_restarts_it_on_a_real_trainer(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    first = t.start(epochs=2, lr=0.02, optimizer="momentum", batch_size=32, seed=3)
    t.wait()
    t.start(epochs=1, lr=0.5, optimizer="sgd")
    t.wait()
    [record, _] = nbt.load_runs(tmp_path / "s")
    exec(config_snippet(record), {"t": t})
    again = t.wait()
    assert again.config == first.config
    assert again.epochs[-1]["val_loss"] == first.epochs[-1]["val_loss"]     # same seed, same run


def test_bad_snippet_arguments_are_refused():
    with pytest.raises(ValueError, match="form='json'"):
        config_snippet(TrainConfig(), form="json")
    with pytest.raises(ValueError, match="var='t 2'"):
        config_snippet(TrainConfig(), var="t 2")


def test_tensorboard_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'nb_trainer\[tensorboard\]'"):
        write_tensorboard(_run_with_epochs(), "logs")


def test_tensorboard_event_files_hold_the_epoch_values(tmp_path, small_digits, make_mlp):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    run = t.start(epochs=3)
    t.wait()
    [record] = nbt.load_runs(tmp_path / "s")
    [folder] = write_tensorboard(run, tmp_path / "live")
    [stored_folder] = write_tensorboard([record], tmp_path / "stored")
    for where, has_steps in ((folder, True), (stored_folder, False)):
        acc = EventAccumulator(where)
        acc.Reload()
        tags = acc.Tags()["scalars"]
        values = [(e.step, e.value) for e in acc.Scalars("epoch/val_loss")]
        assert values == [(r["epoch"], pytest.approx(r["val_loss"], rel=1e-6)) for r in run.epochs]
        assert ("step/loss" in tags) == has_steps
