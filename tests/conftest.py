"""Shared fixtures: tiny datasets from scikit-learn's bundled data, tiny models.

Everything here is small enough that a run of a few epochs takes well under
a second on one CPU thread. The machines are shared, so torch uses one thread.
"""
from __future__ import annotations

import os
import time

# Ray reads these when it is imported: a test that starts Ray keeps it on loopback and sends nothing
# (TESTING.md; the Ray fixtures also point HOME at a folder holding an empty ray_bootstrap_config.yaml)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def pytest_sessionstart(session):
    # two torch threads are slower than one on these small models and shared cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """Trainers keep their run store under the working directory: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std(0)
    std[std == 0] = 1.0
    return (x - x.mean(0)) / std


def _split(x, y, n_val):
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


@pytest.fixture(scope="session")
def digits():
    """Digits, 64 features, 10 classes: ((X, y) train, (X, y) val) as tensors, y int64."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(_standardize(d.data), dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    # a fixed shuffle: the bundled order is grouped by writer
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return _split(x[order], y[order], 300)


@pytest.fixture(scope="session")
def small_digits(digits):
    """The first 256 training and 128 validation examples of digits (fast runs)."""
    (x, y), (xv, yv) = digits
    return (x[:256], y[:256]), (xv[:128], yv[:128])


@pytest.fixture(scope="session")
def binary():
    """Breast cancer, 30 features: targets float of shape (N, 1), for a 1-output model."""
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    x = torch.tensor(_standardize(d.data), dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32).reshape(-1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return _split(x[order], y[order], 150)


@pytest.fixture(scope="session")
def regression():
    """Diabetes, 10 features: standardized float targets of shape (N, 1)."""
    from sklearn.datasets import load_diabetes
    d = load_diabetes()
    x = torch.tensor(_standardize(d.data), dtype=torch.float32)
    t = d.target
    y = torch.tensor((t - t.mean()) / t.std(), dtype=torch.float32).reshape(-1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return _split(x[order], y[order], 100)


def mlp(n_in: int, n_out: int, hidden: int = 32, dropout: float | None = None, seed: int = 0) -> nn.Module:
    """A small MLP with fixed initial weights (``seed``)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.ReLU()]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(hidden, n_out)]
    return nn.Sequential(*layers)


@pytest.fixture
def make_mlp():
    return mlp


class Slow(nn.Module):
    """Wraps a model so each training-mode forward takes about ``delay`` s.

    Stop/pause tests count steps, not seconds; the delay only makes a run
    last long enough to be stopped or paused in the middle.
    """

    def __init__(self, inner: nn.Module, delay: float = 0.01):
        super().__init__()
        self.inner = inner
        self.delay = delay

    def forward(self, x):
        if self.training:
            time.sleep(self.delay)
        return self.inner(x)


@pytest.fixture
def slow_model():
    def make(n_in=64, n_out=10, delay=0.01, inner=None):
        return Slow(inner if inner is not None else mlp(n_in, n_out, hidden=16), delay)
    return make


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    return wait_until
