"""Checks at the door: what Trainer(...) and start() refuse, in the caller's thread, and in whose words.

Every refusal names the argument, the value and what is accepted; none leaves
the Trainer unusable.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nb_trainer as nbt
from nb_trainer.config import MAX_PENALTY, OPTIMIZERS


@pytest.fixture
def data(small_digits):
    return small_digits


def _trainer(make_mlp, data, **kwargs):
    train, val = data
    return nbt.Trainer(make_mlp(64, 10), train, val, store=None, diagnostics=False, **kwargs)


# -- 2. start()'s positional argument ------------------------------------------------------------------

@pytest.mark.parametrize("value, hint", [
    ("adam", "optimizer='adam'"),
    ({"lr": 0.1}, r"t.start\(\*\*options\)"),
    (0.1, "TrainConfig or None"),
    (nbt.TrainConfig, "TrainConfig or None"),       # the class, not an instance
])
@pytest.mark.parametrize("after_a_run", [False, True], ids=["fresh", "after_a_run"])
def test_a_start_value_that_is_not_a_config_is_refused_and_the_trainer_stays_usable(make_mlp, data, value, hint,
                                                                                   after_a_run):
    t = _trainer(make_mlp, data)
    if after_a_run:
        t.start(epochs=1)
        t.wait()
    runs_before = list(t.runs)
    with pytest.raises(TypeError, match=hint) as info:
        t.start(value)
    assert str(info.value).startswith("config=")
    assert t.runs == runs_before                    # nothing was started, nothing stopped
    run = t.start(lr=0.01, epochs=1)                # the issue: this raised TypeError for good
    assert t.wait() is run and run.status == "finished" and run.error is None
    assert isinstance(run.config, nbt.TrainConfig)


def test_restart_refuses_a_positional_option_in_place_of_the_delay(make_mlp, data):
    t = _trainer(make_mlp, data)
    with pytest.raises(TypeError, match=r"delay='adam' is not accepted.*t.restart\(lr=0.01\)"):
        t.restart("adam")
    with pytest.raises(ValueError, match="delay=-1"):
        t.restart(-1)
    t.restart(0.0, epochs=1)
    assert t.wait().status == "finished"


# -- 6. the device, the model, the data, the store, the loss -------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_naming_the_device(make_mlp, data):
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ValueError, match=r"device=.*cuda.* is not available: .*use 'auto', 'cpu'"):
            _trainer(make_mlp, data, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_devices_is_refused(make_mlp, data):
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"device='cuda:{n}' is not available: this machine has {n} CUDA"):
        _trainer(make_mlp, data, device=f"cuda:{n}")


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_mps_without_mps_is_refused_naming_the_device(make_mlp, data):
    with pytest.raises(ValueError, match=r"device='mps' is not available: MPS .* use 'auto', 'cpu'"):
        _trainer(make_mlp, data, device="mps")


@pytest.mark.parametrize("device, error, words", [
    ("meta", ValueError, "meta device holds no data"),
    ("gpu", ValueError, "is not a device"),
    (3.5, TypeError, "device=3.5 is not accepted"),
    (True, TypeError, "device=True is not accepted"),
])
def test_a_device_that_cannot_train_is_refused(make_mlp, data, device, error, words):
    with pytest.raises(error, match=words):
        _trainer(make_mlp, data, device=device)


def test_a_model_on_the_meta_device_is_refused(data):
    train, val = data
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"model=Sequential has tensors on the 'meta' device \(0.weight.*to_empty"):
        nbt.Trainer(model, train, val, store=None)


def test_a_model_with_no_trainable_parameters_is_refused_when_made(data):
    train, val = data
    frozen = nn.Linear(64, 10).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters: all 2 of its parameter tensors have "
                                         r"requires_grad=False \(frozen\)"):
        nbt.Trainer(frozen, train, val, store=None)
    with pytest.raises(ValueError, match="no trainable parameters: it has no parameters at all"):
        nbt.Trainer(nn.Identity(), train, val, store=None)


def test_a_model_frozen_after_the_trainer_was_made_is_refused_when_the_run_starts(make_mlp, data):
    t = _trainer(make_mlp, data)
    t.model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        t.start(epochs=1)
    assert t.runs == []
    t.model.requires_grad_(True)
    t.start(epochs=1)
    assert t.wait().status == "finished"


@pytest.mark.parametrize("y, words", [
    (np.array(["cat", "dog"] * 50), r"train\[1\] \(targets\): a numpy array of dtype <U3.*np.unique"),
    (np.array([b"cat", b"dog"] * 50), r"train\[1\] \(targets\): a numpy array of dtype \|S3"),
    (np.array(["cat", "dog"] * 50, dtype=object), r"train\[1\] \(targets\): a numpy array of dtype object"),
    (np.array(["2020-01-01"] * 100, dtype="datetime64[D]"), r"train\[1\] \(targets\): .*datetime64"),
    (["cat", "dog"] * 50, r"train\[1\] \(targets\): a list of str"),
])
def test_targets_that_are_not_numbers_are_refused_naming_the_split(make_mlp, y, words):
    x = np.random.default_rng(0).normal(size=(100, 64)).astype(np.float32)
    with pytest.raises(TypeError, match=words):
        nbt.Trainer(make_mlp(64, 10), (x, y), store=None)
    with pytest.raises(TypeError, match=words.replace("train", "val")):
        nbt.Trainer(make_mlp(64, 10), (x, np.zeros(100, dtype=np.int64)), (x, y), store=None)


def test_inputs_that_are_text_are_refused_naming_the_inputs(make_mlp):
    x = np.array([["a"] * 64] * 10)
    with pytest.raises(TypeError, match=r"train\[0\] \(inputs\): a numpy array of dtype <U1.*turn the text"):
        nbt.Trainer(make_mlp(64, 10), (x, np.zeros(10, dtype=np.int64)), store=None)


@pytest.mark.parametrize("store, error, words", [
    (123, TypeError, "store=123 is not accepted: store must be a folder path"),
    (False, TypeError, "store=False is not accepted"),
    (b"bytes/path", TypeError, "store=b'bytes/path' is not accepted"),
    ("", ValueError, "store='' is not a folder"),
    ("   ", ValueError, "store='   ' is not a folder"),
    ("a\x00b", ValueError, "NUL"),
])
def test_a_store_that_is_not_a_folder_path_is_refused(make_mlp, data, tmp_path, store, error, words):
    train, val = data
    with pytest.raises(error, match=words):
        nbt.Trainer(make_mlp(64, 10), train, val, store=store)
    assert list(tmp_path.iterdir()) == []            # "" no longer means the working folder


def test_load_runs_refuses_a_path_that_is_not_one():
    with pytest.raises(TypeError, match="path=123 is not accepted"):
        nbt.load_runs(123)
    with pytest.raises(ValueError, match="path='' is not a folder"):
        nbt.load_runs("")


@pytest.mark.parametrize("loss, error, words", [
    (lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"), ValueError,
     r"returned a tensor of shape \(2,\), not one number: .*\.mean\(\)"),
    (lambda out, y: float(nn.functional.cross_entropy(out, y)), TypeError, "returned float .*, not a tensor"),
    (lambda out, y: torch.mm(out, y), ValueError, r"targets \(shape \(2,\)\) of two training examples raised"),
    (lambda out, y: (out.argmax(1) == y).sum(), ValueError, "returned a torch.int64 tensor"),
], ids=["not_reduced", "a_float", "raises", "integer"])
def test_a_loss_callable_that_does_not_give_one_number_is_refused_when_made(make_mlp, data, loss, error, words):
    with pytest.raises(error, match=words) as info:
        _trainer(make_mlp, data, loss=loss)
    assert str(info.value).startswith("loss=<lambda>")


def test_a_loss_callable_that_gives_one_number_trains(make_mlp, data):
    def my_loss(out, y):
        return nn.functional.cross_entropy(out, y) * 1.0
    t = _trainer(make_mlp, data, loss=my_loss)
    t.start(epochs=1)
    assert t.wait().status == "finished"


# -- 7. values where no run can train ---------------------------------------------------------------------

@pytest.mark.parametrize("field", ["weight_decay", "l1"])
@pytest.mark.parametrize("value", [1e300, 1e39, MAX_PENALTY * 1.01])
def test_a_penalty_too_large_to_train_is_refused_with_the_reason(make_mlp, data, field, value):
    with pytest.raises(ValueError, match=rf"{field}=.* is not accepted: {field} must be a number >= 0 and <= 100 "
                                         r"\(a larger .* penalty outweighs any loss, so the run cannot train"):
        nbt.TrainConfig(**{field: value})
    t = _trainer(make_mlp, data)
    with pytest.raises(ValueError, match=field):
        t.start(**{field: value})
    assert t.runs == []


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_largest_accepted_values_train_or_diverge_but_never_fail(make_mlp, data, optimizer):
    """Accepted means the optimizer can apply it: the worst is a run that diverges, with its warning."""
    for extreme in (dict(weight_decay=MAX_PENALTY), dict(l1=MAX_PENALTY), dict(weight_decay=MAX_PENALTY, lr=10.0),
                    dict(l1=MAX_PENALTY, weight_decay=MAX_PENALTY, lr=10.0, grad_clip=1e300)):
        t = _trainer(make_mlp, data)
        run = t.start(optimizer=optimizer, epochs=1, **extreme)
        t.wait()
        assert run.error is None and run.status in ("finished", "diverged"), (extreme, run.status, run.error)
