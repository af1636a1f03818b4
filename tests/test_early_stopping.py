"""Early stopping (TrainConfig.patience): scripted val-loss sequences, best weights restored."""
from __future__ import annotations

import pytest
import torch

import nb_trainer as nbt
from nb_trainer.engine import Engine


@pytest.fixture
def scripted_val_loss(monkeypatch):
    """Make the engine's validation return a scripted val loss per epoch (no real evaluation)."""
    def script(losses):
        def evaluate(self, source, prefix="val_"):
            return {prefix + "loss": losses[self.run_.epoch - 1]}
        monkeypatch.setattr(Engine, "evaluate", evaluate)
    return script


class WeightsPerEpoch:
    """Keeps a copy of the model's weights at the end of every epoch."""

    def __init__(self):
        self.states = {}

    def on_run_start(self, run, engine): ...
    def on_log(self, run, engine, new): ...
    def on_probe(self, run, engine, probe): ...
    def on_run_end(self, run, engine): ...

    def on_epoch_end(self, run, engine, record):
        self.states[record["epoch"]] = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trainer(small_digits, make_mlp, **kw):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, diagnostics=False, **kw)
    keep = WeightsPerEpoch()
    t.callbacks.append(keep)
    return t, keep


def test_it_stops_after_patience_epochs_and_restores_the_best_weights(small_digits, make_mlp,
                                                                       scripted_val_loss, tmp_path):
    scripted_val_loss([1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.8, 0.6, 0.5, 0.4])
    t, keep = _trainer(small_digits, make_mlp, store=tmp_path / "s")
    run = t.start(epochs=10, patience=3, lr=0.05)
    t.wait()
    assert run.status == "stopped"
    assert [e["epoch"] for e in run.epochs] == [1, 2, 3, 4, 5, 6, 7]   # 3 epochs after the best (4)
    assert run.best_epoch == 4 and run.best_val_loss == 0.7
    assert "early stopping" in run.stop_reason and "epoch 4" in run.stop_reason
    assert not _same(keep.states[7], keep.states[4])
    assert _same(t.model.state_dict(), keep.states[4])
    # the store saved the best epoch's weights, and says why the run stopped
    [rec] = nbt.load_runs(tmp_path / "s")
    assert rec.status == "stopped" and rec.best_epoch == 4 and "early stopping" in rec.stop_reason
    assert _same(rec.state_dict(), keep.states[4])


def test_an_equal_val_loss_is_no_improvement(small_digits, make_mlp, scripted_val_loss):
    scripted_val_loss([0.5, 0.5, 0.5, 0.5, 0.5])
    t, keep = _trainer(small_digits, make_mlp, store=None)
    run = t.start(epochs=5, patience=2, lr=0.05)
    t.wait()
    assert len(run.epochs) == 3 and run.best_epoch == 1
    assert _same(t.model.state_dict(), keep.states[1])


def test_an_improvement_in_time_resets_the_count(small_digits, make_mlp, scripted_val_loss):
    scripted_val_loss([1.0, 1.1, 0.9, 1.2, 0.8, 1.3, 1.4, 1.5, 1.6])
    t, keep = _trainer(small_digits, make_mlp, store=None)
    run = t.start(epochs=9, patience=2, lr=0.05)
    t.wait()
    assert [e["epoch"] for e in run.epochs] == [1, 2, 3, 4, 5, 6, 7]
    assert run.status == "stopped" and run.best_epoch == 5
    assert _same(t.model.state_dict(), keep.states[5])


def test_patience_zero_never_stops_early(small_digits, make_mlp, scripted_val_loss):
    scripted_val_loss([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    t, keep = _trainer(small_digits, make_mlp, store=None)
    run = t.start(epochs=6, patience=0, lr=0.05)
    t.wait()
    assert run.status == "finished" and len(run.epochs) == 6
    assert _same(t.model.state_dict(), keep.states[6])        # last weights, not the best


def test_early_stopping_on_a_real_overfitting_run(small_digits, make_mlp):
    # 256 training examples and a large lr: the val loss turns up within a few epochs
    t, keep = _trainer(small_digits, make_mlp, store=None)
    run = t.start(epochs=60, patience=3, lr=0.02, optimizer="adam", batch_size=16)
    t.wait()
    assert run.status == "stopped", run.metric("val_loss")
    losses = run.metric("val_loss")
    assert run.best_epoch == 1 + losses.index(min(losses))
    assert len(run.epochs) == run.best_epoch + 3
    assert _same(t.model.state_dict(), keep.states[run.best_epoch])
    assert t.evaluate()["loss"] == pytest.approx(min(losses), rel=1e-5)


# -- the callback alone, on scripted val losses (no training), as keras' early_stopping_test ----

class ScriptedEngine:
    """What EarlyStopping reads and calls on the engine."""

    def __init__(self, epochs):
        self.config = nbt.TrainConfig(epochs=epochs)
        self.stopped = None
        self.restored = 0

    def request_stop(self, reason):
        self.stopped = reason

    def restore_best(self):
        self.restored += 1


def _feed(losses, patience, epochs=None, key="val_loss"):
    from nb_trainer.callbacks import EarlyStopping
    from nb_trainer.run import Run
    cb = EarlyStopping(patience)
    engine = ScriptedEngine(epochs or len(losses))
    run = Run(engine.config)
    cb.on_run_start(run, engine)
    for epoch, value in enumerate(losses, 1):
        cb.on_epoch_end(run, engine, {"epoch": epoch, key: value})
        if engine.stopped:
            return epoch, engine, run, cb
    return None, engine, run, cb


@pytest.mark.parametrize("losses,patience,stops_at,best", [
    ([1.0, 0.9, 0.8, 0.7], 2, None, 4),               # always improving: never stops
    ([1.0, 0.9, 0.95, 0.96], 2, 4, 2),                # two epochs without a better loss after epoch 2
    ([1.0, float("nan"), 1.1, 1.2], 3, 4, 1),         # NaN is never an improvement
    ([0.5, 0.5, 0.5, 0.5, 0.5], 3, 4, 1),             # equal is not better
])
def test_scripted_sequences(losses, patience, stops_at, best):
    stopped, engine, run, cb = _feed(losses, patience, epochs=10)
    assert stopped == stops_at
    assert cb.best_epoch == best
    if stops_at:
        assert engine.restored == 1 and f"epoch {best}" in engine.stopped


def test_patience_running_out_on_the_last_epoch_finishes_with_the_best_weights():
    stopped, engine, run, _ = _feed([1.0, 0.8, 0.9, 0.95], patience=2, epochs=4)
    assert stopped is None and engine.restored == 1
    assert "early stopping" in run.stop_reason and "epoch 2" in run.stop_reason


def test_it_watches_the_train_loss_without_val_data():
    stopped, *_ = _feed([1.0, 0.9, 0.95, 0.99], patience=2, epochs=10, key="train_loss")
    assert stopped == 4


def test_a_patience_below_one_is_refused():
    from nb_trainer.callbacks import EarlyStopping
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)
