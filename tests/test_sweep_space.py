"""Search spaces and sweep arguments, checked in the caller's thread (no Ray cluster needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import nb_trainer as nbt
from nb_trainer.config import TrainConfig
from nb_trainer.sweep.space import Choice, LogUniform, Uniform, parse_space


def test_helpers_are_exported_from_the_package():
    assert nbt.loguniform(1e-4, 1e-1) == LogUniform(1e-4, 1e-1)
    assert nbt.uniform(0.0, 0.5) == Uniform(0.0, 0.5)
    assert nbt.choice(["adam", "sgd"]) == Choice(("adam", "sgd"))


@pytest.mark.parametrize("make, match", [
    (lambda: nbt.loguniform(0, 1), "above 0"),
    (lambda: nbt.loguniform(1e-1, 1e-3), "low must be below high"),
    (lambda: nbt.uniform(0, float("nan")), "finite"),
    (lambda: nbt.choice([]), "at least one"),
    (lambda: nbt.choice("adam"), "list of values"),
])
def test_bad_domains_raise_at_once(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_lists_are_grid_axes_domains_are_sampled_scalars_are_fixed():
    space, base = parse_space({"lr": nbt.loguniform(1e-4, 1e-1), "weight_decay": [0, 1e-4, 1e-3], "epochs": 3},
                              TrainConfig())
    assert space.grid == {"weight_decay": [0.0, 1e-4, 1e-3]}
    assert space.sampled == {"lr": LogUniform(1e-4, 1e-1)}
    assert base.epochs == 3 and space.grid_size == 3
    assert space.fields == ("weight_decay", "lr")


@pytest.mark.parametrize("space, match", [
    ({"learning_rate": [1e-3]}, "unknown training option 'learning_rate'"),
    ({"lr": [1e-3, 20.0]}, "lr=20.0 is not accepted"),
    ({"lr": []}, "at least one value"),
    ({"lr": [1e-3, 1e-3]}, "twice"),
    ({"optimizer": nbt.loguniform(1e-3, 1e-1)}, "nbt.choice"),
    ({"optimizer": nbt.choice(["adam", "lion"])}, "optimizer='lion' is not accepted"),
    ({"momentum": nbt.uniform(0.5, 1.0)}, "momentum=1.0 is not accepted"),
    ({"batch_size": nbt.loguniform(16, 100.5)}, "integers"),
    ({}, "give a dict"),
])
def test_a_bad_space_names_the_field_and_what_is_accepted(space, match):
    with pytest.raises(ValueError, match=match):
        parse_space(space, TrainConfig())


def test_trials_are_counted_over_the_grid():
    space, _ = parse_space({"lr": nbt.loguniform(1e-4, 1e-1), "weight_decay": [0, 1e-4, 1e-3]}, TrainConfig())
    assert space.trials_for(12) == 4               # 4 samples of lr, each on the 3 grid points
    assert space.trials_for(None) == 4             # about 10 trials, rounded up to the grid
    with pytest.raises(ValueError, match="multiple of 3"):
        space.trials_for(10)
    grid, _ = parse_space({"lr": [1e-3, 1e-2]}, TrainConfig())
    assert grid.trials_for(None) == 1 and grid.trials_for(2) == 1
    with pytest.raises(ValueError, match="repeat them exactly"):
        grid.trials_for(4)


def test_the_space_becomes_tunes_with_integers_for_integer_fields():
    from ray import tune
    space, _ = parse_space({"lr": nbt.loguniform(1e-4, 1e-1), "batch_size": nbt.loguniform(16, 256),
                            "optimizer": nbt.choice(["adam", "sgd"]), "weight_decay": [0, 1e-4]}, TrainConfig())
    param = space.to_tune()
    assert param["weight_decay"] == {"grid_search": [0.0, 1e-4]}
    assert isinstance(param["lr"], tune.search.sample.Float)
    assert isinstance(param["batch_size"], tune.search.sample.Integer)
    samples = [param["batch_size"].sample() for _ in range(50)]
    assert all(16 <= s <= 256 and isinstance(int(s), int) for s in samples)
    assert set(param["optimizer"].categories) == {"adam", "sgd"}


def test_sweep_arguments_are_checked_before_anything_starts(small_digits, make_mlp):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    for kwargs, match in [(dict(parallel=0), "parallel=0"), (dict(scheduler="hyperband"), "scheduler='hyperband'"),
                          (dict(trials=5, space={"lr": [1e-3, 1e-2]}), "multiple of 2"),
                          (dict(epochs=0), "epochs=0"), (dict(lerning_rate=1), "unknown training option")]:
        space = kwargs.pop("space", {"lr": [1e-3, 1e-2]})
        with pytest.raises(ValueError, match=match):
            t.sweep(space, **kwargs)
    assert t.sweeps == []


def test_without_ray_sweep_says_how_to_install_it(small_digits, make_mlp, monkeypatch):
    train, val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), train, val, store=None)
    monkeypatch.setitem(sys.modules, "ray", None)      # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    with pytest.raises(ImportError, match=r'pip install "nb_trainer\[ray\]"'):
        t.sweep({"lr": [1e-3, 1e-2]})
    assert t.sweeps == []


def test_the_sweep_package_and_its_helpers_need_no_ray():
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError("ray is blocked")
for m in [m for m in sys.modules if m.split(".")[0] == "ray"]:
    del sys.modules[m]
sys.meta_path.insert(0, Block())
import nb_trainer as nbt
import nb_trainer.sweep, nb_trainer.sweep.sweep, nb_trainer.sweep.trial, nb_trainer.sweep.cluster
print(nbt.loguniform(1e-4, 1e-1), "ray" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LogUniform(low=0.0001, high=0.1) False"
