"""The health rules on scripted sequences: no training, one behaviour per case.

Each table row is a signal sequence a rule must flag, or a healthy one it
must leave alone. The sequences are shaped like what the engine records:
per-step losses and gradient norms, probes, epoch records.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nb_trainer.health import fit, gradients, learning_rate
from nb_trainer.health.baseline import trivial_loss
from nb_trainer.health.data_checks import check_balance, check_finite, check_labels, merge_splits, preflight
from nb_trainer.health.monitor import HealthMonitor, evaluate
from nb_trainer.health.signals import CAPACITY, EARLY_KEEP, Context, Signals
from nb_trainer.health.warning import CODES, HealthWarning

LN4 = math.log(4)


# -- sequence builders ------------------------------------------------------------

def decay(n, start=LN4, end=0.2, tau=None, noise=0.03, seed=0):
    """A healthy loss curve: exponential decay from ``start`` to ``end`` with multiplicative noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    tau = tau or n / 4
    curve = end + (start - end) * np.exp(-t / tau)
    return list(curve * (1 + noise * rng.standard_normal(n)))


def flat(n, level=LN4, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return list(level * (1 + noise * rng.standard_normal(n)))


def records(train, val=None, **metrics):
    out = []
    for i, t in enumerate(train):
        r = {"epoch": i + 1, "train_loss": t}
        if val is not None:
            r["val_loss"] = val[i]
        for k, v in metrics.items():
            r[k] = v[i]
        out.append(r)
    return out


def probe(step, epoch, ratio=1e-3, dead=0.0, units=64, examples=256, layers=("0", "2")):
    return {"step": step, "epoch": epoch, "update_ratio": {f"{l}.weight": ratio for l in layers},
            "dead_relu": {"1": {"dead_units": dead, "zero_outputs": dead, "units": units}},
            "examples": examples}


def ctx(**kw):
    base = dict(task="classification", loss_name="cross_entropy", baseline=LN4, optimizer="adam", lr=1e-3,
                epochs=10, steps_per_epoch=10)
    base.update(kw)
    return Context(**base)


def signals(loss, epochs=None, spe=10, grad=None, g_first=None, g_last=None, probes=None):
    return Signals.from_steps(loss, grad_norm=grad, g_first=g_first, g_last=g_last, epochs=epochs,
                              probes=probes, steps_per_epoch=spe)


def healthy_run(n_epochs=10, spe=10, seed=0):
    """A healthy classification run: falling loss, grads steady, val tracking train."""
    loss = decay(n_epochs * spe, seed=seed)
    tr = [float(np.mean(loss[i * spe:(i + 1) * spe])) for i in range(n_epochs)]
    va = [t * 1.08 + 0.02 for t in tr]
    acc = [min(0.97, 0.4 + 0.06 * i) for i in range(n_epochs)]
    return signals(loss, records(tr, va, val_accuracy=acc), spe=spe,
                   grad=decay(n_epochs * spe, start=1.0, end=0.5, seed=seed + 1),
                   g_first=decay(n_epochs * spe, start=0.3, end=0.15, seed=seed + 2),
                   g_last=decay(n_epochs * spe, start=0.6, end=0.3, seed=seed + 3),
                   probes=[probe(1, 1, 3e-3, 0.05), probe(40, 4, 1e-3, 0.08), probe(90, 9, 8e-4, 0.1)])


# -- healthy runs stay quiet under every rule ------------------------------------

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("phase", ["step", "epoch", "final"])
def test_healthy_sequences_raise_nothing(seed, phase):
    assert evaluate(healthy_run(seed=seed), ctx(), phase=phase) == []


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("momentum", 0.02), ("adam", 1e-3), ("adamw", 3e-3),
                                          ("rmsprop", 1e-3)])
def test_healthy_regression_sequence_raises_nothing_for_any_optimizer(optimizer, lr):
    s = healthy_run(seed=3)
    for e in s.epochs:
        e.pop("val_accuracy")
        e["val_r2"] = 1 - e["val_loss"]
    c = ctx(task="regression", loss_name="mse", baseline=LN4, optimizer=optimizer, lr=lr)
    assert evaluate(s, c, phase="final") == []


# -- lr_too_high -----------------------------------------------------------------

LR_HIGH = [
    # (what, loss per step, epoch train losses, fires)
    ("first epoch far above the start", [1.4] + [9.0, 12.0, 8.0, 11.0, 10.0] * 2, [10.0], True),
    ("two steps 10x the start", decay(40)[:20] + [30.0] + decay(40)[20:30] + [40.0], None, True),
    ("train loss climbing for two epochs", decay(50), [1.2, 0.6, 0.5, 1.3, 1.6], True),
    ("healthy decay", decay(50), [1.2, 0.9, 0.7, 0.6, 0.55], False),
    ("one spike, back at once", decay(40)[:20] + [5.0] + decay(40)[20:], None, False),
    ("lucky first batch below the baseline", [0.6] + flat(19, 1.3, 0.05), [1.3, 1.25], False),
    ("tiny loss doubling near convergence", decay(50, end=0.01), [0.5, 0.05, 0.01, 0.025, 0.03], False),
]


@pytest.mark.parametrize("what,loss,train,fires", LR_HIGH, ids=[r[0] for r in LR_HIGH])
def test_lr_too_high(what, loss, train, fires):
    eps = records(train) if train else None
    w = learning_rate.lr_too_high(signals(loss, eps), ctx(lr=0.5))
    assert (w is not None) == fires
    if fires:
        assert w.code == "lr_too_high" and w.fix == {"lr": 0.05}
        assert "0.5" in w.message  # says the lr it judged


# -- lr_too_low ------------------------------------------------------------------

LR_LOW = [
    ("weights still, loss flat", 1e-6, flat(100), [LN4] * 10, True),
    ("typical update ratio", 1e-3, flat(100), [LN4] * 10, False),
    ("small ratio but the loss falls", 5e-5, decay(100), [1.3, 1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.3, 0.3], False),
    ("small ratio, already good (fine-tuning)", 1e-6, flat(100, 0.05), [0.05] * 10, False),
]


@pytest.mark.parametrize("what,ratio,loss,train,fires", LR_LOW, ids=[r[0] for r in LR_LOW])
def test_lr_too_low(what, ratio, loss, train, fires):
    s = signals(loss, records(train), probes=[probe(1, 1, ratio), probe(50, 5, ratio), probe(99, 10, ratio)])
    w = learning_rate.lr_too_low(s, ctx(optimizer="sgd", lr=1e-5))
    assert (w is not None) == fires
    if fires:
        assert 1e-3 <= w.fix["lr"] <= 1.0  # raised towards the update ratio of healthy runs, SGD's cap at most


def test_lr_too_low_ignores_matrices_that_did_not_move_at_all():
    # all-zero weights (or no gradient) give a ratio of exactly 0: not evidence of a small lr
    s = signals(flat(100), records([LN4] * 10), probes=[probe(1, 1, 0.0), probe(99, 10, 0.0)])
    assert learning_rate.lr_too_low(s, ctx()) is None


# -- loss_oscillation ---------------------------------------------------------------

OSC = [
    ("val loss bouncing by its own size", [0.6] * 10, [0.5, 1.2, 0.45, 1.3, 0.5, 1.1, 0.4, 1.25, 0.5, 1.2], None, True),
    ("val accuracy swinging 0.3", [0.6] * 10, [0.6] * 10, [0.5, 0.85, 0.5, 0.88, 0.45, 0.86, 0.5, 0.9, 0.5, 0.85], True),
    ("small val noise", [0.6] * 10, [0.62, 0.6, 0.64, 0.59, 0.63, 0.6, 0.61, 0.58, 0.62, 0.6], None, False),
    ("converged tiny level, large relative noise", [0.02] * 10,
     [0.02, 0.035, 0.018, 0.03, 0.015, 0.032, 0.02, 0.03, 0.017, 0.03], None, False),
    ("steadily falling", [1.0 - 0.08 * i for i in range(10)], [1.05 - 0.08 * i for i in range(10)], None, False),
]


@pytest.mark.parametrize("what,train,val,acc,fires", OSC, ids=[r[0] for r in OSC])
def test_loss_oscillation(what, train, val, acc, fires):
    metrics = {"val_accuracy": acc if acc else [0.8] * len(train)}
    w = learning_rate.loss_oscillation(signals(flat(100), records(train, val, **metrics)), ctx(lr=0.3))
    assert (w is not None) == fires
    if fires:
        assert w.fix["lr"] == 0.1


def test_oscillation_with_high_momentum_suggests_lower_momentum():
    s = signals(flat(100), records([0.6] * 10, [0.5, 1.2, 0.45, 1.3, 0.5, 1.1, 0.4, 1.25, 0.5, 1.2],
                                   val_accuracy=[0.8] * 10))
    w = learning_rate.loss_oscillation(s, ctx(optimizer="momentum", momentum=0.99, lr=0.05))
    assert w.fix == {"lr": 0.017, "momentum": 0.9}


# -- vanishing / exploding gradients ---------------------------------------------------

def test_vanishing_gradients_fire_with_tiny_first_layer_and_flat_loss():
    s = signals(flat(80), g_first=[3e-9] * 80, g_last=[0.7] * 80)
    w = gradients.vanishing_gradients(s, ctx(optimizer="sgd", lr=0.1))
    assert w is not None and "3e-09" in w.message and "0.7" in w.message
    assert w.fix == {} and "sigmoid" in w.suggestion  # the model has to change


VANISH_QUIET = [
    ("loss improving (Adam moves small gradients)", decay(80), 3e-9, 0.7, None),
    ("ratio 0.1 is normal", flat(80), 0.07, 0.7, None),
    ("a dead ReLU layer explains it", flat(80), 0.0, 0.7, [probe(1, 1, dead=1.0), probe(70, 7, dead=1.0)]),
]


@pytest.mark.parametrize("what,loss,gf,gl,probes", VANISH_QUIET, ids=[r[0] for r in VANISH_QUIET])
def test_vanishing_gradients_quiet(what, loss, gf, gl, probes):
    s = signals(loss, g_first=[gf] * 80, g_last=[gl] * 80, probes=probes)
    assert gradients.vanishing_gradients(s, ctx()) is None


EXPLODE = [
    ("non-finite gradient norm", flat(20), [1.0] * 10 + [math.inf] + [1.0] * 9, False, True),
    ("norm 1000x the start, loss stuck", flat(60), list(np.geomspace(0.5, 2000, 60)), False, True),
    ("norm 1000x but the loss falls", decay(60), list(np.geomspace(0.5, 2000, 60)), False, False),
    ("steady norm", flat(60), [0.5] * 60, False, False),
    ("grew 1e4x before the NaN", decay(8)[:3] + [3.0, 40.0, 900.0], [1.0, 1.2, 5.0, 80.0, 2e3, 1e4], True, True),
    ("NaN without growth", [1.0, 0.9, 0.8], [1.0, 1.0, 1.1], True, False),
]


@pytest.mark.parametrize("what,loss,grad,diverged,fires", EXPLODE, ids=[r[0] for r in EXPLODE])
def test_exploding_gradients(what, loss, grad, diverged, fires):
    s = signals(loss, grad=grad)
    w = gradients.exploding_gradients(s, ctx(lr=0.1, optimizer="sgd"), diverged=diverged)
    assert (w is not None) == fires
    if fires:
        assert w.fix["lr"] == 0.01 and w.fix["grad_clip"] > 0


def test_exploding_gradients_with_clipping_on_lowers_the_lr_only():
    s = signals(flat(60), grad=list(np.geomspace(0.5, 2000, 60)))
    w = gradients.exploding_gradients(s, ctx(lr=0.1, grad_clip=1.0))
    assert w.fix == {"lr": 0.01}


def test_exploding_gradients_fire_on_first_layer_70x_the_last():
    s = signals(flat(60), grad=list(np.linspace(1, 3, 60)), g_first=[200.0] * 60, g_last=[1.0] * 60)
    assert gradients.exploding_gradients(s, ctx()) is not None


# -- dead_relu -----------------------------------------------------------------------

def test_dead_relu_from_the_start_says_model_not_lr():
    s = signals(flat(50), probes=[probe(1, 1, 1e-3, dead=1.0), probe(30, 3, dead=1.0), probe(50, 5, dead=1.0)])
    w = gradients.dead_relu(s, ctx())
    assert w is not None and w.fix == {} and "first step" in w.message and "100%" in w.message


def test_dead_relu_appearing_during_training_suggests_lower_lr():
    s = signals(flat(50), probes=[probe(1, 1, dead=0.05), probe(30, 3, dead=0.8), probe(50, 5, dead=0.9)])
    w = gradients.dead_relu(s, ctx(lr=0.5))
    assert w is not None and w.fix == {"lr": 0.05} and "5%" in w.message


DEAD_QUIET = [
    ("one probe only", [probe(1, 1, dead=1.0)]),
    ("half dead", [probe(1, 1, dead=0.5), probe(30, 3, dead=0.5)]),
    ("dead once, recovered", [probe(1, 1, dead=0.9), probe(30, 3, dead=0.1)]),
    ("too few examples to tell", [probe(1, 1, dead=0.9, examples=4), probe(30, 3, dead=0.9, examples=4)]),
]


@pytest.mark.parametrize("what,probes", DEAD_QUIET, ids=[r[0] for r in DEAD_QUIET])
def test_dead_relu_quiet(what, probes):
    assert gradients.dead_relu(signals(flat(50), probes=probes), ctx()) is None


# -- overfitting -------------------------------------------------------------------

OVERFIT = [
    ("val rising, train falling", [1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03], [1.2, 0.9, 0.75, 0.78, 0.9, 1.0, 1.1, 1.2],
     True),
    ("val flat far above a train loss going to 0", [1.3, 0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.003, 0.002, 0.001],
     [1.3, 1.0, 0.8, 0.62, 0.6, 0.6, 0.61, 0.6, 0.6, 0.61, 0.6, 0.61], True),
    ("val tracks train", [1.2, 0.8, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1], [1.25, 0.85, 0.55, 0.35, 0.26, 0.2, 0.18, 0.16],
     False),
    ("one noisy val epoch", [1.2, 0.8, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1], [1.2, 0.9, 0.6, 0.4, 0.33, 0.6, 0.3, 0.31],
     False),
    ("mild drift from the first epoch", [0.65, 0.55, 0.5, 0.47, 0.45, 0.44, 0.43, 0.42], [0.53, 0.55, 0.56, 0.58, 0.6,
                                                                                          0.61, 0.62, 0.62], False),
]


@pytest.mark.parametrize("what,train,val,fires", OVERFIT, ids=[r[0] for r in OVERFIT])
def test_overfitting(what, train, val, fires):
    w = fit.overfitting(signals(flat(10), records(train, val)), ctx(baseline=1.0))
    assert (w is not None) == fires
    if fires:
        assert w.fix["weight_decay"] > 0 and w.fix["patience"] >= 3


def test_overfitting_fix_raises_existing_weight_decay_and_dropout():
    s = signals(flat(10), records([1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03], [1.2, 0.9, 0.75, 0.78, 0.9, 1.0, 1.1, 1.2]))
    w = fit.overfitting(s, ctx(baseline=1.0, weight_decay=1e-4, has_dropout=True, dropout=0.1))
    assert w.fix == {"weight_decay": 1e-3, "dropout": 0.3, "patience": 3}


def test_overfitting_is_left_to_early_stopping_when_it_is_on():
    s = signals(flat(10), records([1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03], [1.2, 0.9, 0.75, 0.78, 0.9, 1.0, 1.1, 1.2]))
    assert fit.overfitting(s, ctx(baseline=1.0, patience=5)) is None  # it stops and restores the best weights


# -- underfitting / plateau ------------------------------------------------------------

UNDER = [
    ("stuck at the baseline", [1.40, 1.39, 1.388, 1.387, 1.387, 1.386], [1.39] * 6, True, True),
    ("stuck, judged before the end", [1.40, 1.39, 1.388, 1.387, 1.387, 1.386], [1.39] * 6, False, False),
    ("near the baseline but still falling fast", [1.38, 1.33, 1.28, 1.23, 1.18, 1.13], [1.37, 1.32, 1.27, 1.22, 1.17, 1.12],
     True, False),
    ("half the baseline (a noisy problem converged)", [0.8, 0.7, 0.7, 0.69, 0.69, 0.69], [0.75, 0.72, 0.71, 0.7, 0.7, 0.7],
     True, False),
]


@pytest.mark.parametrize("what,train,val,final,fires", UNDER, ids=[r[0] for r in UNDER])
def test_underfitting(what, train, val, final, fires):
    w = fit.underfitting(signals(flat(60), records(train, val)), ctx(), final=final)
    assert (w is not None) == fires


def test_underfitting_from_regularisation_suggests_less_of_it():
    s = signals(flat(60), records([1.39] * 6, [1.39] * 6))
    w = fit.underfitting(s, ctx(weight_decay=0.5, l1=1e-3, dropout=0.9), final=True)
    assert w.fix == {"weight_decay": 0.005, "l1": 0.0, "dropout": 0.1}


def test_underfitting_message_has_the_numbers():
    w = fit.underfitting(signals(flat(60), records([1.39] * 6, [1.38] * 6)), ctx(), final=True)
    assert "1.39" in w.message and "1.38" in w.message and f"{LN4:.3g}" in w.message


PLATEAU = [
    ("flat at 80% of the baseline for 6 epochs", [1.3, 1.2, 1.15, 1.12] + [1.12] * 6, True),
    ("flat at 50% of the baseline (a noisy problem, converged)", [1.3, 1.0, 0.8, 0.7] + [0.7] * 6, False),
    ("still improving 5% an epoch", [1.3 * 0.95 ** i for i in range(10)], False),
    ("flat at a good level", [1.3, 0.5, 0.2, 0.1] + [0.1] * 6, False),
    ("too short to tell", [1.3, 1.0, 0.97, 0.97], False),
]


@pytest.mark.parametrize("what,train,fires", PLATEAU, ids=[r[0] for r in PLATEAU])
def test_loss_plateau(what, train, fires):
    w = fit.loss_plateau(signals(flat(100), records(train, [t + 0.01 for t in train])), ctx(epochs=12))
    assert (w is not None) == fires


def test_plateau_with_plain_sgd_suggests_adam():
    """A saddle: plain SGD creeps, momentum (or a larger lr) stayed stuck on XOR at 0.1x init, Adam left it."""
    train = [1.3, 1.2, 1.15, 1.12] + [1.12] * 6
    w = fit.loss_plateau(signals(flat(100), records(train, train)), ctx(epochs=12, optimizer="sgd"))
    assert w.fix == {"optimizer": "adam", "lr": 3e-3}


def test_plateau_with_adam_offers_no_lr_change():
    """Lowering the lr of a loss stuck near the baseline only slows it (L1 0.05: accuracy 0.55 -> 0.33)."""
    train = [1.3, 1.2, 1.15, 1.12] + [1.12] * 6
    w = fit.loss_plateau(signals(flat(100), records(train, train)), ctx(epochs=12, optimizer="adam"))
    assert w.fix == {} and "capacity" in w.suggestion


def test_plateau_under_strong_regularisation_offers_less_of_it():
    train = [1.3, 1.2, 1.15, 1.12] + [1.12] * 6
    w = fit.loss_plateau(signals(flat(100), records(train, train)), ctx(epochs=12, optimizer="adamw", l1=0.05))
    assert w.fix == {"l1": 0.0}


def test_plateau_is_not_raised_while_the_val_metric_climbs():
    """A loss flat to 1% (SGD at a tiny lr) while val accuracy climbs steadily: learning, slowly."""
    train = [1.3, 1.2, 1.15, 1.12] + [1.12] * 6
    acc = [0.10, 0.10, 0.11, 0.11, 0.12, 0.13, 0.14, 0.16, 0.17, 0.18]
    s = signals(flat(100), records(train, train, val_accuracy=acc))
    assert fit.loss_plateau(s, ctx(epochs=12, optimizer="adam")) is None
    noisy = [0.30, 0.34, 0.29, 0.35, 0.31, 0.36, 0.29, 0.34, 0.33, 0.30]
    s = signals(flat(100), records(train, train, val_accuracy=noisy))
    assert fit.loss_plateau(s, ctx(epochs=12, optimizer="adam")) is not None  # noise is not a climb


# -- evaluate(): causes before symptoms ----------------------------------------------------

def _stuck_vanishing():
    loss = flat(100)
    return signals(loss, records([LN4] * 10, [LN4] * 10, val_accuracy=[0.25] * 10), g_first=[1e-9] * 100,
                   g_last=[0.5] * 100, probes=[probe(1, 1, 1e-6), probe(50, 5, 1e-6), probe(99, 10, 1e-6)])


def test_a_cause_takes_over_its_symptoms():
    found = evaluate(_stuck_vanishing(), ctx(optimizer="sgd", lr=0.1), phase="final")
    by_code = {w.code: w for w in found}
    # the flat loss is shown, but as the cause's symptom, with the cause's fix (none: the model
    # must change), not plain SGD's "switch to momentum"; underfitting is not raised on top
    assert [w.code for w in found] == ["vanishing_gradients", "loss_plateau"]
    plateau = by_code["loss_plateau"]
    assert plateau.fix == by_code["vanishing_gradients"].fix == {}
    assert plateau.suggestion.startswith("the likely cause is vanishing gradients")


def test_a_plateau_from_a_too_low_lr_offers_the_lr_increase():
    from nb_trainer.health.monitor import evaluate as monitor_evaluate
    s = signals(flat(100), records([LN4] * 10, [LN4] * 10, val_accuracy=[0.25] * 10))
    low = HealthWarning("lr_too_low", "warning", "updates 1e-6 of the weights", "raise lr", fix={"lr": 0.01})
    found = monitor_evaluate(s, ctx(epochs=10), raised={"lr_too_low": low}, phase="final")
    plateau = next(w for w in found if w.code == "loss_plateau")
    assert plateau.fix == {"lr": 0.01} and "lr too low" in plateau.suggestion
    assert "underfitting" not in {w.code for w in found}


def test_symptoms_show_when_no_cause_is_found():
    s = signals(flat(100), records([LN4] * 10, [LN4] * 10, val_accuracy=[0.25] * 10))
    codes = {w.code for w in evaluate(s, ctx(epochs=10), phase="final")}
    assert codes == {"underfitting", "loss_plateau"}


def test_every_rule_warning_is_a_known_code():
    for w in evaluate(_stuck_vanishing(), ctx(), phase="final"):
        assert isinstance(w, HealthWarning) and w.code in CODES


# -- the monitor as an engine callback ------------------------------------------------------

class FakeEngine:
    def __init__(self, run, y):
        from nb_trainer.data import TensorSource
        self.run_ = run
        self.params = [torch.zeros(8, 4), torch.zeros(8), torch.zeros(4, 8)]
        self.param_names = ["0.weight", "0.bias", "2.weight"]
        self.dropout_p = {}
        self.train_src = TensorSource((torch.zeros(len(y), 4), y), "cpu", torch.float32)
        self.model = torch.nn.Sequential()
        self.warned = []
        self._y = y

    def target_sample(self):
        return self._y

    def warn(self, w):
        self.warned.append(w.code)
        return self.run_.add_warning(w)[0]


def test_monitor_raises_once_then_updates_at_epoch_ends():
    from nb_trainer.config import TrainConfig
    from nb_trainer.run import Run
    run = Run(TrainConfig(optimizer="sgd", lr=0.1, epochs=5))
    run.steps_per_epoch, run.status = 10, "running"
    engine = FakeEngine(run, torch.arange(400) % 4)
    m = HealthMonitor(type("T", (), {"task": "classification", "n_classes": 4})(), "cross_entropy")
    m.on_run_start(run, engine)
    assert m.ctx.baseline == pytest.approx(LN4)
    step = 0
    for epoch in range(1, 6):
        for _ in range(5):  # five logs of two steps
            n = [step + 1, step + 2]
            step += 2
            m._next_eval = 0.0  # evaluate at every log (the real one waits EVAL_SECONDS)
            m.on_log(run, engine, {"step": n, "epoch": [epoch] * 2, "loss": [LN4] * 2, "grad_norm": [0.5] * 2,
                                   "lr": [0.1] * 2, "layer_norms": [[1e-9, 1e-3, 0.5]] * 2})
        m._next_eval = 0.0  # as if each epoch took longer than EVAL_SECONDS
        m.on_epoch_end(run, engine, {"epoch": epoch, "train_loss": LN4, "val_loss": LN4})
    run.status = "finished"
    m.on_run_end(run, engine)
    assert run.codes == ["vanishing_gradients"]
    # raised at the first log that shows it, then updated only at the 5 epoch ends and the end: not at every log
    assert engine.warned.count("vanishing_gradients") == 1 + 5 + 1
    assert run.warning("vanishing_gradients").count == 7 and "epoch 5" in run.warning("vanishing_gradients").message


def test_signals_thin_the_middle_and_keep_the_start():
    s = Signals()
    s.extend(step=list(range(CAPACITY + 10)), loss=list(range(CAPACITY + 10)))
    assert len(s.loss) < CAPACITY and s.loss[:EARLY_KEEP] == list(range(EARLY_KEEP))
    assert s.loss[-1] == CAPACITY + 9


# -- the trivial baseline, against scikit-learn -----------------------------------------------

def test_trivial_loss_of_classes_is_log_loss_of_the_prior():
    from sklearn.metrics import log_loss
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    prior = np.bincount(y.numpy()) / len(y)
    expected = log_loss(y.numpy(), np.tile(prior, (len(y), 1)))
    assert trivial_loss(y, "classification", "cross_entropy", 3) == pytest.approx(expected)


def test_trivial_loss_of_binary_targets_is_log_loss_of_the_rate():
    from sklearn.metrics import log_loss
    y = torch.tensor([1.0] * 30 + [0.0] * 70).reshape(-1, 1)
    assert trivial_loss(y, "binary", "bce") == pytest.approx(log_loss(y.numpy().ravel(), np.full(100, 0.3)))


def test_trivial_loss_of_regression_is_mse_of_the_mean():
    from sklearn.metrics import mean_absolute_error, mean_squared_error
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, size=(200, 2))
    t = torch.tensor(y)
    assert trivial_loss(t, "regression", "mse") == pytest.approx(mean_squared_error(y, np.tile(y.mean(0), (200, 1))))
    assert trivial_loss(t, "regression", "mae") == pytest.approx(
        mean_absolute_error(y, np.tile(np.median(y, 0), (200, 1))))
    assert trivial_loss(t, "regression", "my_loss") is None


# -- pre-flight data checks ---------------------------------------------------------------

class Task:
    def __init__(self, task, n_outputs, output_shape=None):
        self.task, self.n_outputs = task, n_outputs
        self.output_shape = output_shape or (n_outputs,)

    @property
    def n_classes(self):
        return self.n_outputs if self.task == "classification" else 2


def test_nan_and_inf_counted_per_split_with_columns():
    x = torch.zeros(50, 6)
    x[3, 2] = float("nan")
    x[7, 2] = float("nan")
    x[9, 5] = float("inf")
    (w, fatal), = check_finite("train", x, torch.zeros(50))
    assert fatal and w.code == "bad_input_data"
    assert "3 NaN and Inf values" in w.message and "in 3 of 50 examples" in w.message
    assert "columns 2, 5" in w.message
    (wv, fatal_v), = check_finite("val", x, torch.zeros(50))
    assert wv.message.startswith("val inputs") and not fatal_v


def test_nan_targets_are_reported_as_targets():
    y = torch.zeros(20, 1)
    y[4] = float("nan")
    (w, _), = check_finite("train", torch.zeros(20, 3), y)
    assert "targets contain 1 NaN value" in w.message


LABELS = [
    ("class id 10 with 10 outputs", torch.arange(12) % 11, Task("classification", 10), "from 0 to 10"),
    ("negative class id", torch.tensor([-1, 0, 1, 2]), Task("classification", 3), "from -1 to 2"),
    ("class ids stored as floats", torch.tensor([0.0, 1.0, 2.0]), Task("classification", 3), "float32"),
    ("BCE target 2", torch.tensor([[0.0], [1.0], [2.0]]), Task("binary", 1), "not all 0 or 1"),
    ("regression (N,) against output (N, 1)", torch.randn(10), Task("regression", 1, (1,)), "broadcast"),
]


@pytest.mark.parametrize("what,y,task,needle", LABELS, ids=[r[0] for r in LABELS])
def test_label_mismatch(what, y, task, needle):
    found = check_labels("train", y, task, {"classification": "cross_entropy", "binary": "bce"}.get(task.task, "mse"))
    assert found and all(f for _, f in found)  # fatal: the loss would raise or train on the wrong thing
    assert found[0][0].code == "label_mismatch" and needle in found[0][0].message


def test_matching_labels_pass():
    assert check_labels("train", torch.arange(30) % 3, Task("classification", 3), "cross_entropy") == []
    assert check_labels("train", torch.randn(10, 1), Task("regression", 1), "mse") == []
    assert check_labels("train", (torch.arange(10) % 2).float().reshape(-1, 1), Task("binary", 1), "bce") == []


def test_class_imbalance_reports_counts():
    y = torch.tensor([0] * 190 + [1] * 10)
    (w, fatal), = check_balance("train", y, Task("classification", 2))
    assert not fatal and w.code == "class_imbalance"
    assert "0: 190" in w.message and "1: 10" in w.message and "1:19" in w.message


def test_mild_imbalance_and_one_hot_targets_are_not_flagged():
    assert check_balance("train", torch.tensor([0] * 80 + [1] * 20), Task("classification", 2)) == []
    one_hot = torch.eye(10)[torch.arange(200) % 10]  # balanced, but 9 zeros per row
    assert check_balance("train", one_hot, Task("classification", 10)) == []


def test_preflight_of_clean_data_is_empty():
    x, y = torch.randn(100, 4), torch.arange(100) % 4
    assert preflight("train", x, y, Task("classification", 4), "cross_entropy") == []


def test_train_and_val_findings_of_a_code_become_one_warning():
    x = torch.zeros(20, 3)
    x[0, 1] = float("nan")
    found = preflight("train", x, torch.arange(20) % 2, Task("classification", 2), "cross_entropy")
    found += preflight("val", x[:10], torch.arange(10) % 2, Task("classification", 2), "cross_entropy")
    (w, fatal), = merge_splits(found)
    assert fatal and w.message.startswith("train inputs") and "; val inputs" in w.message


def test_a_failing_rule_is_handed_to_the_guard_and_the_others_still_run(monkeypatch):
    def broken(s, ctx):
        raise ZeroDivisionError("a bug in one rule")
    monkeypatch.setattr(gradients, "dead_relu", broken)
    errors = []
    found = evaluate(_stuck_vanishing(), ctx(), phase="final", guard=errors.append)
    assert [w.code for w in found] == ["vanishing_gradients", "loss_plateau"]
    assert isinstance(errors[0], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):  # without a guard (tests, scripts) it surfaces
        evaluate(_stuck_vanishing(), ctx(), phase="final")


# -- cases found by the held-out scenarios (benchmarks/health_heldout.py) ----------------------------

LN2 = math.log(2)


def test_vanishing_gradients_when_the_loss_only_came_down_to_the_baseline():
    # an off-centre untrained net starts above the baseline; learning the output bias is no progress
    loss = [0.86, 0.84, 0.8, 0.75] + flat(76, LN2, 0.005)
    s = signals(loss, g_first=[2e-9] * 80, g_last=[0.3] * 80)
    w = gradients.vanishing_gradients(s, ctx(baseline=LN2))
    assert w is not None and w.code == "vanishing_gradients"


def test_vanishing_gradients_quiet_when_the_loss_falls_below_the_baseline():
    loss = [0.86, 0.84, 0.8, 0.75] + decay(76, start=0.69, end=0.3)
    s = signals(loss, g_first=[2e-9] * 80, g_last=[0.3] * 80)
    assert gradients.vanishing_gradients(s, ctx(baseline=LN2)) is None


ZERO_FIRST = [
    # (what, loss, g_first, probes, dead_relu fires)
    ("F.relu layer dead: exactly 0, loss stuck, nothing to probe", flat(80), [0.0] * 80, None, True),
    ("zero on a few steps only", flat(80), [0.0, 0.3, 0.2, 0.25] * 20, None, False),
    ("loss near 0: every gradient underflows", decay(80, start=0.5, end=1e-9, tau=5), [0.0] * 80, None, False),
    ("the probes see the model's ReLUs and find them alive", flat(80), [0.0] * 80,
     [probe(1, 1, dead=0.0), probe(70, 7, dead=0.0)], False),
]


@pytest.mark.parametrize("what,loss,gf,probes,fires", ZERO_FIRST, ids=[r[0] for r in ZERO_FIRST])
def test_dead_units_seen_in_exactly_zero_first_layer_gradients(what, loss, gf, probes, fires):
    s = signals(loss, g_first=gf, g_last=[0.06] * 80, probes=probes)
    w = gradients.dead_relu(s, ctx(first_layer="fc1.weight"))
    assert (w is not None) == fires
    if fires:
        assert w.fix == {} and "'fc1.weight'" in w.message and "exactly 0" in w.message
    # exactly zero is never reported as a (tiny) vanishing gradient
    assert gradients.vanishing_gradients(signals(flat(80), g_first=[0.0] * 80, g_last=[0.06] * 80), ctx()) is None


EXPLODE_AT_ONCE = [
    # (what, finite losses before the NaN, gradient norms, baseline, fires)
    ("first loss 9000x the baseline", [9.07e3], [1e5], 1.0, True),
    ("first loss 3e16x the baseline", [3.1e16], [1e18], 1.0, True),
    ("NaN from a normal start, no growth", [1.2], [0.8], 1.0, False),
    ("no baseline to compare with", [9.07e3], [1e5], None, False),
]


@pytest.mark.parametrize("what,loss,grad,base,fires", EXPLODE_AT_ONCE, ids=[r[0] for r in EXPLODE_AT_ONCE])
def test_exploding_gradients_when_the_run_overflows_within_a_step(what, loss, grad, base, fires):
    w = gradients.exploding_gradients(signals(loss, grad=grad), ctx(baseline=base, optimizer="sgd", lr=0.01),
                                      diverged=True)
    assert (w is not None) == fires
    if fires:
        # the forward pass overflows before any update: the model or data does it, no step size cures it
        assert w.fix == {} and "first step" in w.message and "initialisation" in w.suggestion


def test_lr_too_low_judges_epoch_means_not_single_batches():
    # three batches of 32 read 1.19, 1.10, 0.86; the epoch means barely move
    loss = [1.19, 1.10, 0.86] + flat(77, 1.0, 0.1)
    s = signals(loss, records([1.005, 1.005, 1.004, 1.004, 1.003]),
                probes=[probe(1, 1, 3e-6), probe(40, 4, 3e-6), probe(79, 5, 3e-6)])
    w = learning_rate.lr_too_low(s, ctx(task="regression", loss_name="mse", baseline=1.0, optimizer="momentum",
                                        lr=1e-6))
    assert w is not None and w.fix["lr"] > 1e-6


WORSE = [
    # (what, first losses, epoch train losses, fires)
    ("above the start and the baseline, bouncing", [0.72, 0.68, 0.7], [0.74, 0.74, 0.86, 0.98, 0.87, 1.16], True),
    ("a CNN at lr 10, bouncing", [0.69, 0.99, 0.9], [0.91, 1.05, 0.92, 0.93, 1.24, 0.92], True),
    ("stuck at a biased start, lucky first batch", [0.74, 0.86, 0.85], [0.857, 0.858, 0.856, 0.857, 0.857, 0.856],
     False),
    ("healthy: below the baseline after the first epoch", [0.7, 0.69, 0.68], [0.6, 0.4, 0.3, 0.25, 0.22, 0.2], False),
    ("too few epochs to tell", [0.72, 0.68, 0.7], [0.74, 0.9, 1.1], False),
]


@pytest.mark.parametrize("what,first,train,fires", WORSE, ids=[r[0] for r in WORSE])
def test_lr_too_high_when_the_loss_stays_worse_than_guessing(what, first, train, fires):
    s = signals(first + flat(57, train[-1], 0.02), records(train))
    w = learning_rate.lr_too_high(s, ctx(baseline=LN2, optimizer="momentum", lr=3.0))
    assert (w is not None) == fires
    if fires:
        assert w.fix == {"lr": 0.3} and "constant prediction" in w.message


SPIKES = [
    # (what, val losses, fires)
    ("val loss spiking 6-25x its level, 3 times", [0.3, 0.07, 0.05, 0.04, 0.05, 0.18, 0.05, 0.03, 0.04, 0.03, 0.04,
                                                   0.03, 0.2, 0.51, 0.02, 0.01, 0.03, 0.02], True),
    ("one spike, back at once", [0.3, 0.07, 0.05, 0.04, 0.05, 0.05, 0.04, 0.21, 0.05, 0.04, 0.05, 0.04], False),
    ("tiny level, large relative spikes (0.03 of the baseline)", [0.2, 0.02, 0.004, 0.002, 0.025, 0.0013, 0.001,
                                                                  0.0045, 0.037, 0.0014, 0.002, 0.0022], False),
    ("a bump lasting several epochs, then back", [0.8, 0.5, 0.23, 0.14, 0.13, 0.1, 0.11, 0.12, 0.16, 0.17, 0.16,
                                                  0.13, 0.05, 0.03, 0.02], False),
    ("noisy small val set, 2x swings", [0.56, 0.22, 0.3, 0.27, 0.13, 0.23, 0.1, 0.09, 0.1, 0.08, 0.15, 0.12, 0.09,
                                        0.14, 0.26], False),
]


@pytest.mark.parametrize("what,val,fires", SPIKES, ids=[r[0] for r in SPIKES])
def test_loss_oscillation_from_repeated_spikes(what, val, fires):
    train = [v * 0.9 for v in val]
    s = signals(flat(10 * len(val)), records(train, val, val_accuracy=[0.9] * len(val)))
    w = learning_rate.loss_oscillation(s, ctx(baseline=1.0, optimizer="rmsprop", lr=0.03))
    assert (w is not None) == fires
    if fires:
        assert w.fix == {"lr": 0.01} and "spiked" in w.message


def test_overfitting_needs_the_train_loss_to_have_fallen_not_one_epoch_at_zero():
    # a train loss swinging up to 1.3 (momentum 0.98) has not fallen because its latest epoch read 0
    train = [0.55, 0.044, 0.03, 0.047, 0.047, 0.08, 0.09, 0.026, 0.014, 1.19, 0.7, 0.94, 1.26, 0.0]
    val = [0.05, 0.044, 0.018, 0.15, 0.14, 0.32, 0.47, 0.6, 2.77, 0.71, 1.57, 2.25, 8.3, 2.0]
    assert fit.overfitting(signals(flat(10), records(train, val)), ctx(baseline=1.1)) is None


def test_overfitting_is_not_raised_on_top_of_an_lr_that_overshoots():
    train, val = [1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03], [1.2, 0.9, 0.75, 0.78, 0.9, 1.0, 1.1, 1.2]
    s = signals(flat(80), records(train, val))
    assert "overfitting" in {w.code for w in evaluate(s, ctx(baseline=1.0), phase="epoch", step_rules=False)}
    for cause in ("lr_too_high", "loss_oscillation"):
        found = evaluate(s, ctx(baseline=1.0), raised={cause}, phase="epoch", step_rules=False)
        assert "overfitting" not in {w.code for w in found}


PLATEAU_DESCENT = [
    # (what, val losses, fires)
    ("creeping down below the baseline every epoch (a slow start)", [0.6928, 0.6921, 0.6915, 0.69, 0.6885, 0.6865,
                                                                     0.6854], False),
    ("creeping down towards the baseline from above (the bias settling)", [0.7036, 0.7022, 0.7011, 0.70, 0.6992,
                                                                            0.6985, 0.6978], True),
    ("flat with noise both ways", [0.6935, 0.6931, 0.6933, 0.693, 0.6932, 0.6929, 0.6931], True),
]


@pytest.mark.parametrize("what,val,fires", PLATEAU_DESCENT, ids=[r[0] for r in PLATEAU_DESCENT])
def test_plateau_leaves_a_steady_descent_alone(what, val, fires):
    s = signals(flat(70, LN2), records([v + 0.001 for v in val], val))
    assert (fit.loss_plateau(s, ctx(baseline=LN2, epochs=12)) is not None) == fires


HEAVY = [
    # (what, config, train/val level as a share of the baseline, fires)
    ("weight decay 0.5 with adam, R² 0.4", dict(optimizer="adam", weight_decay=0.5), 0.6, True),
    ("weight decay 0.1 with momentum", dict(optimizer="momentum", weight_decay=0.1), 0.6, True),
    ("usual weight decay, a noisy problem at 60%", dict(optimizer="adam", weight_decay=1e-3), 0.6, False),
    ("adamw's usual 0.1 is not heavy", dict(optimizer="adamw", weight_decay=0.1), 0.6, False),
    ("heavy, but the model fits well anyway", dict(optimizer="adam", weight_decay=0.5), 0.3, False),
]


@pytest.mark.parametrize("what,config,level,fires", HEAVY, ids=[r[0] for r in HEAVY])
def test_underfitting_under_heavy_regularisation(what, config, level, fires):
    tr = [1.0, 0.8] + [level] * 6
    s = signals(flat(80), records(tr, [t * 0.95 for t in tr]))
    w = fit.underfitting(s, ctx(task="regression", loss_name="mse", baseline=1.0, **config), final=True)
    assert (w is not None) == fires
    if fires:
        assert w.fix["weight_decay"] < config["weight_decay"]


def test_heavy_regularisation_is_not_called_vanishing_gradients():
    # weights shrunk towards 0 make the early gradients tiny: the regulariser's doing
    s = signals(flat(80), g_first=[1e-7] * 80, g_last=[0.2] * 80)
    assert gradients.vanishing_gradients(s, ctx(optimizer="momentum", weight_decay=1.0)) is None
    assert gradients.vanishing_gradients(s, ctx(optimizer="momentum")) is not None


# -- issue "health warnings whose fixes work": no diagnosis from a run still improving, new faults -----------

def test_oscillation_ignores_a_metric_that_climbs_with_noise():
    """val R² -83, -22, -14, -16, -11, -13, -6, -5 is a run recovering from a bad start, not a swing."""
    r2 = [-300.0, -200.0, -150.0, -83.1, -22.5, -14.0, -16.5, -11.5, -13.7, -6.48, -5.0, -4.0]
    val = [1 - v for v in r2]
    s = signals(flat(120), records(val, val, val_r2=r2))
    assert learning_rate.loss_oscillation(s, ctx(task="regression", loss_name="mse", baseline=1.0)) is None


def test_oscillation_still_sees_a_metric_that_swings_both_ways():
    acc = [0.9, 0.5, 0.9, 0.45, 0.92, 0.5, 0.9, 0.4, 0.88, 0.5]
    val = [0.3] * 10
    s = signals(flat(100), records(val, val, val_accuracy=acc))
    assert learning_rate.loss_oscillation(s, ctx()).code == "loss_oscillation"


def test_zigzag_finds_slow_swings_that_epoch_to_epoch_moves_miss():
    x = [1.0, 0.8, 0.6, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4]
    assert [round(d, 2) for _, _, d in learning_rate.zigzag(x, 0.5)] == [-0.6, 0.6, -0.6]
    assert learning_rate.zigzag([0.5, 0.55, 0.5, 0.52], 0.1) == []


def _ringing(n=60, period=8, amplitude=0.3, level=0.2, decay=1.0):
    import math as m
    return [level + amplitude * decay ** i * (1 + m.sin(2 * m.pi * i / period)) / 2 for i in range(n)]


@pytest.mark.parametrize("optimizer,momentum,amplitude,fires", [
    ("momentum", 0.99, 0.3, True),    # heavy ball, full batch: rings the whole run
    ("momentum", 0.99, 0.03, False),  # a ripple of a tenth of the baseline is not a swing
    ("adam", 0.9, 0.3, False),        # not a heavy ball: the swing test judges it
    ("momentum", 0.5, 0.3, False),
])
def test_heavy_ball_ringing(optimizer, momentum, amplitude, fires):
    val = _ringing(amplitude=amplitude)
    s = signals(flat(60), records(val, val), spe=1)
    c = ctx(task="regression", loss_name="mse", baseline=1.0, optimizer=optimizer, momentum=momentum, lr=0.05,
            epochs=60, steps_per_epoch=1)
    w = learning_rate.heavy_ball_ringing(s, c)
    assert (w is not None) == fires
    if fires:
        assert w.fix == {"momentum": 0.9} and "under-damped" in w.message


def test_a_climb_that_is_one_swing_of_the_heavy_ball_asks_for_less_momentum_not_a_lower_lr():
    val = _ringing(amplitude=0.3)
    train = list(val)
    train[20], train[21] = 1.5, 1.5  # two epochs at 2x the best: the slow-divergence evidence
    s = signals(flat(60, 0.3), records(train, val), spe=1)
    c = ctx(task="regression", loss_name="mse", baseline=1.0, optimizer="momentum", momentum=0.99, lr=0.05,
            epochs=60, steps_per_epoch=1)
    w = learning_rate.lr_too_high(s, c)
    assert w.fix == {"momentum": 0.9} and "heavy ball" in w.message


@pytest.mark.parametrize("g0,l0,fires", [
    (1.1e4, 900.0, True),   # 24 residual blocks without normalisation
    (107.0, 13.6, True),    # an initialisation 5x He
    (10.2, 3.9, False),     # the largest healthy start measured
    (200.0, 1.1, False),    # a large gradient but a loss at the baseline: not off scale
])
def test_exploding_gradients_from_the_first_step_while_the_run_still_learns(g0, l0, fires):
    loss = [l0] + decay(59, start=l0 / 3, end=0.3)
    grad = [g0] + decay(59, start=g0 / 3, end=1.0)
    w = gradients.exploding_gradients(signals(loss, grad=grad), ctx(baseline=1.0))
    assert (w is not None) == fires
    if fires:
        assert w.fix == {} and "before any update" in w.message and "still learns" in w.message


def test_a_nan_at_the_first_step_is_not_the_learning_rate():
    raised = {"nan_loss": HealthWarning("nan_loss", "error", "the loss became nan at step 1 (epoch 1)", "lower lr",
                                        fix={"lr": 1e-4, "grad_clip": 1.0}, step=1, epoch=1)}
    found = evaluate(signals([float("nan")] * 0 + [1.0]), ctx(), raised, phase="final", diverged=True)
    nan = next(w for w in found if w.code == "nan_loss")
    assert nan.fix == {} and "before any update" in nan.message


def test_a_nan_later_in_the_run_keeps_its_lr_fix():
    raised = {"nan_loss": HealthWarning("nan_loss", "error", "the loss became inf at step 40", "lower lr",
                                        fix={"lr": 1e-4}, step=40, epoch=4)}
    found = evaluate(healthy_run(), ctx(), raised, phase="final", diverged=True)
    assert not any(w.code == "nan_loss" for w in found)


def test_lr_too_high_lowers_100x_after_a_1000x_rise():
    w = learning_rate.lr_too_high(signals([1.1] + [3e9] * 10, records([2.9e9])), ctx(lr=0.3, baseline=1.0))
    assert w.fix == {"lr": 0.003}
    w = learning_rate.lr_too_high(signals([2.3] + [8.0] * 10, records([8.2])), ctx(lr=0.1, baseline=2.3))
    assert w.fix == {"lr": 0.01}


def test_slow_progress_raises_the_lr_of_a_run_that_learns_too_slowly():
    """SGD at lr 1e-3 on digits: the val loss 2.308 -> 2.295 in 15 epochs, val accuracy 0.10 -> 0.18."""
    val = [2.308 - 0.001 * i for i in range(15)]
    acc = [0.10, 0.10, 0.11, 0.10, 0.11, 0.12, 0.12, 0.12, 0.14, 0.14, 0.16, 0.16, 0.17, 0.17, 0.18]
    probes = [probe(i * 10, i, 2.5e-5) for i in range(1, 15)]
    c = ctx(baseline=2.3026, optimizer="sgd", lr=1e-3, epochs=15)
    s = signals(flat(150, 2.3), records(val, val, val_accuracy=acc), probes=probes)
    assert fit.underfitting(s, c, final=True) is None  # not "stopped falling"
    w = learning_rate.slow_progress(s, c)
    assert w.code == "lr_too_low" and w.fix["lr"] > 1e-3 and "slowly" in w.message
    assert [x.code for x in evaluate(s, c, phase="final")].count("underfitting") == 0


def test_slow_progress_leaves_a_healthy_step_size_alone():
    """The same slow climb with the weights moving as a healthy run's: the problem is hard, not the step small."""
    val = [2.308 - 0.001 * i for i in range(15)]
    acc = [0.10 + 0.005 * i for i in range(15)]
    s = signals(flat(150, 2.3), records(val, val, val_accuracy=acc), probes=[probe(i * 10, i, 5e-3) for i in range(1, 15)])
    assert learning_rate.slow_progress(s, ctx(baseline=2.3026, optimizer="sgd", lr=1e-3, epochs=15)) is None


def test_a_plateau_the_run_left_becomes_a_note():
    train = [1.3, 1.2, 1.15, 1.12] + [1.12] * 6 + [0.9, 0.6, 0.4]
    acc = [0.4] * 10 + [0.6, 0.8, 0.9]
    s = signals(flat(130), records(train, train, val_accuracy=acc))
    raised = {"loss_plateau": HealthWarning("loss_plateau", "warning", "the train loss has not improved for 4 "
                                            "epochs", "switch", fix={"optimizer": "adam", "lr": 3e-3}, epoch=10)}
    note = fit.plateau_lifted(s, ctx(epochs=13), raised["loss_plateau"])
    assert note.severity == "info" and note.fix == {} and "moved again" in note.message


def test_overfitting_raised_before_a_step_fault_becomes_a_note():
    raised = {"overfitting": HealthWarning("overfitting", "warning", "val loss rose", "regularise",
                                           fix={"weight_decay": 1e-3}, epoch=14),
              "loss_oscillation": HealthWarning("loss_oscillation", "warning", "swings", "momentum",
                                                fix={"momentum": 0.9}, epoch=40)}
    found = evaluate(healthy_run(), ctx(), raised, phase="final")
    note = next(w for w in found if w.code == "overfitting")
    assert note.severity == "info" and note.fix == {} and "loss_oscillation" in note.message


# -- pre-flight: the scale of the data, probabilities fed to a loss that expects logits ---------------------

def _task(task="classification", n=3, shape=(3,)):
    from types import SimpleNamespace
    return SimpleNamespace(task=task, n_outputs=n, output_shape=shape, n_classes=n)


@pytest.mark.parametrize("what,x,fires", [
    ("standardized", torch.randn(200, 5), False),
    ("in [0, 1]", torch.rand(200, 5), False),
    ("one-hot columns", torch.eye(5)[torch.randint(0, 5, (200,))], False),
    ("raw pixel counts 0..16", torch.randint(0, 17, (200, 64)).float(), False),
    ("raw units x100", torch.randn(200, 5) * 100, True),
    ("a year column", torch.cat([torch.randn(200, 3), 2000 + 10 * torch.rand(200, 1)], 1), True),
    ("pixels 0..255", torch.randint(0, 256, (200, 1, 8, 8)).float(), True),
])
def test_unscaled_inputs_are_found_before_training(what, x, fires):
    from nb_trainer.health.data_checks import check_scale
    found = check_scale("train", x, torch.zeros(200).long(), _task(), "cross_entropy")
    assert bool(found) == fires
    if fires:
        w, fatal = found[0]
        assert w.code == "unscaled_data" and not fatal and w.fix == {} and "standardize" in w.suggestion


def test_unscaled_regression_targets_are_found_and_val_is_not_judged():
    from nb_trainer.health.data_checks import check_scale
    y = torch.randn(200, 1) * 1000
    (w, _), = check_scale("train", torch.randn(200, 3), y, _task("regression", 1, (1,)), "mse")
    assert "regression targets" in w.message
    assert check_scale("val", torch.randn(200, 3) * 100, y, _task("regression", 1, (1,)), "mse") == []


def test_softmax_outputs_before_cross_entropy_name_the_layer():
    from torch import nn

    from nb_trainer.health.data_checks import check_outputs
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    out = model(torch.randn(8, 4))
    (w, fatal), = check_outputs(out, _task(), "cross_entropy", "ours", model)
    assert w.code == "probability_outputs" and not fatal and "Sequential[3] (Softmax)" in w.message
    assert check_outputs(out.log(), _task(), "cross_entropy", "ours", model) == []  # log-probabilities: fine
    assert check_outputs(torch.randn(8, 3), _task(), "cross_entropy", "ours", None) == []  # logits: fine


def test_sigmoid_outputs_before_bce_with_logits_but_not_before_bceloss():
    from torch import nn

    from nb_trainer.health.data_checks import check_outputs
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    out = model(torch.randn(8, 4))
    assert check_outputs(out, _task("binary", 1, (1,)), "bce", "ours", model)[0][0].code == "probability_outputs"
    assert check_outputs(out, _task("binary", 1, (1,)), "BCELoss", "user", model) == []
    assert check_outputs(out, _task("binary", 1, (1,)), "bce", "model", model) == []  # the model's own loss


def test_dead_relu_names_the_module_for_a_person():
    from torch import nn

    from nb_trainer.health.layers import module_labels
    labels = module_labels(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    probes = [probe(1, 1, 3e-3, 0.1), probe(50, 5, 1e-3, 0.9), probe(90, 9, 1e-3, 0.95)]
    w = gradients.dead_relu(signals(flat(100), probes=probes), ctx(labels=labels))
    assert "Sequential[1] (ReLU after Linear(64→128))" in w.message
