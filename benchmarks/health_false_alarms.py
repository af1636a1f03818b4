"""False-alarm rate of the health rules over a grid of healthy runs (and the catch rate on faulty ones).

Every healthy config trains a small model for real through
``Trainer(model, train, val).start(**config)`` and counts a false alarm when
``run.warnings`` is not empty. The faulty cases each expect one code.

    python benchmarks/health_false_alarms.py            # the full grid (~1-2 min on one core)
    python benchmarks/health_false_alarms.py --quick    # a third of it
"""
from __future__ import annotations

import argparse
import collections
import itertools
import time

import numpy as np
import torch
from torch import nn

import nb_trainer as nbt

LR = {"sgd": 0.1, "momentum": 0.02, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3}
REGULARISATION = {"plain": {}, "wd": {"weight_decay": 1e-3}, "dropout": {"dropout": 0.2}, "l1": {"l1": 1e-4},
                  "clip": {"grad_clip": 1.0}, "early-stop": {"patience": 3}}


def _std(x):
    s = x.std(0)
    s[s == 0] = 1
    return ((x - x.mean(0)) / s).astype(np.float32)


def dataset(name, seed=0):
    """(train, val, n_in, n_out) as tensors."""
    from sklearn import datasets as skd
    if name == "blobs":
        x, y = skd.make_classification(600, 20, n_informative=8, n_classes=4, n_clusters_per_class=1, class_sep=1.5,
                                       random_state=seed)
        x, y = _std(x), y.astype(np.int64)
    elif name == "digits":
        x, y = skd.load_digits(return_X_y=True)
        x, y = (x / 16).astype(np.float32), y.astype(np.int64)
    elif name == "moons":
        x, y = skd.make_moons(600, noise=0.2, random_state=seed)
        x, y = _std(x), y.astype(np.float32)[:, None]
    elif name == "cancer":
        x, y = skd.load_breast_cancer(return_X_y=True)
        x, y = _std(x), y.astype(np.float32)[:, None]
    elif name == "noisy-binary":
        x, y = skd.make_classification(600, 10, n_informative=5, flip_y=0.1, random_state=seed)
        x, y = _std(x), y.astype(np.float32)[:, None]
    elif name == "friedman":
        x, y = skd.make_friedman1(600, noise=1.0, random_state=seed)
        x, y = _std(x), ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    elif name == "diabetes":
        x, y = skd.load_diabetes(return_X_y=True)
        x, y = _std(x), ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    else:
        raise KeyError(name)
    order = np.random.RandomState(seed).permutation(len(x))
    x, y = torch.as_tensor(x[order]), torch.as_tensor(y[order])
    n_val = len(x) // 4
    n_out = int(y.max()) + 1 if y.dtype == torch.int64 else y.shape[1]
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), x.shape[1], n_out


def mlp(n_in, n_out, hidden=(64,), act=nn.ReLU, dropout=None, seed=0):
    torch.manual_seed(seed)
    layers, prev = [], n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), act()]
        if dropout is not None:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def healthy_grid(quick=False):
    datasets = ["blobs", "digits", "moons", "cancer", "noisy-binary", "friedman", "diabetes"]
    archs = {"mlp64": dict(hidden=(64,)), "mlp3x64": dict(hidden=(64, 64, 64)),
             "tanh": dict(hidden=(64, 64), act=nn.Tanh), "gelu": dict(hidden=(64, 64), act=nn.GELU)}
    for i, (d, opt, reg, arch) in enumerate(itertools.product(datasets, LR, REGULARISATION, archs)):
        if quick and i % 3:
            continue
        if (i * 7) % 4:  # a quarter of the full product keeps the grid at a couple of minutes
            continue
        epochs = (3, 8, 20)[i % 3]
        batch = (16, 32, 128)[(i // 3) % 3]
        yield (f"{d}/{opt}/{reg}/{arch}/e{epochs}/b{batch}", d, dict(archs[arch], dropout=0.1 if reg == "dropout"
                                                                      else None),
               dict(optimizer=opt, lr=LR[opt], epochs=epochs, batch_size=batch, **REGULARISATION[reg]))


def faulty_cases():
    def big_bias(m):
        with torch.no_grad():
            m[0].bias.fill_(-8.0)
        return m
    return [
        ("lr_too_high", "blobs", dict(), dict(optimizer="adam", lr=1.0, epochs=5), None),
        ("lr_too_high", "friedman", dict(hidden=(64, 64)), dict(optimizer="rmsprop", lr=0.3, epochs=8), None),
        ("lr_too_low", "blobs", dict(), dict(optimizer="sgd", lr=1e-5, epochs=5), None),
        ("lr_too_low", "moons", dict(), dict(optimizer="adam", lr=1e-6, epochs=5), None),
        ("vanishing_gradients", "blobs", dict(hidden=(32,) * 10, act=nn.Sigmoid), dict(optimizer="sgd", lr=0.1,
                                                                                      epochs=5), None),
        ("dead_relu", "blobs", dict(hidden=(64, 64)), dict(optimizer="adam", lr=1e-3, epochs=5), big_bias),
        ("loss_oscillation", "friedman", dict(), dict(optimizer="momentum", lr=0.05, momentum=0.99, epochs=15), None),
        ("underfitting", "digits", dict(), dict(optimizer="adam", lr=1e-3, weight_decay=1.0, epochs=8), None),
        ("nan_loss", "friedman", dict(), dict(optimizer="sgd", lr=5.0, epochs=3), None),
    ]


def run_one(dname, arch, config, prepare=None):
    train, val, n_in, n_out = dataset(dname)
    model = mlp(n_in, n_out, **arch)
    if prepare is not None:
        model = prepare(model)
    t = nbt.Trainer(model, train, val, store=None)
    run = t.start(**config)
    t.wait()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    alarms, total = collections.Counter(), 0
    flagged = []
    for name, dname, arch, config in healthy_grid(args.quick):
        run = run_one(dname, arch, config)
        total += 1
        if run.warnings:
            flagged.append((name, run.codes, run.warnings[0].message))
            alarms.update(run.codes)
    print(f"healthy runs: {total}, with any warning: {len(flagged)} ({len(flagged) / max(total, 1):.1%}) "
          f"in {time.time() - t0:.0f} s")
    for code, n in alarms.most_common():
        print(f"  {code}: {n}")
    for name, codes, msg in flagged:
        print(f"  {name}: {codes} — {msg[:140]}")
    caught = 0
    cases = faulty_cases()
    for code, dname, arch, config, prepare in cases:
        run = run_one(dname, arch, config, prepare)
        ok = code in run.codes
        caught += ok
        print(f"  fault {code:22s} {dname:9s} {'caught' if ok else 'MISSED'}  codes={run.codes}")
    print(f"faulty runs: {len(cases)}, expected code raised: {caught} ({caught / len(cases):.0%})")


if __name__ == "__main__":
    main()
