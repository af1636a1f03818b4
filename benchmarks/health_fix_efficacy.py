"""Do the health fixes work? Apply each offered fix, retrain, and see; and auto-repair every faulty run.

For every faulty scenario of ``benchmarks/health_heldout.py`` (borderline ones
left out, as there) and every fault of ``demo_notebooks/03_fault_gallery.ipynb``
(rebuilt here as scenarios, ``g_`` names), for each seed:

1. train it as a user would (``Trainer(model, train, val).start(**config)``);
2. for every verdict that offers a fix (one per cause: ``run.verdicts``, what
   the panel shows as one **Apply fix** button each), retrain from the same
   initial weights with the fix applied. The fix **works** when none of the
   verdict's codes is raised any more and the main validation metric (accuracy,
   F1 or R² of the weights the run ends with) is no worse, within 0.01;
3. run ``auto_fix`` from the first run (up to 5 runs in all): it **reaches**
   a healthy state when its last run has no verdict with a fix.

Targets: at least 90% of offered fixes work; auto-fix reaches a run with no
fixable warning in at least 95% of faulty scenario runs.

    python benchmarks/health_fix_efficacy.py              # everything, seeds 0 and 1 (several minutes)
    python benchmarks/health_fix_efficacy.py --seeds 1    # seed 0 only
    python benchmarks/health_fix_efficacy.py -k lr_       # scenarios whose name contains "lr_"
    python benchmarks/health_fix_efficacy.py -v           # every run's codes and notes
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nb_trainer as nbt
from nb_trainer.health.autofix import auto_fix, final_metric, no_worse

HERE = Path(__file__).resolve().parent


def load_heldout():
    spec = importlib.util.spec_from_file_location("health_heldout", HERE / "health_heldout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["health_heldout"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


H = load_heldout()


# -- the fault gallery's cases, as scenarios ------------------------------------------------------------

def _gallery_data():
    from sklearn.datasets import make_circles, make_classification, make_friedman1

    def standardize(x):
        return ((x - x.mean(0)) / x.std(0)).astype("float32")

    def split(x, y, n_val=150):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])

    x, y = make_classification(600, 20, n_informative=8, n_classes=4, n_clusters_per_class=1, class_sep=1.5,
                               random_state=0)
    blobs = split(standardize(x), y)
    x, y = make_friedman1(600, noise=1.0, random_state=0)
    friedman = split(standardize(x), standardize(y[:, None]))
    x, y = make_circles(600, noise=0.1, factor=0.5, random_state=0)
    circles = split(standardize(x), y)
    return blobs, friedman, circles


def _mlp(n_in, n_out, hidden=(32,), act=nn.ReLU):
    torch.manual_seed(H.SEED)
    layers, prev = [], n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), act()]
        prev = h
    return nn.Sequential(*layers, nn.Linear(prev, n_out))


GALLERY: list = []


def gallery(expect, allow=(), why=""):
    def deco(fn):
        GALLERY.append(H.Scenario(fn.__name__, fn, why, expect, tuple(allow)))
        return fn
    return deco


@gallery("nan_loss", allow=("exploding_gradients", "lr_too_high"), why="SGD lr 5 on friedman")
def g_nan_sgd_lr5():
    _, friedman, _ = _gallery_data()
    return _mlp(10, 1, (64, 64)), *friedman, dict(optimizer="sgd", lr=5.0, epochs=5)


@gallery("exploding_gradients", allow=("nan_loss", "lr_too_high"), why="friedman targets x1000, SGD 0.01")
def g_explode_targets_x1000():
    _, ((x, y), (xv, yv)), _ = _gallery_data()
    return _mlp(10, 1, (64, 64)), (x, y * 1000), (xv, yv * 1000), dict(optimizer="sgd", lr=0.01, epochs=5)


@gallery("vanishing_gradients", allow=H.SYMPTOMS, why="10 sigmoid layers, SGD 0.1")
def g_vanish_sigmoid10():
    blobs, _, _ = _gallery_data()
    return _mlp(20, 4, (32,) * 10, act=nn.Sigmoid), *blobs, dict(optimizer="sgd", lr=0.1, epochs=6)


@gallery("dead_relu", allow=H.SYMPTOMS, why="first layer bias -8")
def g_dead_bias():
    blobs, _, _ = _gallery_data()
    model = _mlp(20, 4, (64, 64))
    with torch.no_grad():
        model[0].bias.fill_(-8.0)
    return model, *blobs, dict(optimizer="adam", lr=1e-3, epochs=5)


@gallery("lr_too_high", allow=H.BLOWUP, why="RMSprop lr 0.3 on friedman")
def g_high_rmsprop():
    _, friedman, _ = _gallery_data()
    return _mlp(10, 1, (64, 64)), *friedman, dict(optimizer="rmsprop", lr=0.3, epochs=8)


@gallery("lr_too_low", why="SGD lr 1e-5 on blobs")
def g_low_sgd():
    blobs, _, _ = _gallery_data()
    return _mlp(20, 4), *blobs, dict(optimizer="sgd", lr=1e-5, epochs=6)


@gallery("loss_oscillation", allow=("lr_too_high",), why="momentum 0.99 on friedman")
def g_osc_momentum099():
    _, friedman, _ = _gallery_data()
    return _mlp(10, 1, (64,)), *friedman, dict(optimizer="momentum", lr=0.05, momentum=0.99, epochs=15)


@gallery("overfitting", why="60 examples with 80 noise features, 256x256")
def g_overfit_small():
    ((x, y), (xv, yv)), _, _ = _gallery_data()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([x, torch.randn(len(x), 80, generator=g)], 1)[:60]
    xv = torch.cat([xv, torch.randn(len(xv), 80, generator=g)], 1)
    return _mlp(100, 4, (256, 256)), (x, y[:60]), (xv, yv), dict(optimizer="adam", lr=3e-3, epochs=40,
                                                                 batch_size=16)


@gallery("underfitting", allow=("loss_plateau",), why="L1 0.05 with AdamW")
def g_under_l1():
    blobs, _, _ = _gallery_data()
    return _mlp(20, 4, (64,)), *blobs, dict(optimizer="adamw", lr=1e-3, l1=0.05, epochs=8)


@gallery("underfitting", allow=("loss_plateau",), why="a linear model on circles")
def g_under_linear_circles():
    _, _, circles = _gallery_data()
    return _mlp(2, 2, ()), *circles, dict(optimizer="adam", lr=1e-2, epochs=15)


@gallery("bad_input_data", why="NaN in 3 training rows")
def g_bad_nan():
    ((x, y), val), _, _ = _gallery_data()
    x = x.clone()
    x[[3, 40, 41], 7] = float("nan")
    return _mlp(20, 4), (x, y), val, dict(epochs=3)


@gallery("label_mismatch", why="labels 1..4 for 4 outputs")
def g_label_one_based():
    ((x, y), (xv, yv)), _, _ = _gallery_data()
    return _mlp(20, 4), (x, y + 1), (xv, yv + 1), dict(epochs=3)


@gallery("class_imbalance", why="113 against 8")
def g_imbalance():
    ((x, y), _), _, _ = _gallery_data()
    rare = torch.nonzero(y == 1).flatten()[:8]
    keep = torch.cat([torch.nonzero(y == 0).flatten(), rare])
    return _mlp(20, 1), (x[keep], (y[keep] == 1).float().reshape(-1, 1)), None, dict(optimizer="adam", lr=3e-3,
                                                                                    epochs=5)


# -- running ----------------------------------------------------------------------------------------------

@dataclass
class Offered:
    cause: str
    codes: list
    fix: dict
    after: list           # the codes of the run with the fix applied
    metric_before: float
    metric_after: float
    works: bool


@dataclass
class Result:
    name: str
    seed: int
    expect: str
    codes: list
    caught: bool
    offered: list = field(default_factory=list)
    auto: list = field(default_factory=list)   # per auto-fix run: (note, codes, metric)
    reached: bool = False
    seconds: float = 0.0


def faults(run) -> list:
    """The run's codes, without notes ("info": a plateau the run found its way off)."""
    return [w.code for w in run.warnings if w.severity != "info"]


def run_scenario(sc, seed: int) -> Result:
    H.SEED = seed
    t0 = time.perf_counter()
    model, train, val, config = sc.build()
    config = dict(config)
    t = nbt.Trainer(model, train, val, store=None, loss=config.pop("loss", None))
    first = t.start(**dict(config, seed=seed))
    t.wait()
    res = Result(sc.name, seed, sc.expect, faults(first), sc.expect in first.codes)
    runs = auto_fix(t, max_runs=5, first=first)
    res.auto = [(r.note, faults(r), final_metric(r)) for r in runs]
    res.reached = not any(v.fix for v in runs[-1].verdicts)
    for v in first.verdicts:
        if not v.fix:
            continue
        wanted = first.config.replace(**v.fix)
        again = next((r for r in runs[1:] if r.parent is first and r.initial_config == wanted), None)
        if again is None:
            again = t.start(config=wanted)
            t.wait()
        gone = not (set(v.codes) & set(faults(again)))
        res.offered.append(Offered(v.cause, v.codes, dict(v.fix), faults(again), final_metric(first),
                                   final_metric(again), gone and no_worse(again, first)))
    t.close()
    res.seconds = time.perf_counter() - t0
    return res


def scenarios(k: str = "") -> list:
    faulty = [s for s in H.SCENARIOS if s.expect is not None and not s.borderline]
    return [s for s in faulty + GALLERY if k in s.name]


def _fmt_fix(fix: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fix.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only scenarios whose name contains this")
    ap.add_argument("-v", action="store_true", help="print every run's codes and notes")
    ap.add_argument("--seeds", type=int, default=2, help="run each scenario with seeds 0..N-1 (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chosen = scenarios(args.k)
    results = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for sc in chosen:
                for seed in range(args.seeds):
                    try:
                        r = run_scenario(sc, seed)
                    except ImportError as e:  # an optional dependency (transformers) is not installed
                        print(f"skip {sc.name:36s} s{seed} ({e})", flush=True)
                        continue
                    results.append(r)
                    bad = [o for o in r.offered if not o.works]
                    flag = "ok  " if not bad and r.reached else ("FIX " if bad else "AUTO")
                    flag = flag if r.caught else "MISS"
                    print(f"{flag} {sc.name:36s} s{seed} {r.codes} offered {len(r.offered)}, "
                          f"working {len(r.offered) - len(bad)}; auto-fix {len(r.auto)} runs "
                          f"{'reached' if r.reached else 'NOT reached'} [{r.seconds:.1f}s]", flush=True)
                    if args.v or bad or not r.reached:
                        for o in r.offered:
                            print(f"       {'works' if o.works else 'FAILS'}: {o.cause} {o.codes} fix {_fmt_fix(o.fix)}"
                                  f" -> {o.after}, metric {o.metric_before:.3g} -> {o.metric_after:.3g}")
                        for note, codes, metric in r.auto:
                            print(f"       auto: {note[:160]} -> {codes} metric {metric:.3g}")
        finally:
            os.chdir(cwd)
    offered = [o for r in results for o in r.offered]
    working = sum(o.works for o in offered)
    reached = sum(r.reached for r in results)
    needed = [r for r in results if any(o for o in r.offered)]
    print(f"\n{len(results)} scenario runs ({len(chosen)} scenarios x {args.seeds} seeds) in {time.time() - t0:.0f} s")
    print(f"detection: expected code raised in {sum(r.caught for r in results)}/{len(results)}")
    if offered:
        print(f"offered fixes: {len(offered)}, working: {working} ({working / len(offered):.0%}) [target 90%]")
    print(f"auto-fix reached a run with no fixable warning in {reached}/{len(results)} "
          f"({reached / max(len(results), 1):.0%}) [target 95%]; {len(needed)} of them had a fix to apply, "
          f"{sum(r.reached for r in needed)} reached")
    improved = [r for r in needed if r.auto and r.auto[-1][2] >= r.auto[0][2] - 0.01]
    print(f"auto-fix ended no worse than it started (within 0.01) in {len(improved)}/{len(needed)} runs that had a "
          f"fix; worse: " + ", ".join(f"{r.name} s{r.seed} ({r.auto[0][2]:.3g} -> {r.auto[-1][2]:.3g})"
                                     for r in needed if r not in improved))
    failing = sorted({(r.name, o.cause) for r in results for o in r.offered if not o.works})
    if failing:
        print("fixes that did not work: " + "; ".join(f"{n} ({c})" for n, c in failing))
    missed = sorted({r.name for r in results if not r.reached})
    if missed:
        print("auto-fix not reached: " + ", ".join(missed))


if __name__ == "__main__":
    main()
