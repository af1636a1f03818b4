"""The engine through the headless Trainer: repeatability, initial weights,
optimizers and regularization against torch's own, live changes, stop/pause,
failed and diverged runs, bounded history."""
from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nb_trainer as nbt
from nb_trainer.config import TrainConfig
from nb_trainer.engine import Callback, build_optimizer
from nb_trainer.run import StepHistory


class Spy(Callback):
    """Keeps the engine, and copies of what the tests compare."""

    def __init__(self):
        self.engine = None
        self.grads = None
        self.epoch_states = []
        self.dropout_p = None

    def on_run_start(self, run, engine):
        self.engine = engine
        self.dropout_p = [m.p for m in engine.model.modules() if isinstance(m, nn.Dropout)]

    def on_log(self, run, engine, new):
        self.grads = [p.grad.detach().clone() for p in engine.params]

    def on_epoch_end(self, run, engine, record):
        self.epoch_states.append(copy.deepcopy(engine.model.state_dict()))


def trainer(model, data, spy=None, **kw):
    train, val = data
    t = nbt.Trainer(model, train, val, store=None, **kw)
    if spy is not None:
        t.callbacks.append(spy)
    return t


def finished(t, **cfg):
    run = t.start(**cfg)
    t.wait()
    assert run.status == "finished", (run.status, run.error)
    return run


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- repeatability and initial weights -------------------------------------------

def test_same_config_twice_gives_the_same_loss_curve(small_digits, make_mlp):
    t = trainer(make_mlp(64, 10, dropout=0.2), small_digits)
    a = finished(t, epochs=3, batch_size=32, lr=3e-3)
    b = finished(t, epochs=3, batch_size=32, lr=3e-3)
    assert len(a.history) == 3 * 8
    assert a.history.columns("loss") == b.history.columns("loss")
    assert a.metric("train_loss") == b.metric("train_loss")
    assert a.metric("val_loss") == b.metric("val_loss")


def test_another_seed_gives_another_curve(small_digits, make_mlp):
    t = trainer(make_mlp(64, 10, dropout=0.2), small_digits)
    a = finished(t, epochs=2, batch_size=32, seed=0)
    b = finished(t, epochs=2, batch_size=32, seed=1)
    assert a.history.columns("loss") != b.history.columns("loss")


def test_each_run_starts_from_the_initial_weights(small_digits, make_mlp):
    model = make_mlp(64, 10)
    initial = copy.deepcopy(model.state_dict())
    t = trainer(model, small_digits)
    a = finished(t, epochs=2, batch_size=32, lr=1e-3)
    after_a = copy.deepcopy(t.model.state_dict())
    assert not state_equal(after_a, initial)  # the run did train the live model
    b = finished(t, epochs=2, batch_size=32, lr=1e-1)
    # the first step sees the initial weights and the same first batch: same loss
    assert b.history.columns("loss")["loss"][0] == a.history.columns("loss")["loss"][0]
    assert b.history.columns("loss")["loss"][1] != a.history.columns("loss")["loss"][1]
    c = finished(t, epochs=2, batch_size=32, lr=1e-3)
    assert c.history.columns("loss") == a.history.columns("loss")
    assert state_equal(t.model.state_dict(), after_a)


def test_reset_puts_the_initial_weights_back(small_digits, make_mlp):
    model = make_mlp(64, 10)
    initial = copy.deepcopy(model.state_dict())
    t = trainer(model, small_digits)
    finished(t, epochs=1)
    t.reset()
    assert state_equal(t.model.state_dict(), initial)


# -- optimizers and regularization ----------------------------------------------

@pytest.mark.parametrize("name, cls, group", [
    ("sgd", torch.optim.SGD, {"lr": 0.05, "weight_decay": 1e-3, "momentum": 0}),
    ("momentum", torch.optim.SGD, {"lr": 0.05, "weight_decay": 1e-3, "momentum": 0.8}),
    ("adam", torch.optim.Adam, {"lr": 0.05, "weight_decay": 1e-3, "betas": (0.8, 0.999)}),
    ("adamw", torch.optim.AdamW, {"lr": 0.05, "weight_decay": 1e-3, "betas": (0.8, 0.999)}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.05, "weight_decay": 1e-3, "momentum": 0}),
])
def test_build_optimizer_makes_the_named_torch_optimizer(name, cls, group):
    params = [nn.Parameter(torch.zeros(3, 2))]
    opt = build_optimizer(TrainConfig(optimizer=name, lr=0.05, weight_decay=1e-3, momentum=0.8), params)
    assert type(opt) is cls
    for k, v in group.items():
        assert opt.param_groups[0][k] == v, k
    assert opt.param_groups[0]["params"] == params


@pytest.mark.parametrize("name, cls", [
    ("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD), ("adam", torch.optim.Adam),
    ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
])
def test_a_run_trains_with_the_configured_optimizer(small_digits, make_mlp, name, cls):
    spy = Spy()
    t = trainer(make_mlp(64, 10), small_digits, spy)
    finished(t, optimizer=name, lr=0.02, weight_decay=1e-4, epochs=1)
    opt = spy.engine.optimizer
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in t.model.parameters()}


def _full_batch_grads(model, x, y, l1=0.0):
    model = copy.deepcopy(model)
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    if l1:
        loss = loss + l1 * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)
    loss.backward()
    return model, [p.grad.detach().clone() for p in model.parameters()]


def test_l1_adds_l1_times_sign_of_weight_matrices_to_the_gradient(small_digits, make_mlp):
    (x, y), val = small_digits
    model = make_mlp(64, 10)
    initial = copy.deepcopy(model)
    spy = Spy()
    t = trainer(model, ((x, y), val), spy)
    finished(t, optimizer="sgd", lr=0.1, l1=0.01, epochs=1, batch_size=len(x))  # one full-batch step
    _, plain = _full_batch_grads(initial, x, y)
    _, want = _full_batch_grads(initial, x, y, l1=0.01)
    for p, got, g0, g in zip(initial.parameters(), spy.grads, plain, want):
        assert torch.allclose(got, g, atol=1e-6), p.shape
        if p.dim() > 1:  # weight matrices carry the L1 term: l1 * sign(W)
            assert torch.allclose(got - g0, 0.01 * p.detach().sign(), atol=1e-6)
        else:           # biases do not
            assert torch.allclose(got, g0, atol=1e-6)
    # and sgd applied that gradient
    for p0, p1, g in zip(initial.parameters(), t.model.parameters(), want):
        assert torch.allclose(p1.detach(), p0.detach() - 0.1 * g, atol=1e-6)


def test_grad_clip_clips_the_global_norm_like_clip_grad_norm(small_digits, make_mlp):
    (x, y), val = small_digits
    model = make_mlp(64, 10)
    initial = copy.deepcopy(model)
    spy = Spy()
    t = trainer(model, ((x, y), val), spy)
    run = finished(t, optimizer="sgd", lr=0.1, grad_clip=0.05, epochs=1, batch_size=len(x))
    ref, _ = _full_batch_grads(initial, x, y)
    total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    assert total > 0.1  # the clip did act
    for got, p in zip(spy.grads, ref.parameters()):
        assert torch.allclose(got, p.grad, atol=1e-6)
    # the history records the norm before clipping
    assert run.history.columns("grad_norm")["grad_norm"][0] == pytest.approx(float(total), rel=1e-4)


def test_dropout_sets_every_dropout_layer_and_none_restores_the_models_own(small_digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    spy = Spy()
    t = trainer(model, small_digits, spy)
    finished(t, dropout=0.1, epochs=1)
    assert spy.dropout_p == [0.1, 0.1]
    finished(t, dropout=None, epochs=1)
    assert spy.dropout_p == [0.5, 0.3]
    assert [model[2].p, model[5].p] == [0.5, 0.3]


# -- live changes --------------------------------------------------------------------

def test_live_lr_change_reaches_the_optimizer_at_the_next_step(small_digits, slow_model, wait_until):
    model = slow_model(delay=0.005)
    spy = Spy()
    t = trainer(model, small_digits, spy)
    seen = []  # (completed steps, optimizer lr) at each training forward
    model.register_forward_pre_hook(
        lambda m, inp: seen.append((spy.engine.run_.step, spy.engine.optimizer.param_groups[0]["lr"]))
        if m.training else None)
    run = t.start(lr=1e-3, epochs=100)
    try:
        assert wait_until(lambda: run.step >= 3), (run.status, run.error)
        asked_at = run.step
        t.change(lr=5e-2)
        assert wait_until(lambda: run.changes)
        assert wait_until(lambda: run.step >= run.changes[0]["step"] + 3)
    finally:
        t.stop()
        t.wait()
    assert len(t.runs) == 1  # no new run
    change = run.changes[0]
    assert change["changes"] == {"lr": 5e-2}
    assert change["step"] - asked_at <= 1
    assert run.config.lr == 5e-2
    for step, lr in seen:
        assert lr == (5e-2 if step >= change["step"] else 1e-3), step
    # the history records the new lr from the step after the change
    cols = run.history.columns("step", "lr")
    for step, lr in zip(cols["step"], cols["lr"]):
        assert lr == (5e-2 if step > change["step"] else 1e-3)


def test_live_changes_of_momentum_weight_decay_and_dropout(small_digits, slow_model, wait_until):
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    model = slow_model(delay=0.005, inner=inner)
    spy = Spy()
    t = trainer(model, small_digits, spy)
    run = t.start(optimizer="momentum", lr=1e-2, momentum=0.9, epochs=100)
    try:
        assert wait_until(lambda: run.step >= 2), (run.status, run.error)
        t.change(momentum=0.5, weight_decay=1e-3, dropout=0.2)
        assert wait_until(lambda: run.changes)
        group = spy.engine.optimizer.param_groups[0]
        assert (group["momentum"], group["weight_decay"]) == (0.5, 1e-3)
        assert inner[2].p == 0.2
        assert run.changes[0]["changes"] == {"momentum": 0.5, "weight_decay": 1e-3, "dropout": 0.2}
    finally:
        t.stop()
        t.wait()
    assert len(t.runs) == 1


# -- stop and pause ----------------------------------------------------------------

def test_stop_ends_the_run_within_a_step(small_digits, slow_model, wait_until):
    t = trainer(slow_model(), small_digits)
    run = t.start(epochs=100, batch_size=16)
    assert wait_until(lambda: run.step >= 5)
    asked_at = run.step
    t.stop()
    assert t.wait(timeout=5) is run
    assert run.status == "stopped"
    assert run.step - asked_at <= 2
    assert not t.running


def test_pause_halts_steps_and_resume_continues(small_digits, slow_model, wait_until):
    t = trainer(slow_model(), small_digits)
    run = t.start(epochs=100, batch_size=16)
    try:
        assert wait_until(lambda: run.step >= 3)
        assert run.status == "running"
        asked_at = run.step
        t.pause()
        assert wait_until(lambda: run.status == "paused")
        paused_at = run.step
        assert paused_at - asked_at <= 2
        time.sleep(0.3)
        assert run.step == paused_at
        assert run.status == "paused"
        t.resume()
        assert wait_until(lambda: run.step >= paused_at + 3)
        assert run.status == "running"
    finally:
        t.stop()
        t.wait()
    assert run.status == "stopped"


def test_stop_while_paused_ends_the_run(small_digits, slow_model, wait_until):
    t = trainer(slow_model(), small_digits)
    run = t.start(epochs=100, batch_size=16)
    assert wait_until(lambda: run.step >= 2)
    t.pause()
    assert wait_until(lambda: run.status == "paused")
    t.stop()
    t.wait(timeout=5)
    assert run.status == "stopped" and run.done


def test_start_stops_the_current_run_first(small_digits, slow_model, wait_until):
    t = trainer(slow_model(delay=0.002), small_digits)
    first = t.start(epochs=100)
    assert wait_until(lambda: first.step >= 2)
    second = t.start(epochs=1)
    assert first.status == "stopped" and first.done
    t.wait()
    assert second.status == "finished"
    assert t.runs == [first, second]


# -- failed runs ------------------------------------------------------------------

class FailsAt(nn.Module):
    """Raises on its n-th training-mode forward (the construction probe runs in eval mode)."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.error = RuntimeError("boom at step 5")

    def forward(self, x):
        if self.training and self.n is not None:
            self.calls += 1
            if self.calls == self.n:
                raise self.error
        return self.inner(x)


def test_a_run_that_raises_ends_failed_and_the_trainer_stays_usable(small_digits, make_mlp):
    model = FailsAt(make_mlp(64, 10), 5)
    t = trainer(model, small_digits)
    run = t.start(epochs=3, batch_size=32)
    t.wait(timeout=10)
    assert run.status == "failed"
    assert run.error is model.error
    assert run.step == 4 and run.done
    model.n = None
    again = t.start(epochs=2, batch_size=32)
    t.wait(timeout=10)
    assert again.status == "finished" and again.error is None
    assert len(again.epochs) == 2


def test_labels_the_loss_rejects_fail_the_run_with_a_warning(make_mlp):
    x = torch.randn(64, 4)
    y = torch.randint(0, 5, (64,))  # ids up to 4 for a 3-output model
    t = nbt.Trainer(make_mlp(4, 3), (x, y), store=None)
    run = t.start(epochs=1)
    t.wait(timeout=10)
    assert run.status == "failed"
    assert "label_mismatch" in run.codes
    assert run.warning("label_mismatch").severity == "error"


# -- diverged runs ------------------------------------------------------------------

def _finite(model):
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())


def test_huge_lr_diverges_and_rolls_back_to_finite_weights(regression, make_mlp):
    (x, y), val = regression
    model = make_mlp(10, 1)
    initial = copy.deepcopy(model.state_dict())
    t = trainer(model, ((x * 10, y), val))
    run = t.start(optimizer="sgd", lr=10.0, epochs=5, batch_size=32)
    t.wait(timeout=10)
    assert run.status == "diverged"
    assert run.epochs == []  # diverged in epoch 1: back to the initial weights
    assert _finite(t.model) and state_equal(t.model.state_dict(), initial)
    w = run.warning("nan_loss")
    assert w is not None and w.severity == "error"
    assert w.fix["lr"] < 10.0 and w.suggestion
    assert all(map(lambda v: v == v, run.history.columns("loss")["loss"]))  # no NaN in the history


class InfAfter(nn.Module):
    """Output turns infinite from the n-th training-mode forward on."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                out = out * float("inf")
        return out


def test_divergence_restores_the_last_healthy_epochs_weights(small_digits, make_mlp):
    spy = Spy()
    model = InfAfter(make_mlp(64, 10), n=2 * 8 + 3)  # 8 steps an epoch: breaks in epoch 3
    t = trainer(model, small_digits, spy)
    run = t.start(optimizer="adam", lr=1e-2, epochs=6, batch_size=32)
    t.wait(timeout=10)
    assert run.status == "diverged"
    assert len(run.epochs) == 2
    assert _finite(t.model)
    assert state_equal(t.model.state_dict(), spy.epoch_states[-1])
    assert run.warning("nan_loss").fix.get("lr") == pytest.approx(1e-3)
    assert "epoch 2" in run.warning("nan_loss").message


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class NaNGradAt(nn.Module):
    """Finite output and loss, but NaN gradients on the n-th training forward."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                out = _NaNGrad.apply(out)
        return out


@pytest.mark.parametrize("norm_share", [0.005, 1e-9], ids=["calibrated", "widest-norm-stride"])
def test_weights_that_turn_non_finite_on_an_epochs_last_step_are_never_kept(small_digits, make_mlp,
                                                                             monkeypatch, norm_share):
    # every loss the engine sees in epoch 2 is finite, yet the weights end it as NaN;
    # that epoch must not become the checkpoint a divergence rolls back to (also when gradient
    # norms are taken only every k-th step: the last step's always are)
    import nb_trainer.engine as engine
    monkeypatch.setattr(engine, "NORM_SHARE", norm_share)
    spy = Spy()
    bad_epoch = 5  # 8 steps an epoch: past the steps the norm stride is calibrated on
    model = NaNGradAt(make_mlp(64, 10), n=bad_epoch * 8)  # the last step of that epoch
    t = trainer(model, small_digits, spy)
    run = t.start(optimizer="sgd", lr=1e-2, epochs=bad_epoch + 2, batch_size=32)
    t.wait(timeout=10)
    assert run.status == "diverged"
    assert _finite(t.model)
    assert len(run.epochs) == bad_epoch - 1
    assert state_equal(t.model.state_dict(), spy.epoch_states[bad_epoch - 2])
    assert run.warning("nan_loss") is not None


# -- bounded history -------------------------------------------------------------------

def _cols(start, n, epoch=1):
    steps = list(range(start, start + n))
    return dict(step=steps, epoch=[epoch] * n, loss=[float(s) for s in steps],
                grad_norm=[1.0] * n, lr=[0.1] * n, layer_norms=[[1.0, 2.0]] * n)


@pytest.mark.parametrize("chunk", [1, 37, 256])
def test_step_history_stays_within_capacity_and_keeps_the_newest_points(chunk):
    h = StepHistory(capacity=100)
    step = 1
    for _ in range(400):
        h.extend(**_cols(step, chunk))
        step += chunk
        assert len(h) <= 100
    cols = h.columns()
    last = step - 1
    newest = min(chunk, 100) // 2 or 1
    assert cols["step"][-newest:] == list(range(last - newest + 1, last + 1))
    assert cols["loss"][-1] == float(last)
    assert cols["step"] == sorted(set(cols["step"]))
    assert all(len(cols[c]) == len(cols["step"]) for c in StepHistory.COLUMNS)
    assert cols["step"][0] == 1  # the oldest point survives thinning


def test_a_runs_history_does_not_grow_past_its_capacity(small_digits, make_mlp):
    t = trainer(make_mlp(64, 10, hidden=8), small_digits)
    run = t.start(epochs=4, batch_size=1)  # 1024 steps
    run.history.capacity = 64
    t.wait(timeout=30)
    assert run.status == "finished", run.error
    assert run.step == 1024
    assert len(run.history) <= 64
    assert run.history.columns("step")["step"][-1] == 1024


def test_costly_gradient_norms_are_taken_every_kth_step_and_the_last_step_always(
        small_digits, make_mlp, monkeypatch):
    import nb_trainer.engine as engine
    monkeypatch.setattr(engine, "NORM_SHARE", 1e-9)  # any cost is too much: the widest stride
    t = trainer(make_mlp(64, 10, hidden=8), small_digits)
    run = t.start(epochs=2, batch_size=8)  # 64 steps
    t.wait(timeout=30)
    steps = run.history.columns("step")["step"]
    assert run.status == "finished"
    assert steps[-1] == run.step == 64
    assert len(steps) < run.step  # sampled, not every step
    later = [s for s in steps if s > engine.NORM_CALIBRATION[1]]
    gaps = {b - a for a, b in zip(later, later[1:])}
    assert max(gaps) <= engine.NORM_MAX_STRIDE
    # the loss of every step still counts: the epoch's train loss is the mean over all of them
    assert run.epochs[-1]["train_loss"] > 0


def test_gradient_clipping_takes_the_norm_at_every_step(small_digits, make_mlp, monkeypatch):
    import nb_trainer.engine as engine
    monkeypatch.setattr(engine, "NORM_SHARE", 1e-9)
    t = trainer(make_mlp(64, 10, hidden=8), small_digits)
    run = t.start(epochs=1, batch_size=8, grad_clip=1.0)
    t.wait(timeout=30)
    assert run.history.columns("step")["step"] == list(range(1, run.step + 1))


def test_each_run_gets_its_own_copy_of_the_data_warnings(small_digits, make_mlp):
    (x, y), val = small_digits
    y = y.clone()
    y[: len(y) * 9 // 10] = 0  # class 0 dominates: a class_imbalance warning on every run
    t = trainer(make_mlp(64, 10, hidden=8), ((x, y), val))
    first = t.start(epochs=1)
    t.wait()
    second = t.start(epochs=1)
    t.wait()
    a, b = first.warning("class_imbalance"), second.warning("class_imbalance")
    assert a is not None and b is not None and a is not b
    b.message = "changed"
    assert a.message != "changed"


def test_layer_norms_line_up_with_layer_names_when_a_module_gets_no_gradient(small_digits):
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(64, 10)
            self.unused = nn.Linear(3, 3)  # never called: its parameters never get a gradient

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    t = trainer(WithUnused(), small_digits)
    run = t.start(epochs=1, grad_clip=1.0)
    t.wait(timeout=30)
    assert run.status == "finished", run.error
    names = run.history.layer_names
    rows = run.history.columns("layer_norms")["layer_norms"]
    assert names == ["used.weight", "used.bias", "unused.weight", "unused.bias"]
    assert all(len(r) == 4 for r in rows)
    assert all(r[2] == 0.0 and r[3] == 0.0 and r[0] > 0 for r in rows)


def test_status_shows_the_end_only_after_the_end_hooks_ran(small_digits, make_mlp):
    # whoever polls run.status until it leaves "running" must then see the final warnings
    seen = {}

    class SlowEnd(Callback):
        def on_run_end(self, run, engine):
            time.sleep(0.2)
            seen["status"], seen["outcome"] = run.status, run.outcome

    model = make_mlp(64, 10, hidden=8)
    t = nbt.Trainer(model, *small_digits, store=None)
    t.callbacks.append(SlowEnd())
    run = t.start(epochs=1)
    deadline = time.monotonic() + 10
    while run.status == "running" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert run.status == "finished" and seen == {"status": "running", "outcome": "finished"}
    assert run.wait(timeout=5).done
    t.wait()
