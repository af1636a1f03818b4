"""A held-out check of the health rules: scenarios unlike the ones the rules were tuned on.

The rules were written against ``tests/test_health_e2e.py`` and
``benchmarks/health_false_alarms.py`` (blobs, digits, friedman, diabetes,
moons/cancer with plain ``nn.Sequential`` MLPs passed as float32 tensors).
This suite uses other data (circles, a checkerboard, wine, iris, gaussian
quantiles, hastie, s-curve, multi-output regression, 1x8x8 images, sequences),
other models (BatchNorm, CNNs, GRU/LSTM/RNN, Tanh/Sigmoid/LeakyReLU/GELU,
wide-shallow, dropout, custom modules with ``F.relu``), other ways to pass the
data (numpy float64, TensorDataset, a DataLoader with its own batch size) and
other configs, the way a user would: ``Trainer(model, train, val).start(**config)``,
wait, read ``run.warnings``.

Every scenario's expected answer was written down before the suite was first
run, with the reason, in the scenario itself:

- healthy: what a competent practitioner would run and be satisfied with (the
  model learns, val tracks train). Any warning is a false alarm.
- faulty: one clear fault; ``expect`` is the code that must be raised,
  ``allow`` the other codes that are also true of the run (e.g. ``lr_too_high``
  next to ``nan_loss``). A code outside both is reported as a wrong extra.
- borderline: reported, not scored. A scenario whose runs turned out not to
  show the intended fault clearly was moved here, or revised so that the fault
  is there; each such change is written in the scenario's ``why``, never a
  change of the expected code to match what the rules said.

The first batch was run against the rules as they were and drove the fixes; the
second batch (``h2_``/``f2_``) was written after them, as a check of how the
fixes generalise.

    python benchmarks/health_heldout.py             # everything, seeds 0 and 1 (~1 min on one core)
    python benchmarks/health_heldout.py --seeds 3   # seeds 0, 1, 2
    python benchmarks/health_heldout.py -k cnn      # scenarios whose name contains "cnn"
    python benchmarks/health_heldout.py -v          # print every run's last epoch and warnings
"""
from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nb_trainer as nbt

# symptoms a cause explains: accepted next to a cause when they are also true of the run
SYMPTOMS = ("loss_plateau", "underfitting")
# a step so large the loss blows up: each of these is true of such a run
BLOWUP = ("nan_loss", "exploding_gradients", "lr_too_high", "loss_oscillation", "dead_relu")


@dataclass
class Scenario:
    name: str
    build: Callable  # () -> (model, train, val, config)
    why: str
    expect: Optional[str] = None  # None: healthy
    allow: tuple = ()
    borderline: bool = False      # reported, not scored: reasonable people could call it either way


SCENARIOS: list = []
# the seed of the data split and of the model's initial weights: ``--seeds 3`` runs every scenario
# with 0, 1 and 2 (what must hold for one draw of a healthy run should hold for the next)
SEED = 0


def scenario(expect=None, allow=(), why="", borderline=False):
    def deco(fn):
        SCENARIOS.append(Scenario(fn.__name__, fn, why, expect, tuple(allow), borderline))
        return fn
    return deco


# -- data ----------------------------------------------------------------------------------

def std(x):
    x = np.asarray(x, dtype=np.float64)
    s = x.std(0)
    s[s == 0] = 1
    return (x - x.mean(0)) / s


def split(x, y, n_val, as_tensor=True, dtype=np.float32):
    order = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[order], y[order]
    if dtype is not None and x.dtype.kind == "f":
        x = x.astype(dtype)
    if dtype is not None and y.dtype.kind == "f":
        y = y.astype(dtype)
    if as_tensor:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


def moons(n=1000, noise=0.25, seed=1):
    from sklearn.datasets import make_moons
    x, y = make_moons(n, noise=noise, random_state=seed)
    return std(x), y.astype(np.float64)[:, None]


def circles(n=800, seed=2):
    from sklearn.datasets import make_circles
    x, y = make_circles(n, noise=0.08, factor=0.5, random_state=seed)
    return std(x), y.astype(np.int64)


def checkerboard(n=1000, seed=3):
    """XOR of the signs of two uniform features: no linear model does better than chance."""
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1, 1, (n, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    return std(x), y


def wine():
    from sklearn.datasets import load_wine
    x, y = load_wine(return_X_y=True)
    return std(x), y.astype(np.int64)


def iris():
    from sklearn.datasets import load_iris
    x, y = load_iris(return_X_y=True)
    return std(x), y.astype(np.int64)


def cancer():
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    return std(x), y.astype(np.int64)


def quantiles(n=1200, n_features=4, seed=4):
    from sklearn.datasets import make_gaussian_quantiles
    x, y = make_gaussian_quantiles(n_samples=n, n_features=n_features, n_classes=3, random_state=seed)
    return std(x), y.astype(np.int64)


def multireg(n=1200, seed=5, scale_y=True):
    from sklearn.datasets import make_regression
    x, y = make_regression(n, 8, n_informative=6, n_targets=3, noise=5.0, random_state=seed)
    return std(x), (std(y) if scale_y else y)


def reg1(n=1000, seed=6, noise=10.0):
    from sklearn.datasets import make_regression
    x, y = make_regression(n, 10, n_informative=6, noise=noise, random_state=seed)
    return std(x), std(y[:, None])


def blobs(n, d, k, cluster_std, seed=7):
    from sklearn.datasets import make_blobs
    x, y = make_blobs(n, d, centers=k, cluster_std=cluster_std, random_state=seed)
    return std(x), y.astype(np.int64)


def images(n=1500, noise=0.3, seed=8):
    """1x8x8 images: noise plus a bright 3x3 patch somewhere in one of the four quadrants (the class)."""
    rng = np.random.RandomState(seed)
    x = rng.normal(0, noise, (n, 1, 8, 8))
    y = rng.randint(0, 4, n)
    for i, c in enumerate(y):
        r0, c0 = 4 * (c // 2) + rng.randint(0, 2), 4 * (c % 2) + rng.randint(0, 2)
        x[i, 0, r0:r0 + 3, c0:c0 + 3] += 1.0
    return x.astype(np.float32), y.astype(np.int64)


def sequences(n=1500, length=12, seed=9, kind="sign"):
    rng = np.random.RandomState(seed)
    x = rng.normal(0, 1, (n, length, 1))
    if kind == "sign":  # binary: is the sum positive
        y = (x.sum((1, 2)) > 0).astype(np.float64)[:, None]
    elif kind == "third":  # 3 classes: which third of the sequence has the largest sum
        y = x.reshape(n, 3, -1).sum(2).argmax(1).astype(np.int64)
    else:  # regression: first four steps' mean minus the last four's
        y = x[:, :4, 0].mean(1) - x[:, -4:, 0].mean(1)
        y = std(y[:, None])
    return x.astype(np.float32), y


# -- models --------------------------------------------------------------------------------

def mlp(n_in, n_out, hidden=(32,), act=nn.ReLU, dropout=None, bn=False, gain=1.0):
    torch.manual_seed(SEED)
    layers, prev = [], n_in
    for h in hidden:
        layers.append(nn.Linear(prev, h))
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(act())
        if dropout:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, n_out))
    model = nn.Sequential(*layers)
    if gain != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(gain)
    return model


def cnn(n_out=4, channels=(8, 16), bn=False, dropout=None, hidden=None):
    torch.manual_seed(SEED)
    layers, prev = [], 1
    for c in channels:
        layers += [nn.Conv2d(prev, c, 3, padding=1), *([nn.BatchNorm2d(c)] if bn else []), nn.ReLU(), nn.MaxPool2d(2)]
        prev = c
    side = 8 // 2 ** len(channels)
    layers.append(nn.Flatten())
    if dropout:
        layers.append(nn.Dropout(dropout))
    if hidden:
        layers += [nn.Linear(prev * side * side, hidden), nn.ReLU(), nn.Linear(hidden, n_out)]
    else:
        layers.append(nn.Linear(prev * side * side, n_out))
    return nn.Sequential(*layers)


class SeqNet(nn.Module):
    """A recurrent layer, then a linear head on the last step's output."""

    def __init__(self, cell="gru", hidden=16, n_out=1, **kw):
        super().__init__()
        torch.manual_seed(SEED)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell]
        self.rnn = rnn(1, hidden, batch_first=True, **kw)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class FunctionalNet(nn.Module):
    """A user's own module calling F.relu (no nn.ReLU module to hook)."""

    def __init__(self, n_in, n_out, hidden=64):
        super().__init__()
        torch.manual_seed(SEED)
        self.fc1, self.fc2, self.out = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SqrtHead(nn.Module):
    """Predicts sqrt of a linear layer's output: NaN as soon as it goes negative."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.body = mlp(n_in, n_out, (32,))

    def forward(self, x):
        return torch.sqrt(self.body(x))


# == healthy runs: nothing may be raised ======================================================

@scenario(why="moons (noise 0.25) with a 2x32 ReLU MLP and Adam reaches ~95% val accuracy; numpy float64 in")
def h_moons_numpy64_adam():
    (x, y), val = split(*moons(), 250, as_tensor=False, dtype=None)
    return mlp(2, 1, (32, 32)), (x, y), val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=30)


@scenario(why="BatchNorm MLP with SGD+momentum 0.05 on moons: the standard recipe, converges smoothly")
def h_moons_batchnorm_momentum():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (64, 64), bn=True), train, val, dict(optimizer="momentum", lr=0.05, batch_size=64, epochs=20)


@scenario(why="circles are solved by a 2x32 Tanh MLP; Adam 1e-2 is a normal lr for such a small net")
def h_circles_tanh_adam():
    train, val = split(*circles(), 200)
    return mlp(2, 2, (32, 32), act=nn.Tanh), train, val, dict(optimizer="adam", lr=1e-2, batch_size=32, epochs=25)


@scenario(why="GELU MLP with RMSprop 3e-3, batch 16 on circles: learns to ~100%")
def h_circles_gelu_rmsprop():
    train, val = split(*circles(), 200)
    return mlp(2, 2, (64, 64), act=nn.GELU), train, val, dict(optimizer="rmsprop", lr=3e-3, batch_size=16, epochs=15)


@scenario(why="wine is nearly linearly separable; dropout 0.3 + AdamW wd 1e-2 is a cautious, fine setup")
def h_wine_dropout_adamw():
    train, val = split(*wine(), 45, as_tensor=False, dtype=None)
    return (mlp(13, 3, (64, 64), dropout=0.3), train, val,
            dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, batch_size=16, epochs=40))


@scenario(why="iris with a 16-unit ReLU MLP, plain SGD 0.05 at batch 8: textbook, ~95% val accuracy")
def h_iris_sgd_b8():
    train, val = split(*iris(), 38)
    return mlp(4, 3, (16,)), train, val, dict(optimizer="sgd", lr=0.05, batch_size=8, epochs=40)


@scenario(why="breast cancer, 1 output + float (N,1) targets in a TensorDataset, LeakyReLU, Adam + tiny wd")
def h_cancer_bce_tensordataset():
    x, y = cancer()
    (xt, yt), val = split(x, y.astype(np.float64)[:, None], 140)
    ds = TensorDataset(xt.double(), yt.double())
    return (mlp(30, 1, (32, 16), act=nn.LeakyReLU), ds, val,
            dict(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=32, epochs=20))


@scenario(why="breast cancer as 2-class CE from a DataLoader with its own batch size 25, SGD+momentum 0.01")
def h_cancer_ce_dataloader():
    (xt, yt), val = split(*cancer(), 140)
    dl = DataLoader(TensorDataset(xt, yt), batch_size=25, shuffle=True)
    return mlp(30, 2, (64,)), dl, val, dict(optimizer="momentum", lr=0.01, epochs=15)


@scenario(why="3-output regression (make_regression, noise 5, standardized) with a 2x64 MLP and Adam: R² > 0.95")
def h_multireg_adam():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64, 64)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=30)


@scenario(why="the same 3-output regression with plain SGD 0.02 and a touch of L1: converges, R² > 0.9")
def h_multireg_sgd_l1():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,)), train, val, dict(optimizer="sgd", lr=0.02, l1=1e-5, batch_size=16, epochs=20)


@scenario(why="a wide shallow net (512 units) on single-target regression, RMSprop 1e-3, numpy float64")
def h_wide_shallow_rmsprop():
    train, val = split(*reg1(), 250, as_tensor=False, dtype=None)
    return mlp(10, 1, (512,)), train, val, dict(optimizer="rmsprop", lr=1e-3, batch_size=64, epochs=15)


@scenario(why="a small Conv-ReLU-MaxPool CNN on 1x8x8 quadrant images with Adam: ~100% val accuracy")
def h_cnn_adam():
    train, val = split(*images(), 300)
    return cnn(), train, val, dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=10)


@scenario(why="the CNN with BatchNorm2d and SGD+momentum 0.05, batch 128")
def h_cnn_batchnorm_momentum():
    train, val = split(*images(), 300)
    return cnn(bn=True), train, val, dict(optimizer="momentum", lr=0.05, batch_size=128, epochs=8)


@scenario(why="the CNN with dropout 0.25, a DataLoader of batch 50, AdamW with its usual wd 0.05")
def h_cnn_dropout_loader_adamw():
    (xt, yt), val = split(*images(), 300)
    dl = DataLoader(TensorDataset(xt, yt), batch_size=50, shuffle=True)
    return cnn(dropout=0.25), dl, val, dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, epochs=6)


@scenario(why="a GRU(16) classifying the sign of a sequence's sum (BCE, float (N,1) targets), Adam 1e-2")
def h_gru_binary():
    train, val = split(*sequences(), 300)
    return SeqNet("gru", 16), train, val, dict(optimizer="adam", lr=1e-2, batch_size=32, epochs=15)


@scenario(why="an LSTM(24) regressing a difference of means over the sequence, Adam 5e-3")
def h_lstm_regression():
    train, val = split(*sequences(kind="reg"), 300)
    return SeqNet("lstm", 24), train, val, dict(optimizer="adam", lr=5e-3, batch_size=64, epochs=20)


@scenario(why="a GRU(32) telling which third of a sequence has the largest sum (3 classes), RMSprop 3e-3")
def h_gru_multiclass_rmsprop():
    train, val = split(*sequences(kind="third"), 300)
    return SeqNet("gru", 32, n_out=3), train, val, dict(optimizer="rmsprop", lr=3e-3, batch_size=64, epochs=15)


@scenario(why="a 2-layer Sigmoid MLP is fine at this depth; wine with Adam 1e-2")
def h_wine_sigmoid_adam():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (32, 32), act=nn.Sigmoid), train, val, dict(optimizer="adam", lr=1e-2, batch_size=16, epochs=30)


@scenario(why="gaussian quantiles (radial classes, 4-d) with a 3x64 Tanh MLP and Adam: ~90% val accuracy")
def h_quantiles_tanh3():
    train, val = split(*quantiles(), 300)
    return mlp(4, 3, (64, 64, 64), act=nn.Tanh), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=40)


@scenario(why="single-target regression with SGD 0.05 and gradient clipping 0.5")
def h_reg_sgd_clip():
    train, val = split(*reg1(), 250)
    return mlp(10, 1, (64, 64)), train, val, dict(optimizer="sgd", lr=0.05, grad_clip=0.5, batch_size=32, epochs=20)


@scenario(why="hastie_10_2 (radial, hard) with 0/1 int64 (N,1) targets, 2x64 MLP, Adam, batch 128: ~90%")
def h_hastie_int_targets():
    from sklearn.datasets import make_hastie_10_2
    x, y = make_hastie_10_2(2000, random_state=10)
    train, val = split(std(x), ((y + 1) // 2).astype(np.int64)[:, None], 500)
    return mlp(10, 1, (64, 64)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=128, epochs=25)


@scenario(why="5 blobs in 10-d, Adam 1e-2 with batches of 512: a big-batch run of an easy problem")
def h_blobs_batch512():
    train, val = split(*blobs(3000, 10, 5, 2.0), 600)
    return mlp(10, 5, (64,)), train, val, dict(optimizer="adam", lr=1e-2, batch_size=512, epochs=30)


@scenario(why="3 blobs, plain SGD 0.01 at batch 8 for 10 epochs")
def h_blobs_sgd_b8():
    train, val = split(*blobs(400, 6, 3, 1.5), 100)
    return mlp(6, 3, (32,)), train, val, dict(optimizer="sgd", lr=0.01, batch_size=8, epochs=10)


@scenario(why="a 3-epoch run of moons with Adam 1e-2: short, and already good")
def h_moons_three_epochs():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (64,)), train, val, dict(optimizer="adam", lr=1e-2, batch_size=16, epochs=3)


@scenario(why="3-output regression, GELU 128, RMSprop 1e-3 with weight decay 1e-3")
def h_multireg_rmsprop_wd():
    train, val = split(*multireg(), 300)
    return (mlp(8, 3, (128,), act=nn.GELU), train, val,
            dict(optimizer="rmsprop", lr=1e-3, weight_decay=1e-3, batch_size=32, epochs=25))


@scenario(why="s-curve: recover the curve parameter t from the 3-d point, GELU 2x64, Adam 3e-3")
def h_scurve_gelu():
    from sklearn.datasets import make_s_curve
    x, t = make_s_curve(1500, noise=0.05, random_state=11)
    train, val = split(std(x), std(t[:, None]), 300)
    return mlp(3, 1, (64, 64), act=nn.GELU), train, val, dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=30)


@scenario(why="noisy binary labels (flip 15%) with a big MLP, but early stopping (patience 5) guards it")
def h_noisy_binary_early_stopping():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 20, n_informative=6, flip_y=0.15, random_state=12)
    train, val = split(std(x), y.astype(np.float64)[:, None], 400)
    return (mlp(20, 1, (128, 128)), train, val,
            dict(optimizer="adam", lr=3e-3, patience=5, batch_size=32, epochs=40))


@scenario(why="a linear model on linear data with noise (best R² ~0.45): it learns all there is to learn")
def h_linear_noisy_regression():
    rng = np.random.RandomState(13)
    x = rng.normal(size=(1000, 5))
    y = x @ rng.normal(size=5)
    y = y + rng.normal(scale=1.1 * y.std(), size=y.shape)
    train, val = split(std(x), std(y[:, None]), 250)
    return mlp(5, 1, ()), train, val, dict(optimizer="sgd", lr=0.05, batch_size=32, epochs=15)


@scenario(why="breast cancer, 1 output, plain SGD 0.1, a 16-unit MLP")
def h_cancer_sgd():
    x, y = cancer()
    train, val = split(x, y.astype(np.float64)[:, None], 140)
    return mlp(30, 1, (16,)), train, val, dict(optimizer="sgd", lr=0.1, batch_size=64, epochs=25)


@scenario(why="wine, LeakyReLU 64, SGD+momentum 0.01 with weight decay 5e-4")
def h_wine_leaky_momentum_wd():
    train, val = split(*wine(), 45)
    return (mlp(13, 3, (64,), act=nn.LeakyReLU), train, val,
            dict(optimizer="momentum", lr=0.01, weight_decay=5e-4, batch_size=16, epochs=25))


@scenario(why="moons with dropout 0.2 in a 2x64 MLP, plain SGD 0.2")
def h_moons_dropout_sgd():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (64, 64), dropout=0.2), train, val, dict(optimizer="sgd", lr=0.2, batch_size=32, epochs=30)


@scenario(why="binary 75/25 classes: mild imbalance (1:3) is normal data, not a warning")
def h_binary_mild_imbalance():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 10, n_informative=5, weights=[0.75], random_state=14)
    train, val = split(std(x), y.astype(np.float64)[:, None], 300)
    return mlp(10, 1, (64,)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="5 classes with a 1:4 smallest/largest ratio: mild, no warning")
def h_multiclass_mild_imbalance():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 12, n_informative=8, n_classes=5, n_clusters_per_class=1,
                               weights=[0.4, 0.2, 0.15, 0.15, 0.1], class_sep=1.5, random_state=15)
    train, val = split(std(x), y.astype(np.int64), 300)
    return mlp(12, 5, (64,)), train, val, dict(optimizer="adamw", lr=2e-3, batch_size=32, epochs=20)


@scenario(why="iris with a tiny Tanh net (8 units), Adam 1e-2, batch 16, 40 epochs: a small val set (38)")
def h_iris_tanh_adam():
    train, val = split(*iris(), 38)
    return mlp(4, 3, (8,), act=nn.Tanh), train, val, dict(optimizer="adam", lr=1e-2, batch_size=16, epochs=40)


@scenario(why="moons, 750 examples in batches of 512 (2 steps an epoch), Adam 1e-2 for 40 epochs")
def h_moons_two_steps_per_epoch():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (64,)), train, val, dict(optimizer="adam", lr=1e-2, batch_size=512, epochs=40)


@scenario(why="wine full-batch (one step an epoch), Adam 1e-2 for 40 steps: converges to ~95%")
def h_wine_full_batch():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (32,)), train, val, dict(optimizer="adam", lr=1e-2, batch_size=256, epochs=40)


@scenario(why="the CNN with plain SGD 0.1")
def h_cnn_sgd():
    train, val = split(*images(), 300)
    return cnn(), train, val, dict(optimizer="sgd", lr=0.1, batch_size=32, epochs=10)


@scenario(why="an LSTM on the sign task with SGD+momentum 0.1 and gradient clipping 1.0, the RNN recipe")
def h_lstm_momentum_clip():
    train, val = split(*sequences(), 300)
    return (SeqNet("lstm", 16), train, val,
            dict(optimizer="momentum", lr=0.1, grad_clip=1.0, batch_size=32, epochs=15))


@scenario(why="BatchNorm MLP at batch 8 on wine (noisy batch statistics, still fine), Adam 1e-3")
def h_wine_batchnorm_b8():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (64,), bn=True), train, val, dict(optimizer="adam", lr=1e-3, batch_size=8, epochs=20)


@scenario(why="dropout 0.5 in a wide net on circles: the train loss sits above val, which is normal")
def h_circles_dropout_half():
    train, val = split(*circles(), 200)
    return mlp(2, 2, (256, 256), dropout=0.5), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=30)


@scenario(why="5 GELU layers of 64 on the 3-output regression with AdamW 1e-3")
def h_multireg_gelu_deep():
    train, val = split(*multireg(), 300)
    return (mlp(8, 3, (64,) * 5, act=nn.GELU), train, val,
            dict(optimizer="adamw", lr=1e-3, batch_size=32, epochs=20))


@scenario(why="6 LeakyReLU layers of 64 on gaussian quantiles, Adam 1e-3")
def h_quantiles_leaky_deep():
    train, val = split(*quantiles(), 300)
    return mlp(4, 3, (64,) * 6, act=nn.LeakyReLU), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=25)


@scenario(why="a Tanh MLP with plain SGD 0.1 on circles for 40 epochs")
def h_circles_tanh_sgd():
    train, val = split(*circles(), 200)
    return mlp(2, 2, (32, 32), act=nn.Tanh), train, val, dict(optimizer="sgd", lr=0.1, batch_size=32, epochs=40)


@scenario(why="one Sigmoid hidden layer with SGD+momentum 0.1 on wine")
def h_wine_sigmoid_momentum():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (32,), act=nn.Sigmoid), train, val, dict(optimizer="momentum", lr=0.1, batch_size=16, epochs=30)


@scenario(why="iris with RMSprop 1e-2 and weight decay 1e-3")
def h_iris_rmsprop_wd():
    train, val = split(*iris(), 38)
    return (mlp(4, 3, (32,)), train, val,
            dict(optimizer="rmsprop", lr=1e-2, weight_decay=1e-3, batch_size=16, epochs=30))


@scenario(why="10 classes, 30 features, 3000 examples, a 2x128 MLP with Adam 1e-3")
def h_ten_classes():
    from sklearn.datasets import make_classification
    x, y = make_classification(3000, 30, n_informative=15, n_classes=10, n_clusters_per_class=1, class_sep=1.5,
                               random_state=21)
    train, val = split(std(x), y.astype(np.int64), 600)
    return mlp(30, 10, (128, 128)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=64, epochs=15)


@scenario(why="single-target regression with SGD+momentum 0.01 and weight decay 1e-4, 40 epochs")
def h_reg_momentum_40():
    train, val = split(*reg1(), 250)
    return (mlp(10, 1, (64,)), train, val,
            dict(optimizer="momentum", lr=0.01, weight_decay=1e-4, batch_size=32, epochs=40))


@scenario(why="Adam with (coupled) weight decay 1e-2 on the 5-blob data: common, and mild here")
def h_blobs_adam_wd():
    train, val = split(*blobs(1500, 8, 5, 2.5), 300)
    return (mlp(8, 5, (64,)), train, val,
            dict(optimizer="adam", lr=1e-3, weight_decay=1e-2, batch_size=32, epochs=20))


@scenario(why="noisy labels (flip 20%) on an easy problem, a modest MLP with AdamW: val accuracy ~80%, the "
               "noise's ceiling; it learns what there is")
def h_noisy_labels_modest():
    from sklearn.datasets import make_classification
    x, y = make_classification(2000, 10, n_informative=5, flip_y=0.2, class_sep=1.5, random_state=22)
    train, val = split(std(x), y.astype(np.int64), 500)
    return mlp(10, 2, (32,)), train, val, dict(optimizer="adamw", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="Adam 1e-3 on breast cancer for 40 epochs: val loss may creep up late while accuracy holds",
          borderline=True)
def b_cancer_long_adam():
    x, y = cancer()
    train, val = split(x, y.astype(np.float64)[:, None], 140)
    return mlp(30, 1, (64, 64)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=40)


@scenario(why="a 2-unit bottleneck on 10 classes learns part of it (loss ~60% of the baseline): too small a "
               "model, but the loss alone cannot tell it from a hard problem", borderline=True)
def b_bottleneck_ten_classes():
    from sklearn.datasets import make_classification
    x, y = make_classification(3000, 30, n_informative=15, n_classes=10, n_clusters_per_class=1, class_sep=1.5,
                               random_state=21)
    train, val = split(std(x), y.astype(np.int64), 600)
    return mlp(30, 10, (2,)), train, val, dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=20)


# == faulty runs: one fault each ==============================================================

# -- nan_loss
@scenario("nan_loss", allow=("exploding_gradients", "lr_too_high", "unscaled_data"),
          why="raw make_regression targets (std ~100s) with SGD 0.05: the MSE gradients blow the weights up"
              " (unscaled_data allowed when that pre-flight code was added: the raw units are the point of the scenario)")
def f_nan_raw_targets_sgd():
    train, val = split(*multireg(scale_y=False), 300)
    return mlp(8, 3, (64,)), train, val, dict(optimizer="sgd", lr=0.05, batch_size=32, epochs=5)


@scenario("nan_loss", allow=("exploding_gradients", "lr_too_high"),
          why="SGD+momentum at lr 2 on standardized regression: effective step 20, diverges to inf/NaN "
              "(first written with lr 0.5, which reached a loss of 5e12 but stayed finite: no NaN to report)")
def f_nan_momentum_huge_lr():
    train, val = split(*reg1(), 250)
    return mlp(10, 1, (64, 64)), train, val, dict(optimizer="momentum", lr=2.0, batch_size=32, epochs=5)


@scenario("nan_loss", allow=(),
          why="the model takes sqrt of a linear output: NaN as soon as it is negative (from the first step)")
def f_nan_sqrt_model():
    train, val = split(*reg1(), 250)
    return SqrtHead(10, 1), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=3)


# -- exploding_gradients
@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high"),
          why="6 ReLU layers with weights x4 at init: activations and gradients grow ~2x per layer")
def f_explode_big_init_deep():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,) * 6, gain=4.0), train, val, dict(optimizer="sgd", lr=1e-3, batch_size=32, epochs=5)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high"),
          why="a ReLU RNN whose recurrent matrix is 3x an orthogonal one, over 30 steps: the backward signal "
              "grows ~(3/sqrt 2)^30 (first written with 1.3x, under which ReLU halving the energy kept the "
              "gradient norm at ~1: no explosion)")
def f_explode_relu_rnn():
    x, y = sequences(900, length=30, kind="reg")
    train, val = split(x, y, 200)
    model = SeqNet("rnn", 32, nonlinearity="relu")
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(SEED)))
        model.rnn.weight_hh_l0.copy_(3.0 * q)
    return model, train, val, dict(optimizer="sgd", lr=1e-3, batch_size=32, epochs=5)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high", "unscaled_data"),
          why="inputs left in raw units (x100) and SGD 0.01: the first layer's gradients scale with the input"
              " (unscaled_data allowed when that pre-flight code was added: the raw units are the point of the scenario)")
def f_explode_unscaled_inputs():
    x, y = reg1()
    train, val = split(x * 100, y, 250)
    return mlp(10, 1, (64, 64)), train, val, dict(optimizer="sgd", lr=0.01, batch_size=32, epochs=5)


# -- vanishing_gradients
@scenario("vanishing_gradients", allow=SYMPTOMS,
          why="8 Sigmoid layers of 16 with SGD 0.1: the first layer's gradient is ~1e-6 of the last's")
def f_vanish_sigmoid8_moons():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (16,) * 8, act=nn.Sigmoid), train, val, dict(optimizer="sgd", lr=0.1, batch_size=32, epochs=10)


@scenario("vanishing_gradients", allow=SYMPTOMS,
          why="12 Tanh layers with weights x0.3: each layer shrinks the backward signal ~5x")
def f_vanish_tanh12_small_init():
    train, val = split(*multireg(), 300)
    return (mlp(8, 3, (32,) * 12, act=nn.Tanh, gain=0.3), train, val,
            dict(optimizer="momentum", lr=0.01, batch_size=32, epochs=10))


@scenario("vanishing_gradients", allow=SYMPTOMS,
          why="10 Sigmoid layers of 32 on circles, even with Adam: stuck at chance for these epochs")
def f_vanish_sigmoid10_adam():
    train, val = split(*circles(), 200)
    return mlp(2, 2, (32,) * 10, act=nn.Sigmoid), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=10)


# -- dead_relu
@scenario("dead_relu", allow=SYMPTOMS,
          why="the first conv's bias set to -5: every channel's ReLU outputs 0 on every image")
def f_dead_cnn_bias():
    train, val = split(*images(), 300)
    model = cnn()
    with torch.no_grad():
        model[0].bias.fill_(-5.0)
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=64, epochs=5)


@scenario("dead_relu", allow=SYMPTOMS,
          why="first layer bias -3 on standardized wine (pre-activations ~N(-3, 0.6)): all units silent")
def f_dead_wine_bias():
    train, val = split(*wine(), 45)
    model = mlp(13, 3, (64, 64))
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=16, epochs=15)


@scenario("dead_relu", allow=SYMPTOMS,
          why="the second hidden layer's bias at -10: its ReLUs are dead, the output is a constant")
def f_dead_second_layer_reg():
    train, val = split(*reg1(), 250)
    model = mlp(10, 1, (64, 64))
    with torch.no_grad():
        model[2].bias.fill_(-10.0)
    return model, train, val, dict(optimizer="sgd", lr=0.01, batch_size=32, epochs=10)


@scenario("dead_relu", allow=SYMPTOMS,
          why="a user's module with F.relu and fc1.bias = -10: the first layer is dead (no nn.ReLU to hook)")
def f_dead_functional_relu():
    train, val = split(*multireg(), 300)
    model = FunctionalNet(8, 3)
    with torch.no_grad():
        model.fc1.bias.fill_(-10.0)
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=8)


# -- overfitting
@scenario("overfitting", allow=(),
          why="50 noisy training examples (flip 10%), a 2x256 MLP, Adam for 40 epochs: memorises, val loss climbs")
def f_overfit_noisy_small():
    from sklearn.datasets import make_classification
    x, y = make_classification(550, 20, n_informative=5, flip_y=0.1, random_state=16)
    (xt, yt), val = split(std(x), y.astype(np.int64), 500)
    return mlp(20, 2, (256, 256)), (xt, yt), val, dict(optimizer="adam", lr=3e-3, batch_size=10, epochs=40)


@scenario("overfitting", allow=(),
          why="40 examples of a 30-feature noisy regression, a 2x256 MLP for 40 epochs: train -> 0, val far above")
def f_overfit_regression_small():
    from sklearn.datasets import make_regression
    x, y = make_regression(540, 30, n_informative=10, noise=30.0, random_state=17)
    (xt, yt), val = split(std(x), std(y[:, None]), 500)
    return mlp(30, 1, (256, 256)), (xt, yt), val, dict(optimizer="adam", lr=1e-3, batch_size=8, epochs=40)


@scenario("overfitting", allow=(),
          why="60 examples of gaussian quantiles plus 20 noise features, a 2x256 MLP, 40 epochs")
def f_overfit_quantiles_noise():
    x, y = quantiles(560)
    x = np.concatenate([x, np.random.RandomState(18).normal(size=(len(x), 20))], 1)
    (xt, yt), val = split(x, y, 500)
    return mlp(24, 3, (256, 256)), (xt, yt), val, dict(optimizer="adam", lr=3e-3, batch_size=10, epochs=40)


# -- loss_plateau
@scenario("loss_plateau", allow=("underfitting", "lr_too_low"),
          why="checkerboard XOR, Tanh net initialised near 0 (x0.1), plain SGD 0.02: sits on the saddle at ln 2")
def f_plateau_xor_saddle():
    train, val = split(*checkerboard(), 250)
    return (mlp(2, 2, (16, 16), act=nn.Tanh, gain=0.1), train, val,
            dict(optimizer="sgd", lr=0.02, batch_size=64, epochs=30))


@scenario("loss_plateau", allow=("underfitting",),
          why="a 1-unit ReLU bottleneck on radial 3-class data: the loss stops falling near the baseline")
def f_plateau_bottleneck():
    train, val = split(*quantiles(), 300)
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))
    return model, train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=30)


# -- loss_oscillation
@scenario("loss_oscillation", allow=("lr_too_high",), borderline=True,
          why="SGD momentum 0.98 at lr 0.1 on wine: the heavy ball overshoots back and forth (moved to "
              "borderline after the first run: only seed 0 oscillates; seeds 1-2 drive the train loss to 0 "
              "and the val loss up steadily, which is overfitting, not oscillation)")
def f_osc_momentum_wine():
    train, val = split(*wine(), 45)
    return (mlp(13, 3, (64,)), train, val,
            dict(optimizer="momentum", lr=0.1, momentum=0.98, batch_size=16, epochs=25))


@scenario("loss_oscillation", allow=("lr_too_high",),
          why="RMSprop at lr 0.03 on the 3-output regression: sign-like steps far too big to settle")
def f_osc_rmsprop_multireg():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,)), train, val, dict(optimizer="rmsprop", lr=0.03, batch_size=32, epochs=25)


# -- lr_too_high
@scenario("lr_too_high", allow=BLOWUP,
          why="Adam at lr 0.5 on moons: the first steps throw the loss far above where it started")
def f_high_adam_moons():
    train, val = split(*moons(), 250)
    return mlp(2, 1, (64, 64)), train, val, dict(optimizer="adam", lr=0.5, batch_size=32, epochs=10)


@scenario("lr_too_high", allow=BLOWUP,
          why="plain SGD at lr 5 on wine with a Tanh net: the logits saturate and the loss jumps up")
def f_high_sgd_wine_tanh():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (64,), act=nn.Tanh), train, val, dict(optimizer="sgd", lr=5.0, batch_size=16, epochs=15)


@scenario("lr_too_high", allow=BLOWUP,
          why="RMSprop at lr 0.1 on the CNN: the first steps overshoot and the loss rises")
def f_high_rmsprop_cnn():
    train, val = split(*images(), 300)
    return cnn(), train, val, dict(optimizer="rmsprop", lr=0.1, batch_size=64, epochs=5)


# -- lr_too_low
@scenario("lr_too_low", allow=(), why="Adam at lr 1e-6 on the CNN: the weights barely move in 5 epochs")
def f_low_adam_cnn():
    train, val = split(*images(), 300)
    return cnn(), train, val, dict(optimizer="adam", lr=1e-6, batch_size=64, epochs=5)


@scenario("lr_too_low", allow=(), why="SGD+momentum at lr 1e-6 on the 3-output regression")
def f_low_momentum_multireg():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,)), train, val, dict(optimizer="momentum", lr=1e-6, batch_size=32, epochs=8)


@scenario("lr_too_low", allow=(), why="RMSprop at lr 1e-7 on the GRU: nothing moves")
def f_low_rmsprop_gru():
    train, val = split(*sequences(600), 150)
    return SeqNet("gru", 16), train, val, dict(optimizer="rmsprop", lr=1e-7, batch_size=32, epochs=4)


@scenario("lr_too_low", allow=(), why="plain SGD at lr 1e-5 on breast cancer (1 output)")
def f_low_sgd_cancer():
    x, y = cancer()
    train, val = split(x, y.astype(np.float64)[:, None], 140)
    return mlp(30, 1, (32,)), train, val, dict(optimizer="sgd", lr=1e-5, batch_size=32, epochs=10)


# -- underfitting
@scenario("underfitting", allow=("loss_plateau",),
          why="a linear model on the checkerboard XOR: it cannot beat chance, whatever the training")
def f_under_linear_xor():
    train, val = split(*checkerboard(), 250)
    return mlp(2, 2, ()), train, val, dict(optimizer="adam", lr=1e-2, batch_size=32, epochs=20)


@scenario("underfitting", allow=("loss_plateau",),
          why="Adam with weight decay 0.5 (coupled L2) pins the weights near 0 on the 3-output regression")
def f_under_heavy_wd_multireg():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,)), train, val, dict(optimizer="adam", lr=1e-3, weight_decay=0.5, batch_size=32, epochs=15)


@scenario("underfitting", allow=("loss_plateau",),
          why="a linear model on radial 3-class data (gaussian quantiles): no linear boundary separates them")
def f_under_linear_quantiles():
    train, val = split(*quantiles(), 300)
    return mlp(4, 3, ()), train, val, dict(optimizer="momentum", lr=0.01, batch_size=32, epochs=20)


@scenario("underfitting", allow=("loss_plateau",),
          why="the CNN with SGD+momentum and weight decay 1.0: the weights shrink 5% a step, the output collapses "
              "(first written with 0.3, under which seeds 1-2 still reached 100% val accuracy: no fault)")
def f_under_heavy_wd_cnn():
    train, val = split(*images(), 300)
    return cnn(), train, val, dict(optimizer="momentum", lr=0.05, weight_decay=1.0, batch_size=64, epochs=8)


# -- bad_input_data
@scenario("bad_input_data", allow=(), why="wine as numpy float64 with 10 missing values (NaN) in column 4")
def f_bad_nan_numpy():
    (x, y), val = split(*wine(), 45, as_tensor=False, dtype=None)
    x = x.copy()
    x[np.arange(10) * 7, 4] = np.nan
    return mlp(13, 3, (32,)), (x, y), val, dict(epochs=5)


@scenario("bad_input_data", allow=(), why="clean train data, but 3 val rows with Inf (a log of 0 upstream)")
def f_bad_inf_val():
    train, (xv, yv) = split(*moons(), 250)
    xv = xv.clone()
    xv[[3, 50, 99], 1] = float("inf")
    return mlp(2, 1, (32,)), train, (xv, yv), dict(optimizer="adam", lr=3e-3, epochs=5)


@scenario("bad_input_data", allow=(), why="3-output regression in a TensorDataset with NaN in 5 target cells")
def f_bad_nan_targets_dataset():
    (x, y), val = split(*multireg(), 300)
    y = y.clone()
    y[[1, 2, 3, 4, 5], 2] = float("nan")
    return mlp(8, 3, (32,)), TensorDataset(x, y), val, dict(epochs=5)


@scenario("bad_input_data", allow=(), why="images with NaN pixels, through a DataLoader")
def f_bad_nan_images_loader():
    (x, y), val = split(*images(), 300)
    x = x.clone()
    x[10, 0, 2, 2] = float("nan")
    return cnn(), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True), val, dict(epochs=3)


# -- label_mismatch
@scenario("label_mismatch", allow=(), why="hastie labels are -1/+1 (int64) for a 1-output model")
def f_label_pm1():
    from sklearn.datasets import make_hastie_10_2
    x, y = make_hastie_10_2(800, random_state=19)
    train, val = split(std(x), y.astype(np.int64), 200)
    return mlp(10, 1, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="regression targets of shape (N,) against a (N, 1) output")
def f_label_flat_regression():
    x, y = reg1()
    train, val = split(x, y[:, 0], 250)
    return mlp(10, 1, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="wine class ids stored as float64 for a 3-output model")
def f_label_float_ids():
    x, y = wine()
    train, val = split(x, y.astype(np.float64), 45, as_tensor=False, dtype=None)
    return mlp(13, 3, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="5 classes (ids 0..4) but the model has 3 outputs")
def f_label_too_few_outputs():
    train, val = split(*blobs(600, 6, 5, 1.5), 150)
    return mlp(6, 3, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="binary 0/1 float targets of shape (N,) against a (N, 1) output")
def f_label_flat_binary():
    x, y = moons()
    train, val = split(x, y[:, 0], 250)
    return mlp(2, 1, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="3-output regression targets against a 1-output model")
def f_label_multireg_one_output():
    train, val = split(*multireg(), 300)
    return mlp(8, 1, (32,)), train, val, dict(epochs=5)


# -- class_imbalance
@scenario("class_imbalance", allow=(), why="moons with positives cut to ~5% (1:19); still separable")
def f_imbalance_binary():
    x, y = moons(2000)
    keep = (y[:, 0] == 0) | (np.arange(len(y)) % 19 == 0)
    train, val = split(x[keep], y[keep], 200)
    return mlp(2, 1, (32, 32)), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=15)


@scenario("class_imbalance", allow=(), why="4 classes weighted 85/5/5/5 (1:17), well separated")
def f_imbalance_multiclass():
    from sklearn.datasets import make_classification
    x, y = make_classification(1600, 10, n_informative=6, n_classes=4, n_clusters_per_class=1,
                               weights=[0.85, 0.05, 0.05, 0.05], class_sep=2.0, random_state=20)
    train, val = split(std(x), y.astype(np.int64), 400)
    return mlp(10, 4, (64,)), train, val, dict(optimizer="adam", lr=2e-3, batch_size=32, epochs=15)


@scenario("class_imbalance", allow=(), why="breast cancer, 2-class CE, malignant cut to 1:12")
def f_imbalance_cancer_ce():
    x, y = cancer()
    keep = (y == 1) | (np.arange(len(y)) % 8 == 0)
    train, val = split(x[keep], y[keep], 80)
    return mlp(30, 2, (32,)), train, val, dict(optimizer="momentum", lr=0.01, batch_size=32, epochs=15)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high"),
          why="10 linear layers (no activation) at 1.5x init: the product of the matrices grows each layer")
def f_explode_deep_linear():
    train, val = split(*reg1(), 250)
    torch.manual_seed(SEED)
    layers = [nn.Linear(10, 64)] + [nn.Linear(64, 64) for _ in range(8)] + [nn.Linear(64, 1)]
    with torch.no_grad():
        for l in layers:
            l.weight.mul_(1.5 * 3 ** 0.5)  # PyTorch's default is ~1/sqrt(3 fan_in): this is ~1.5 gain per layer
    return nn.Sequential(*layers), train, val, dict(optimizer="sgd", lr=1e-2, batch_size=32, epochs=5)


@scenario("vanishing_gradients", allow=SYMPTOMS,
          why="8 Sigmoid layers of 32 on wine with SGD+momentum 0.05")
def f_vanish_sigmoid8_wine():
    train, val = split(*wine(), 45)
    return (mlp(13, 3, (32,) * 8, act=nn.Sigmoid), train, val,
            dict(optimizer="momentum", lr=0.05, batch_size=16, epochs=15))


@scenario("overfitting", allow=(),
          why="40 noisy 8x8 images (noise 1.0) and a wide CNN with a 128-unit head, Adam for 40 epochs")
def f_overfit_cnn_tiny():
    x, y = images(340, noise=1.0)
    (xt, yt), val = split(x, y, 300)
    return cnn(channels=(32, 64), hidden=128), (xt, yt), val, dict(optimizer="adam", lr=3e-3, batch_size=8, epochs=40)


@scenario("overfitting", allow=(),
          why="60 sequences of the 3-class task and a GRU(64), RMSprop for 40 epochs: memorises them")
def f_overfit_gru_small():
    x, y = sequences(360, kind="third")
    (xt, yt), val = split(x, y, 300)
    return SeqNet("gru", 64, n_out=3), (xt, yt), val, dict(optimizer="rmsprop", lr=3e-3, batch_size=10, epochs=40)


@scenario("loss_plateau", allow=("underfitting", "lr_too_low", "vanishing_gradients"),
          why="a ReLU MLP on circles initialised at 0.05x and plain SGD 0.01: a long flat start near ln 2 "
              "(vanishing_gradients allowed after the first run: at 0.05x the first layer's gradient is the "
              "product of the tiny later weights, ~1e-4 of the last layer's, which is true of the run)")
def f_plateau_relu_small_init():
    train, val = split(*circles(), 200)
    return (mlp(2, 2, (32, 32), gain=0.05), train, val,
            dict(optimizer="sgd", lr=0.01, batch_size=32, epochs=25))


@scenario("loss_plateau", allow=("underfitting",),
          why="a regression net ending in a Sigmoid (outputs in (0, 1)) on standardized targets: the loss "
              "falls a little, then stays flat far above what the features allow")
def f_plateau_sigmoid_output_regression():
    train, val = split(*reg1(), 250)
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=25)


@scenario("loss_oscillation", allow=("lr_too_high", "dead_relu"),
          why="SGD momentum 0.99 at lr 0.1 on circles: the ball overshoots the valley epoch after epoch (replaces "
              "momentum 0.99 at lr 0.05 on moons, whose curves turned out smooth: no oscillation to catch)")
def f_osc_momentum099_circles():
    train, val = split(*circles(), 200)
    return (mlp(2, 2, (32, 32)), train, val,
            dict(optimizer="momentum", lr=0.1, momentum=0.99, batch_size=32, epochs=25))


@scenario("loss_oscillation", allow=("lr_too_high",), borderline=True,
          why="Adam at lr 0.05 with batches of 8 on iris: each noisy step is too big to settle (moved to "
              "borderline after the first run: the 38-example val loss is noisy and drifts up; neither a clear "
              "oscillation nor clear overfitting)")
def f_osc_adam_iris_b8():
    train, val = split(*iris(), 38)
    return mlp(4, 3, (64,)), train, val, dict(optimizer="adam", lr=0.05, batch_size=8, epochs=30)


@scenario("lr_too_high", allow=BLOWUP, why="AdamW at lr 0.3 on the 3-output regression")
def f_high_adamw_multireg():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64, 64)), train, val, dict(optimizer="adamw", lr=0.3, batch_size=32, epochs=10)


@scenario("lr_too_high", allow=BLOWUP, why="SGD+momentum at lr 3 on the GRU (no clipping)")
def f_high_momentum_gru():
    train, val = split(*sequences(), 300)
    return SeqNet("gru", 16), train, val, dict(optimizer="momentum", lr=3.0, batch_size=32, epochs=6)


@scenario("lr_too_low", allow=(), why="AdamW at lr 1e-6 on the LSTM regression")
def f_low_adamw_lstm():
    train, val = split(*sequences(kind="reg"), 300)
    return SeqNet("lstm", 24), train, val, dict(optimizer="adamw", lr=1e-6, batch_size=64, epochs=5)


@scenario("underfitting", allow=("loss_plateau",),
          why="L1 at 1e-2 on a 2x64 MLP (sum |W| ~ 300: a penalty of ~3 dwarfs the loss) on gaussian quantiles")
def f_under_heavy_l1():
    train, val = split(*quantiles(), 300)
    return mlp(4, 3, (64, 64)), train, val, dict(optimizer="adam", lr=3e-3, l1=1e-2, batch_size=32, epochs=15)


@scenario("underfitting", allow=("loss_plateau",),
          why="weight decay 0.1 with SGD+momentum on moons (a 0.1 L2 is 100x the usual)")
def f_under_wd_moons():
    train, val = split(*moons(), 250)
    return (mlp(2, 1, (64, 64)), train, val,
            dict(optimizer="momentum", lr=0.05, weight_decay=0.1, batch_size=32, epochs=20))


# == a second batch, written after the rule changes and run once as a check of how they generalise ==========
# (new data: friedman 2/3, swiss roll, sparse-uncorrelated, bar images, token sequences, sequences with a long
# memory; new models: SiLU/ELU, LayerNorm, residual blocks, embeddings, Conv1d, a zero-initialised net)

def friedman(kind=2, n=1000, seed=30, scale_y=True):
    from sklearn.datasets import make_friedman2, make_friedman3
    x, y = (make_friedman2 if kind == 2 else make_friedman3)(n, noise=0.0 if kind == 2 else 0.01, random_state=seed)
    return std(x), (std(y[:, None]) if scale_y else y[:, None])


def bars(n=1200, seed=31):
    """1x8x8 images: noise plus a horizontal (0) or vertical (1) bar; targets 0/1 of shape (N, 1)."""
    rng = np.random.RandomState(seed)
    x = rng.normal(0, 0.3, (n, 1, 8, 8))
    y = rng.randint(0, 2, n)
    for i, c in enumerate(y):
        k = rng.randint(1, 7)
        if c:
            x[i, 0, :, k] += 1.0
        else:
            x[i, 0, k, :] += 1.0
    return x.astype(np.float32), y.astype(np.float32)[:, None]


def tokens(n=1500, length=20, vocab=50, seed=32):
    """Integer token sequences; class 1 when token 7 occurs more often than token 3."""
    rng = np.random.RandomState(seed)
    x = rng.randint(0, vocab, (n, length))
    bias = rng.rand(n) < 0.5
    x[bias, :3] = 7
    x[~bias, :3] = 3
    y = ((x == 7).sum(1) > (x == 3).sum(1)).astype(np.int64)
    return x.astype(np.int64), y


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab=50, dim=16, n_out=2):
        super().__init__()
        torch.manual_seed(SEED)
        self.emb, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, n_out)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


class ResidualMLP(nn.Module):
    def __init__(self, n_in, n_out, width=64, blocks=3, dropout=None):
        super().__init__()
        torch.manual_seed(SEED)
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                                  *([nn.Dropout(dropout)] if dropout else []),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(torch.relu(h))
        return self.out(torch.relu(h))


def conv1d_net(n_out=2):
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                         nn.Linear(16, n_out))


def bumps(n=1200, length=24, seed=33):
    """(N, 1, L) signals with a bump in the first (0) or second (1) half."""
    rng = np.random.RandomState(seed)
    x = rng.normal(0, 0.3, (n, 1, length))
    y = rng.randint(0, 2, n)
    for i, c in enumerate(y):
        k = rng.randint(2, length // 2 - 2) + c * (length // 2)
        x[i, 0, k - 2:k + 3] += np.array([0.5, 1.0, 1.5, 1.0, 0.5])
    return x.astype(np.float32), y.astype(np.int64)


@scenario(why="friedman2 (standardized) with a 2x64 SiLU MLP and Adam 2e-3: R² > 0.95")
def h2_friedman2_silu_adam():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (64, 64), act=nn.SiLU), train, val, dict(optimizer="adam", lr=2e-3, batch_size=32, epochs=30)


@scenario(why="friedman3 with an ELU MLP, RMSprop 1e-3, batch 16")
def h2_friedman3_elu_rmsprop():
    train, val = split(*friedman(3), 250)
    return mlp(4, 1, (64, 64), act=nn.ELU), train, val, dict(optimizer="rmsprop", lr=1e-3, batch_size=16, epochs=25)


@scenario(why="swiss roll: recover t from the 3-d point with a LayerNorm MLP, AdamW 3e-3 wd 1e-2")
def h2_swiss_roll_layernorm():
    from sklearn.datasets import make_swiss_roll
    x, t = make_swiss_roll(1200, noise=0.1, random_state=34)
    train, val = split(std(x), std(t[:, None]), 300)
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(3, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64),
                          nn.ReLU(), nn.Linear(64, 1))
    return model, train, val, dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2, batch_size=32, epochs=25)


@scenario(why="make_sparse_uncorrelated (linear in 4 of 10 features, unit noise) with a linear model, SGD 0.05")
def h2_sparse_linear_sgd():
    from sklearn.datasets import make_sparse_uncorrelated
    x, y = make_sparse_uncorrelated(1000, 10, random_state=35)
    train, val = split(std(x), std(y[:, None]), 250)
    return mlp(10, 1, ()), train, val, dict(optimizer="sgd", lr=0.05, batch_size=32, epochs=15)


@scenario(why="bar images (horizontal vs vertical), a CNN with one output and BCE, Adam 2e-3")
def h2_bars_cnn_bce():
    train, val = split(*bars(), 300)
    return cnn(n_out=1), train, val, dict(optimizer="adam", lr=2e-3, batch_size=32, epochs=8)


@scenario(why="bar images with a GELU CNN and global average pooling, SGD+momentum 0.05")
def h2_bars_gelu_gap_momentum():
    train, val = split(*bars(), 300)
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1), nn.GELU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1))
    return model, train, val, dict(optimizer="momentum", lr=0.05, batch_size=64, epochs=12)


@scenario(why="token sequences (int64 inputs) with a bag-of-embeddings classifier, Adam 1e-2")
def h2_tokens_embedding_adam():
    train, val = split(*tokens(), 300)
    return BagOfEmbeddings(), train, val, dict(optimizer="adam", lr=1e-2, batch_size=32, epochs=15)


@scenario(why="a residual MLP (3 blocks, a user's module with torch.relu) on 6 classes, Adam 1e-3")
def h2_residual_mlp_adam():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=36)
    train, val = split(std(x), y.astype(np.int64), 300)
    return ResidualMLP(16, 6), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="the residual MLP with dropout 0.3 in its blocks and SGD+momentum 0.02")
def h2_residual_dropout_momentum():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=36)
    train, val = split(std(x), y.astype(np.int64), 300)
    return ResidualMLP(16, 6, dropout=0.3), train, val, dict(optimizer="momentum", lr=0.02, batch_size=32, epochs=20)


@scenario(why="Conv1d on 1-d signals: is the bump in the first or second half; SGD+momentum 0.02")
def h2_conv1d_bumps():
    train, val = split(*bumps(), 300)
    return conv1d_net(), train, val, dict(optimizer="momentum", lr=0.02, batch_size=32, epochs=12)


@scenario(why="an LSTM recalling the first element of a length-8 sequence (regression), Adam 3e-3")
def h2_lstm_copy_first():
    rng = np.random.RandomState(37)
    x = rng.normal(size=(1500, 8, 1)).astype(np.float32)
    train, val = split(x, x[:, 0, :].astype(np.float64), 300)
    return SeqNet("lstm", 32), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=30)


@scenario(why="a GRU predicting two outputs (mean and max of a sequence), Adam 5e-3")
def h2_gru_two_outputs():
    rng = np.random.RandomState(38)
    x = rng.normal(size=(1500, 10, 1)).astype(np.float32)
    y = std(np.stack([x[:, :, 0].mean(1), x[:, :, 0].max(1)], 1))
    train, val = split(x, y, 300)
    return SeqNet("gru", 32, n_out=2), train, val, dict(optimizer="adam", lr=5e-3, batch_size=64, epochs=20)


@scenario(why="numpy int32 class labels (the Windows default) on 3 classes, Adam 1e-3")
def h2_int32_labels():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 10, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=39)
    (xt, yt), (xv, yv) = split(std(x), y.astype(np.int32), 300, as_tensor=False)
    return mlp(10, 3, (64,)), (xt, yt), (xv, yv), dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="multi-label 0/1 targets (N, 3) with 3 outputs (trained as a regression by the default loss, Adam; "
               "since the step seam it is inferred as multi-label and trained with BCE)")
def h2_multilabel():
    from sklearn.datasets import make_multilabel_classification
    x, y = make_multilabel_classification(1200, 12, n_classes=3, random_state=40)
    train, val = split(std(x), y.astype(np.float64), 300)
    return mlp(12, 3, (64,)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="SGD with momentum 0.5 at lr 0.05, 2 classes")
def h2_momentum05():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, random_state=41)
    train, val = split(std(x), y.astype(np.int64), 300)
    return mlp(12, 2, (64,)), train, val, dict(optimizer="momentum", lr=0.05, momentum=0.5, batch_size=64, epochs=25)


@scenario(why="SGD with momentum 0.95 at lr 0.01 on friedman3")
def h2_momentum095_friedman3():
    train, val = split(*friedman(3), 250)
    return mlp(4, 1, (64,)), train, val, dict(optimizer="momentum", lr=0.01, momentum=0.95, batch_size=32, epochs=20)


@scenario(why="Adam at lr 1e-4 (low but sensible) for 40 epochs: slow, and still learning the whole way")
def h2_adam_low_but_fine():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=42)
    train, val = split(std(x), y.astype(np.int64), 300)
    return mlp(12, 3, (64, 64)), train, val, dict(optimizer="adam", lr=1e-4, batch_size=32, epochs=40)


@scenario(why="friedman2 in batches of 256 (4 steps an epoch), Adam 1e-2 for 40 epochs")
def h2_big_batch_friedman2():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (64, 64)), train, val, dict(optimizer="adam", lr=1e-2, batch_size=256, epochs=40)


@scenario(why="early stopping (patience 3) on friedman2 with Adam for up to 40 epochs")
def h2_early_stopping_regression():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (128, 128)), train, val, dict(optimizer="adam", lr=3e-3, patience=3, batch_size=32, epochs=40)


@scenario(why="a 4-layer Sigmoid MLP with Adam 3e-3: deep for sigmoid, but Adam trains it")
def h2_sigmoid4_adam():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, random_state=43)
    train, val = split(std(x), y.astype(np.int64), 300)
    return (mlp(12, 2, (32,) * 4, act=nn.Sigmoid), train, val,
            dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=30))


@scenario(why="aggressive clipping (0.1) with Adam 1e-3 on friedman3: clipping only slows it")
def h2_clip_small_adam():
    train, val = split(*friedman(3), 250)
    return mlp(4, 1, (64, 64)), train, val, dict(optimizer="adam", lr=1e-3, grad_clip=0.1, batch_size=32, epochs=25)


@scenario(why="a DataLoader with drop_last=True and batch 100 on 6-class data, RMSprop 1e-3")
def h2_loader_drop_last():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=44)
    (xt, yt), val = split(std(x), y.astype(np.int64), 300)
    dl = DataLoader(TensorDataset(xt, yt), batch_size=100, shuffle=True, drop_last=True)
    return mlp(16, 6, (64,)), dl, val, dict(optimizer="rmsprop", lr=1e-3, epochs=20)


# -- faulty, second batch
@scenario("nan_loss", allow=("exploding_gradients", "lr_too_high", "unscaled_data"),
          why="raw friedman2 targets (std ~400) with SGD 1.0: the MSE gradients overflow within a few steps"
              " (unscaled_data allowed when that pre-flight code was added: the raw units are the point of the scenario)")
def f2_nan_raw_friedman2():
    train, val = split(*friedman(2, scale_y=False), 250)
    return mlp(4, 1, (64,)), train, val, dict(optimizer="sgd", lr=1.0, batch_size=32, epochs=5)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high"),
          why="8 ReLU layers at 3x init on friedman3 with SGD 0.01: gradients grow layer by layer")
def f2_explode_deep_gain3():
    train, val = split(*friedman(3), 250)
    return mlp(4, 1, (64,) * 8, gain=3.0), train, val, dict(optimizer="sgd", lr=0.01, batch_size=32, epochs=5)


@scenario("vanishing_gradients", allow=SYMPTOMS,
          why="12 Sigmoid layers on 2-class data with SGD+momentum 0.05")
def f2_vanish_sigmoid12():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, random_state=45)
    train, val = split(std(x), y.astype(np.int64), 300)
    return (mlp(12, 2, (32,) * 12, act=nn.Sigmoid), train, val,
            dict(optimizer="momentum", lr=0.05, batch_size=32, epochs=10))


@scenario("dead_relu", allow=SYMPTOMS,
          why="inputs min-max scaled to [0, 1] and the first layer's weights made all negative (zero bias): "
              "every pre-activation is <= 0, every unit dead")
def f2_dead_negative_weights():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, random_state=46)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    train, val = split(x, y.astype(np.int64), 300)
    model = mlp(12, 2, (64, 64))
    with torch.no_grad():
        model[0].weight.copy_(-model[0].weight.abs())
        model[0].bias.zero_()
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=10)


@scenario("dead_relu", allow=SYMPTOMS, why="the Conv1d net with its first conv's bias at -20: all channels dead")
def f2_dead_conv1d():
    train, val = split(*bumps(), 300)
    model = conv1d_net()
    with torch.no_grad():
        model[0].bias.fill_(-20.0)
    return model, train, val, dict(optimizer="momentum", lr=0.02, batch_size=32, epochs=8)


@scenario("overfitting", allow=(),
          why="30 swiss-roll points and a 3x256 MLP for 40 epochs with Adam: fits the 30, not the roll")
def f2_overfit_swiss_roll():
    from sklearn.datasets import make_swiss_roll
    x, t = make_swiss_roll(530, noise=1.0, random_state=47)
    (xt, yt), val = split(std(x), std(t[:, None]), 500)
    return mlp(3, 1, (256, 256, 256)), (xt, yt), val, dict(optimizer="adam", lr=1e-3, batch_size=8, epochs=40)


@scenario("overfitting", allow=(),
          why="60 token sequences whose label is flipped for 20% of them, a position-aware embedding model "
              "(dim 32, 256-unit head), Adam for 40 epochs: it memorises the noise (first written without the "
              "flips and with a wider model: the label's cue sits in the first 3 tokens, 60 examples were enough "
              "to learn it, val accuracy 99.8%, no fault; and 7 s a run)")
def f2_overfit_tokens():
    x, y = tokens(560)
    flip = np.random.RandomState(53).rand(len(y)) < 0.2
    y = np.where(flip, 1 - y, y)
    (xt, yt), val = split(x, y, 500)
    torch.manual_seed(SEED)

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 32)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(20 * 32, 256), nn.ReLU(), nn.Linear(256, 2))

        def forward(self, x):
            return self.head(self.emb(x))
    return Wide(), (xt, yt), val, dict(optimizer="adam", lr=1e-3, batch_size=10, epochs=40)


@scenario("loss_plateau", allow=("underfitting",),
          why="a Tanh MLP with every weight and bias initialised to 0: no gradient reaches any weight "
              "matrix, only the output bias learns; the loss sits at the baseline for the whole run")
def f2_plateau_zero_init():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 12, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=48)
    train, val = split(std(x), y.astype(np.int64), 300)
    model = mlp(12, 3, (32, 32), act=nn.Tanh)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model, train, val, dict(optimizer="momentum", lr=0.05, batch_size=32, epochs=15)


@scenario("loss_oscillation", allow=("lr_too_high", "dead_relu"),
          why="SGD momentum 0.99 at lr 0.2 on iris: the heavy ball swings through the valley")
def f2_osc_momentum_iris():
    train, val = split(*iris(), 38)
    return mlp(4, 3, (32,)), train, val, dict(optimizer="momentum", lr=0.2, momentum=0.99, batch_size=16, epochs=30)


@scenario("lr_too_high", allow=BLOWUP, borderline=True,
          why="Adam at lr 1.0 on the bag-of-embeddings classifier (moved to borderline after its first run: "
              "this linear model on an easy task reaches train loss 1e-10 and 100% val accuracy at lr 1.0 on two "
              "seeds, a wild start on the third: no clear fault)")
def f2_high_adam_embeddings():
    train, val = split(*tokens(), 300)
    return BagOfEmbeddings(), train, val, dict(optimizer="adam", lr=1.0, batch_size=32, epochs=8)


@scenario("lr_too_high", allow=BLOWUP, why="plain SGD at lr 10 (the most TrainConfig accepts) on the bar-image CNN")
def f2_high_sgd_bars():
    train, val = split(*bars(), 300)
    return cnn(n_out=1), train, val, dict(optimizer="sgd", lr=10.0, batch_size=32, epochs=6)


@scenario("lr_too_low", allow=(), why="plain SGD at lr 1e-6 on the bar-image CNN")
def f2_low_sgd_bars():
    train, val = split(*bars(), 300)
    return cnn(n_out=1), train, val, dict(optimizer="sgd", lr=1e-6, batch_size=32, epochs=5)


@scenario("lr_too_low", allow=(), why="Adam at lr 1e-7 on the residual MLP")
def f2_low_adam_residual():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=36)
    train, val = split(std(x), y.astype(np.int64), 300)
    return ResidualMLP(16, 6), train, val, dict(optimizer="adam", lr=1e-7, batch_size=32, epochs=6)


@scenario("underfitting", allow=("loss_plateau",),
          why="a linear model on two concentric 6-d shells (gaussian quantiles, 2 classes): no linear boundary")
def f2_under_linear_shells():
    from sklearn.datasets import make_gaussian_quantiles
    x, y = make_gaussian_quantiles(n_samples=1200, n_features=6, n_classes=2, random_state=49)
    train, val = split(std(x), y.astype(np.int64), 300)
    return mlp(6, 2, ()), train, val, dict(optimizer="adam", lr=1e-2, batch_size=32, epochs=20)


@scenario("underfitting", allow=("loss_plateau",), borderline=True,
          why="L1 at 0.05 on the friedman2 regression: the penalty pins the weights at 0 (moved to borderline "
              "after its first run: Adam still reaches val R² 0.93 on two seeds and 0.78 on the third, against "
              "~0.99 without L1; held back, but not clearly underfitting)")
def f2_under_heavy_l1_regression():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (64, 64)), train, val, dict(optimizer="adam", lr=1e-3, l1=0.05, batch_size=32, epochs=15)


@scenario("bad_input_data", allow=(), why="friedman3 targets with 2 Inf values (a division by 0 upstream)")
def f2_bad_inf_targets():
    (x, y), val = split(*friedman(3), 250)
    y = y.clone()
    y[[7, 70]] = float("inf")
    return mlp(4, 1, (32,)), (x, y), val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="class labels 1..3 (1-based, as R or MATLAB write them) for 3 outputs")
def f2_label_one_based():
    from sklearn.datasets import make_classification
    x, y = make_classification(900, 10, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=50)
    train, val = split(std(x), (y + 1).astype(np.int64), 200)
    return mlp(10, 3, (32,)), train, val, dict(epochs=5)


@scenario("label_mismatch", allow=(), why="binary labels coded 1/2 for a 1-output model")
def f2_label_one_two():
    from sklearn.datasets import make_classification
    x, y = make_classification(900, 10, n_informative=6, random_state=51)
    train, val = split(std(x), (y + 1).astype(np.int64)[:, None], 200)
    return mlp(10, 1, (32,)), train, val, dict(epochs=5)


@scenario("class_imbalance", allow=(), why="3 classes at 90/8/2 (1:45)")
def f2_imbalance_three():
    from sklearn.datasets import make_classification
    x, y = make_classification(2000, 10, n_informative=6, n_classes=3, n_clusters_per_class=1,
                               weights=[0.9, 0.08, 0.02], class_sep=2.0, random_state=52)
    train, val = split(std(x), y.astype(np.int64), 400)
    return mlp(10, 3, (64,)), train, val, dict(optimizer="adam", lr=2e-3, batch_size=32, epochs=15)


# == a third batch (issue "health warnings whose fixes work"), written before the rules for these faults ======
# (faults the rules missed: gradients far above what the loss implies while the run still learns, from raw
# inputs, deep residual stacks without normalisation or an initialisation far above He/Xavier; probabilities
# fed to a loss that expects logits; the under-damped swing of full-batch heavy-ball momentum)

class DeepResidual(nn.Module):
    """``blocks`` residual blocks h + f(h), no normalisation (``norm=False``) or pre-LayerNorm (``norm=True``)."""

    def __init__(self, n_in, n_out, width=64, blocks=24, norm=False, gain=1.0):
        super().__init__()
        torch.manual_seed(SEED)
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(*([nn.LayerNorm(width)] if norm else []), nn.Linear(width, width),
                                                  nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, n_out)
        if gain != 1.0:
            with torch.no_grad():
                for b in self.blocks:
                    for m in b:
                        if isinstance(m, nn.Linear):
                            m.weight.mul_(gain)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class SoftmaxNet(nn.Module):
    """A user's classifier that returns F.softmax of its scores (no nn.Softmax module to name)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        torch.manual_seed(SEED)
        self.body = nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, n_out))

    def forward(self, x):
        return F.softmax(self.body(x), dim=1)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high", "loss_oscillation"),
          why="24 residual blocks h + f(h) without normalisation, block weights at 2x init, on 6-class data with "
              "Adam 1e-3: every block adds to the activations, which reach the output thousands of times larger than "
              "at unit scale; Adam's normalised steps still learn")
def f3_explode_deep_residual():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=36)
    train, val = split(std(x), y.astype(np.int64), 300)
    return DeepResidual(16, 6, blocks=24, gain=2.0), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32,
                                                                      epochs=10)


@scenario("exploding_gradients", allow=("nan_loss", "lr_too_high", "loss_oscillation"),
          why="a 4-layer ReLU MLP with every weight at 3x PyTorch's init (about 5x He) on the 3-output regression, "
              "Adam 1e-3: the outputs start ~30x the targets' scale, the gradients with them; Adam still learns")
def f3_explode_init_gain3():
    train, val = split(*multireg(), 300)
    return mlp(8, 3, (64,) * 4, gain=3.0), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=15)


@scenario("unscaled_data", allow=("exploding_gradients", "lr_too_high", "loss_oscillation", "nan_loss"),
          why="breast cancer in raw units (area up to 2500, smoothness ~0.1), never standardized, with Adam 1e-3: "
              "it still learns, with gradients set by the largest feature")
def f3_unscaled_cancer_adam():
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    train, val = split(x, y.astype(np.int64), 140)
    return mlp(30, 2, (64,)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario("unscaled_data", allow=("exploding_gradients", "lr_too_high", "loss_oscillation", "nan_loss", "dead_relu"),
          why="the quadrant images in raw pixel units (x255) with the CNN and SGD+momentum 1e-3")
def f3_unscaled_pixels_momentum():
    x, y = images()
    train, val = split(x * 255, y, 300)
    return cnn(), train, val, dict(optimizer="momentum", lr=1e-3, batch_size=64, epochs=8)


@scenario("loss_oscillation", allow=("lr_too_high",),
          why="full-batch (one step an epoch) SGD with momentum 0.99 at lr 0.05 on friedman2 for 80 epochs: the "
              "heavy ball is under-damped, the loss rises and falls every few epochs")
def f3_osc_full_batch_heavy_ball():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (64, 64)), train, val, dict(optimizer="momentum", lr=0.05, momentum=0.99, batch_size=1024,
                                                  epochs=80)


@scenario("loss_oscillation", allow=("lr_too_high",), borderline=True,
          why="full-batch SGD with momentum 0.98 at lr 0.1 on wine for 60 epochs (moved to borderline after its first "
              "run: on both seeds the train loss falls smoothly to 0 and the val loss climbs from epoch 15 on, which "
              "is overfitting, not a swing)")
def f3_osc_full_batch_heavy_ball_wine():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (32,)), train, val, dict(optimizer="momentum", lr=0.1, momentum=0.98, batch_size=256, epochs=60)


@scenario("probability_outputs", allow=("loss_plateau", "underfitting"),
          why="an nn.Softmax as the last layer of a classifier trained with cross-entropy (which applies its own)")
def f3_prob_softmax_layer():
    train, val = split(*blobs(1500, 8, 4, 2.0), 300)
    model = mlp(8, 4, (64,))
    model.append(nn.Softmax(dim=1))
    return model, train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=15)


@scenario("probability_outputs", allow=("loss_plateau", "underfitting"),
          why="an nn.Sigmoid as the last layer of a 1-output binary model, trained with the default BCE-with-logits")
def f3_prob_sigmoid_layer():
    x, y = cancer()
    train, val = split(x, y.astype(np.float64)[:, None], 140)
    model = mlp(30, 1, (32,))
    model.append(nn.Sigmoid())
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario("probability_outputs", allow=("loss_plateau", "underfitting"),
          why="a user's module returning F.softmax(scores): no module to name, the outputs say it")
def f3_prob_functional_softmax():
    train, val = split(*quantiles(), 300)
    return SoftmaxNet(4, 3), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=20)


@scenario(why="full-batch SGD with momentum 0.9 at lr 0.05 on friedman2 for 80 epochs: damped enough, converges")
def h3_full_batch_momentum09():
    train, val = split(*friedman(2), 250)
    return mlp(4, 1, (64, 64)), train, val, dict(optimizer="momentum", lr=0.05, momentum=0.9, batch_size=1024,
                                                  epochs=80)


@scenario(why="full-batch Adam 3e-3 on wine for 80 epochs")
def h3_full_batch_adam_wine():
    train, val = split(*wine(), 45)
    return mlp(13, 3, (32,)), train, val, dict(optimizer="adam", lr=3e-3, batch_size=256, epochs=80)


@scenario(why="24 pre-LayerNorm residual blocks (the transformer recipe) on 6-class data with Adam 1e-3")
def h3_deep_residual_layernorm():
    from sklearn.datasets import make_classification
    x, y = make_classification(1500, 16, n_informative=10, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=36)
    train, val = split(std(x), y.astype(np.int64), 300)
    return DeepResidual(16, 6, blocks=24, norm=True), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32,
                                                                       epochs=10)


@scenario(why="an nn.LogSoftmax last layer with loss=nn.NLLLoss(): log-probabilities where NLL expects them")
def h3_logsoftmax_nll():
    train, val = split(*blobs(1500, 8, 4, 2.0), 300)
    model = mlp(8, 4, (64,))
    model.append(nn.LogSoftmax(dim=1))
    return model, train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=15, loss=nn.NLLLoss())


@scenario(why="an nn.Sigmoid last layer with loss=nn.BCELoss(): probabilities where BCELoss expects them")
def h3_sigmoid_bceloss():
    x, y = cancer()
    train, val = split(x, y.astype(np.float64)[:, None], 140)
    model = mlp(30, 1, (32,))
    model.append(nn.Sigmoid())
    return model, train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20, loss=nn.BCELoss())


@scenario(why="sklearn's digits as raw pixel counts 0..16 (an order of magnitude, not hundreds) with Adam 1e-3: "
               "common, and Adam copes")
def h3_digits_raw_counts_adam():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    train, val = split(x.astype(np.float64), y.astype(np.int64), 300)
    return mlp(64, 10, (64,)), train, val, dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=15)


# == a fourth batch: the model shapes of issue "Any PyTorch model, any batch" ================================
# (dict batches, Hugging Face transformers built from a config (no hub) with LayerNorm and GELU and their own
# loss, per-position (sequence) outputs, multi-label targets, two-input models; transformers is optional: the
# scenarios that need it are skipped without it)

def token_batches(n=800, length=16, vocab=50, seed=60):
    """Token sequences; label 1 when token 7 occurs (it is put first in half of them)."""
    rng = np.random.RandomState(seed + SEED)
    x = rng.randint(5, vocab, (n, length))
    y = (x == 7).any(1).astype(np.int64)
    x[rng.rand(n) < 0.5, 0] = 7
    y = (x == 7).any(1).astype(np.int64)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    cut = n * 3 // 4

    def d(sl):
        return {"input_ids": x[sl], "attention_mask": torch.ones_like(x[sl]), "labels": y[sl]}
    return d(slice(0, cut)), d(slice(cut, n))


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(SEED)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


def lm_batches(n=800, length=16, seed=61):
    """Arithmetic token sequences a small causal LM learns: start s, step k, modulo 45 (+5)."""
    rng = np.random.RandomState(seed + SEED)
    start, step = rng.randint(0, 45, n), rng.randint(1, 6, n)
    seq = torch.as_tensor((start[:, None] + step[:, None] * np.arange(length)) % 45 + 5)
    cut = n * 3 // 4
    return {"input_ids": seq[:cut], "labels": seq[:cut]}, {"input_ids": seq[cut:], "labels": seq[cut:]}


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(SEED)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


class Tagger(nn.Module):
    """A token tagger: embedding, a 2-layer GELU transformer encoder, a class per position."""

    def __init__(self, vocab=50, dim=32, n_tags=3):
        super().__init__()
        torch.manual_seed(SEED)
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, batch_first=True, activation="gelu", dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(dim, n_tags)

    def forward(self, input_ids):
        return self.out(self.enc(self.emb(input_ids)))


def tag_batches():
    train, val = token_batches()
    # the tag of a token: its id modulo 3, plus 1 (mod 3) right after a 7: needs the context
    def tags(ids):
        t = ids % 3
        after7 = torch.zeros_like(ids, dtype=torch.bool)
        after7[:, 1:] = ids[:, :-1] == 7
        return torch.where(after7, (t + 1) % 3, t)
    return ({"input_ids": train["input_ids"], "labels": tags(train["input_ids"])},
            {"input_ids": val["input_ids"], "labels": tags(val["input_ids"])})


class TwoInput(nn.Module):
    """Two inputs (numeric features and a second block of them) summed in a GELU head: forward(xa, xb)."""

    def __init__(self, na, nb, n_out):
        super().__init__()
        torch.manual_seed(SEED)
        self.a, self.b = nn.Linear(na, 32), nn.Linear(nb, 32)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(32, n_out))

    def forward(self, xa, xb):
        return self.head(self.a(xa) + self.b(xb))


def multilabel_data():
    from sklearn.datasets import make_multilabel_classification
    x, y = make_multilabel_classification(1200, 12, n_classes=4, random_state=62)
    return split(std(x), y.astype(np.float64), 300)


@scenario(why="a 2-layer BERT (hidden 32, LayerNorm, GELU) built from a config, dict batches with labels: the "
               "model's own loss, AdamW 1e-3")
def h4_bert_dict_adamw():
    train, val = token_batches()
    return tiny_bert(), train, val, dict(optimizer="adamw", lr=1e-3, batch_size=32, epochs=8)


@scenario(why="a 2-layer GPT-2 (hidden 32) on arithmetic token sequences, causal LM with its own loss, AdamW 3e-3")
def h4_gpt2_causal_lm():
    train, val = lm_batches()
    return tiny_gpt2(), train, val, dict(optimizer="adamw", lr=3e-3, batch_size=32, epochs=6)


@scenario(why="a GELU transformer encoder tagging every position (outputs (N, T, 3) against (N, T) ids), Adam 3e-3")
def h4_tagger_sequence_outputs():
    train, val = tag_batches()
    return Tagger(), train, val, dict(optimizer="adam", lr=3e-3, batch_size=32, epochs=8)


@scenario(why="multi-label targets (N, 4) of 0/1 with 4 outputs (BCE per label), a ReLU MLP with Adam 1e-3")
def h4_multilabel_bce():
    (x, y), (xv, yv) = multilabel_data()
    return mlp(12, 4, (64,)), (x, y), (xv, yv), dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario(why="a two-input model forward(xa, xb) passed (xa, xb, y) tuples, GELU head, Adam 3e-3")
def h4_two_inputs():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 10, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=63)
    (xt, yt), (xv, yv) = split(std(x), y.astype(np.int64), 300)
    return TwoInput(6, 4, 3), (xt[:, :6], xt[:, 6:], yt), (xv[:, :6], xv[:, 6:], yv), dict(
        optimizer="adam", lr=3e-3, batch_size=32, epochs=15)


@scenario("lr_too_high", allow=BLOWUP + ("vanishing_gradients",),
          why="the BERT at AdamW lr 1.0: the loss leaps from ln 2 to ~6 in the first epoch")
def f4_bert_lr_too_high():
    train, val = token_batches()
    return tiny_bert(), train, val, dict(optimizer="adamw", lr=1.0, batch_size=32, epochs=8)


@scenario("lr_too_low", allow=(), why="the GPT-2 at AdamW lr 1e-7: the weights do not move")
def f4_gpt2_lr_too_low():
    train, val = lm_batches()
    return tiny_gpt2(), train, val, dict(optimizer="adamw", lr=1e-7, batch_size=32, epochs=6)


@scenario("lr_too_high", allow=BLOWUP + ("vanishing_gradients",), why="the tagger at Adam lr 1.0")
def f4_tagger_lr_too_high():
    train, val = tag_batches()
    return Tagger(), train, val, dict(optimizer="adam", lr=1.0, batch_size=32, epochs=8)


@scenario("probability_outputs", allow=("loss_plateau", "underfitting"),
          why="the multi-label MLP ending in nn.Sigmoid, trained with the default BCE-with-logits")
def f4_multilabel_sigmoid():
    (x, y), (xv, yv) = multilabel_data()
    model = mlp(12, 4, (64,))
    model.append(nn.Sigmoid())
    return model, (x, y), (xv, yv), dict(optimizer="adam", lr=1e-3, batch_size=32, epochs=20)


@scenario("lr_too_low", allow=(), why="the two-input model at Adam lr 1e-7")
def f4_two_inputs_lr_too_low():
    from sklearn.datasets import make_classification
    x, y = make_classification(1200, 10, n_informative=6, n_classes=3, n_clusters_per_class=1, random_state=63)
    (xt, yt), (xv, yv) = split(std(x), y.astype(np.int64), 300)
    return TwoInput(6, 4, 3), (xt[:, :6], xt[:, 6:], yt), (xv[:, :6], xv[:, 6:], yv), dict(
        optimizer="adam", lr=1e-7, batch_size=32, epochs=15)


# -- running ---------------------------------------------------------------------------------

@dataclass
class Result:
    sc: Scenario
    seed: int
    codes: list
    status: str
    last: dict
    seconds: float
    messages: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.sc.expect is None:
            return not self.codes
        return self.sc.expect in self.codes

    @property
    def extras(self) -> list:
        if self.sc.expect is None:
            return []
        # a flat loss beside a stuck-training cause is raised as that cause's symptom, by design (the
        # monitor gives it the cause's fix): true of the run whenever the cause is
        symptom_ok = {"loss_plateau"} if self.sc.expect in STUCK_CAUSES else set()
        return [c for c in self.codes if c != self.sc.expect and c not in self.sc.allow and c not in symptom_ok]


STUCK_CAUSES = ("lr_too_low", "vanishing_gradients", "dead_relu")


def run_one(sc: Scenario, seed: int) -> Result:
    global SEED
    SEED = seed
    t0 = time.perf_counter()
    model, train, val, config = sc.build()
    config = dict(config, seed=seed)
    t = nbt.Trainer(model, train, val, loss=config.pop("loss", None))
    run = t.start(**config)
    t.wait()
    # a faulty run is scored on its findings; notes ("info": a plateau the run left, an overfitting that turned
    # out to be the steps' doing) say what is no longer a finding. A healthy run is scored on everything shown.
    codes = list(run.codes) if sc.expect is None else [w.code for w in run.warnings if w.severity != "info"]
    return Result(sc, seed, codes, run.status, dict(run.last), time.perf_counter() - t0,
                  [str(w) for w in run.warnings])


def summary(results: list) -> dict:
    scored = [r for r in results if not r.sc.borderline]
    healthy = [r for r in scored if r.sc.expect is None]
    faulty = [r for r in scored if r.sc.expect is not None]
    per_code = collections.defaultdict(lambda: [0, 0])
    alarms = collections.Counter()
    for r in healthy:
        alarms.update(r.codes)
    for r in faulty:
        per_code[r.sc.expect][0] += r.ok
        per_code[r.sc.expect][1] += 1
    return {"healthy": len(healthy), "false_alarms": sum(not r.ok for r in healthy), "alarm_codes": dict(alarms),
            "faulty": len(faulty), "caught": sum(r.ok for r in faulty),
            "wrong_extras": sum(bool(r.extras) for r in faulty), "per_code": dict(per_code)}


def _last(r: Result) -> str:
    keys = ("train_loss", "val_loss", "val_accuracy", "val_r2")
    return " ".join(f"{k}={r.last[k]:.3g}" for k in keys if isinstance(r.last.get(k), float))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only scenarios whose name contains this")
    ap.add_argument("-v", action="store_true", help="print every run's last epoch and warning messages")
    ap.add_argument("--seeds", type=int, default=2, help="run each scenario with seeds 0..N-1 (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chosen = [s for s in SCENARIOS if args.k in s.name]
    results = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the Trainer's default run store goes here
        try:
            for sc in chosen:
                for seed in range(args.seeds):
                    try:
                        r = run_one(sc, seed)
                    except ImportError as e:  # an optional dependency (transformers) is not installed
                        print(f"skip  {sc.name:36s} s{seed} ({e})", flush=True)
                        continue
                    results.append(r)
                    verdict = "ok " if r.ok and not r.extras else ("EXTRA" if r.ok else "FAIL")
                    if sc.borderline:
                        verdict = "(b)"
                    want = sc.expect or "(none)"
                    print(f"{verdict:5s} {sc.name:36s} s{seed} want {want:20s} got {r.codes} "
                          f"[{r.status}, {r.seconds:.1f}s]", flush=True)
                    if args.v or not r.ok or r.extras or sc.borderline:
                        print(f"        {_last(r)}")
                        for m in r.messages:
                            print(f"        {m[:300]}")
        finally:
            os.chdir(cwd)
    s = summary(results)
    print(f"\n{len(results)} runs ({len(chosen)} scenarios x {args.seeds} seeds) in {time.time() - t0:.0f} s")
    if s["healthy"]:
        print(f"healthy runs: {s['healthy']}, false alarms: {s['false_alarms']} "
              f"({s['false_alarms'] / s['healthy']:.1%}) {s['alarm_codes']}")
    if s["faulty"]:
        print(f"faulty runs: {s['faulty']}, caught: {s['caught']} ({s['caught'] / s['faulty']:.0%}), "
              f"with a code that is not true of the run: {s['wrong_extras']}")
        for code, (ok, n) in sorted(s["per_code"].items()):
            print(f"  {code:22s} {ok}/{n}")


if __name__ == "__main__":
    main()
