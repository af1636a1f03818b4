"""Bad input is refused at the door: in the caller's thread, before any thread starts,
with an error that names the argument, the value and what is accepted."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import nb_trainer as nbt
from nb_trainer.config import FIELDS, LIVE_FIELDS, TrainConfig


@pytest.mark.parametrize("field, value, accepted", [
    ("lr", 0.0, "> 0"),
    ("lr", -1e-3, "> 0"),
    ("lr", float("nan"), "a number"),
    ("optimizer", "adagrad", "'sgd'"),
    ("optimizer", 3, "'adam'"),
    ("batch_size", 0, ">= 1"),
    ("batch_size", 2.5, "an integer"),
    ("dropout", 1.0, "< 1"),
    ("dropout", -0.1, ">= 0"),
    ("epochs", 0, ">= 1"),
    ("weight_decay", -1e-4, ">= 0"),
    ("l1", -1e-5, ">= 0"),
    ("grad_clip", -1.0, ">= 0"),
    ("momentum", 1.0, "< 1"),
    ("patience", -1, ">= 0"),
    ("lr", True, "a number"),
    ("epochs", False, "an integer"),
    ("batch_size", "64", "an integer"),
])
def test_bad_value_raises_value_error_naming_field_value_and_accepted(field, value, accepted):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    text = str(info.value)
    assert field in text
    assert repr(value) in text
    assert accepted in text


def test_unknown_field_is_named_with_the_accepted_names():
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"learning_rate": 0.1})
    text = str(info.value)
    assert "'learning_rate'" in text
    for name in FIELDS:
        assert name in text


def test_replace_validates_like_a_new_config():
    cfg = TrainConfig(lr=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        cfg.replace(batch_size=0)
    with pytest.raises(ValueError, match="unknown training option 'lrr'"):
        cfg.replace(lrr=0.1)


def test_config_is_frozen_and_normalised():
    cfg = TrainConfig(optimizer="AdamW", lr=1, batch_size=32.0, dropout=None)
    assert cfg.optimizer == "adamw"
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert isinstance(cfg.batch_size, int) and cfg.batch_size == 32
    with pytest.raises(Exception):
        cfg.lr = 0.5  # type: ignore[misc]


def test_numpy_scalars_are_accepted():
    cfg = TrainConfig(lr=np.float32(0.01), epochs=np.int64(3))
    assert cfg.epochs == 3 and abs(cfg.lr - 0.01) < 1e-8


def test_every_field_has_a_valid_default_inside_its_slider_range():
    cfg = TrainConfig()
    for name, spec in FIELDS.items():
        value = getattr(cfg, name)
        if spec.kind == "choice" or value is None or value == spec.off or spec.slider_low is None:
            continue
        assert spec.slider_low <= value <= spec.slider_high, name
    assert set(LIVE_FIELDS) <= set(FIELDS)
    assert "batch_size" not in LIVE_FIELDS and "optimizer" not in LIVE_FIELDS


# -- the Trainer's door ---------------------------------------------------------

@pytest.fixture
def data(small_digits):
    return small_digits


def test_model_that_is_not_a_module_raises_type_error(data):
    train, val = data
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        nbt.Trainer(lambda x: x, train, val, store=None)


@pytest.mark.parametrize("kwargs, words", [
    ({"task": "clustering"}, ["task='clustering'", "'regression'"]),
    ({"loss": "hinge"}, ["loss='hinge'", "cross_entropy"]),
    ({"device": "tpu:banana"}, ["device='tpu:banana'", "'cpu'"]),
    ({"lr": -1.0}, ["lr=-1.0", "> 0"]),
    ({"learning_rate": 0.1}, ["'learning_rate'"]),
])
def test_bad_trainer_arguments_raise_value_error(data, make_mlp, kwargs, words):
    train, val = data
    with pytest.raises(ValueError) as info:
        nbt.Trainer(make_mlp(64, 10), train, val, store=None, **kwargs)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("train", [
    "digits.csv",
    42,
    {"x": 1},
    (torch.zeros(4, 2),),
])
def test_train_of_a_wrong_type_raises_type_error(make_mlp, train):
    with pytest.raises(TypeError, match="train"):
        nbt.Trainer(make_mlp(2, 2), train, store=None)


def test_val_of_a_wrong_type_raises_type_error(data, make_mlp):
    train, _ = data
    with pytest.raises(TypeError, match="val"):
        nbt.Trainer(make_mlp(64, 10), train, val=[1, 2, 3], store=None)


def test_length_mismatch_raises_value_error_with_both_lengths(make_mlp):
    x, y = torch.randn(10, 3), torch.randint(0, 2, (9,))
    with pytest.raises(ValueError) as info:
        nbt.Trainer(make_mlp(3, 2), (x, y), store=None)
    assert "10" in str(info.value) and "9" in str(info.value)


def test_errors_raise_before_any_thread_starts(data, make_mlp):
    train, val = data
    before = threading.active_count()
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    for bad in ({"lr": 0}, {"optimizer": "lbfgs"}, {"batch_size": 0}, {"dropout": 1.5},
                {"epochs": 0}, {"grad_clip": -1}, {"nonsense": 1}, {"lr": True}):
        with pytest.raises(ValueError):
            t.start(**bad)
    assert t.runs == []
    assert not t.running
    assert threading.active_count() == before


def test_bad_start_does_not_stop_the_running_run(data, slow_model):
    train, val = data
    t = nbt.Trainer(slow_model(), train, val, store=None)
    run = t.start(epochs=50)
    try:
        with pytest.raises(ValueError, match="epochs"):
            t.start(epochs=0)
        assert t.running and run.status == "running"
        assert t.runs == [run]
    finally:
        t.stop()
        t.wait()


def test_bad_live_change_raises_in_the_callers_thread(data, slow_model):
    train, val = data
    t = nbt.Trainer(slow_model(), train, val, store=None)
    run = t.start(epochs=50)
    try:
        with pytest.raises(ValueError, match="lr=-0.1"):
            t.change(lr=-0.1)
        with pytest.raises(ValueError, match="batch_size cannot change while a run trains"):
            t.change(batch_size=8)
        assert run.changes == [] and t.running
    finally:
        t.stop()
        t.wait()
