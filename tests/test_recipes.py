"""The recipes real training uses, in the engine: schedules followed step by step, a live lr change that
rescales the schedule, gradient accumulation equal to a larger batch, bf16 autocast, float16 refused
off CUDA."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

import nb_trainer as nbt

from conftest import mlp


def _lr_history(run):
    cols = run.history.columns("step", "lr")
    return dict(zip(cols["step"], cols["lr"]))


def test_the_engine_follows_a_cosine_schedule_with_warmup_step_by_step(small_digits):
    train, val = small_digits       # 256 examples, batch 32: 8 steps an epoch
    t = nbt.Trainer(mlp(64, 10), train, val, store=None, diagnostics=False)
    run = t.start(epochs=5, lr=0.01, batch_size=32, schedule="cosine", warmup=0.1, grad_clip=10.0)
    t.wait()
    assert run.status == "finished", run.error
    steps = 40
    w = 4
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.01)
    ref = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=1 / (w + 1), total_iters=w),
                               S.CosineAnnealingLR(opt, T_max=steps - w)], milestones=[w])
    want = []
    for _ in range(steps):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = _lr_history(run)           # grad_clip: every step's norm, so every step is in the history
    assert [got[s] for s in range(1, steps + 1)] == pytest.approx(want, rel=1e-9)
    assert run.epochs[-1]["lr"] == pytest.approx(want[-1], rel=1e-9)


def test_a_live_lr_change_rescales_the_schedule_from_that_step(small_digits, slow_model, wait_until):
    train, val = small_digits
    t = nbt.Trainer(slow_model(delay=0.003), train, val, store=None, diagnostics=False)
    run = t.start(epochs=4, lr=0.01, batch_size=32, schedule="linear", grad_clip=10.0)
    assert wait_until(lambda: run.step >= 6, timeout=30)
    t.change(lr=0.002)
    t.wait()
    assert run.status == "finished", run.error
    change = run.changes[0]
    at = change["step"]
    assert "rescaled ×0.2" in change["note"]
    lrs = _lr_history(run)
    total = 32
    for s, lr in lrs.items():             # step s used factor(s - 1)
        base = 0.01 if s <= at else 0.002
        assert lr == pytest.approx(base * (1 - (s - 1) / total), rel=1e-9), s


def test_accumulating_4_batches_of_16_gives_the_weights_of_batches_of_64(small_digits):
    (x, y), _ = small_digits
    x, y = x[:250], y[:250]           # 250 = 3 × 64 + 58: the last group is 4 batches, the last of 10
    a = nbt.Trainer(mlp(64, 10), (x, y), store=None, diagnostics=False)
    b = nbt.Trainer(mlp(64, 10), (x, y), store=None, diagnostics=False)
    ra = a.start(epochs=2, batch_size=64, optimizer="sgd", lr=0.1)
    a.wait()
    rb = b.start(epochs=2, batch_size=16, accumulate=4, optimizer="sgd", lr=0.1)
    b.wait()
    assert ra.status == rb.status == "finished"
    assert ra.step == rb.step == 8 and rb.steps_per_epoch == 4
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(wa, wb, atol=1e-6), name
    # the loss the health rules read is the effective step's
    assert ra.history.columns("loss")["loss"] == pytest.approx(rb.history.columns("loss")["loss"], rel=1e-5)
    assert ra.epochs[-1]["train_loss"] == pytest.approx(rb.epochs[-1]["train_loss"], rel=1e-5)


def test_accumulation_with_a_group_cut_short_by_the_epoch_end(small_digits):
    (x, y), _ = small_digits
    x, y = x[:100], y[:100]           # batches of 16: 7 of them, accumulate 3: groups of 3, 3, 1
    a = nbt.Trainer(mlp(64, 10), (x, y), store=None, diagnostics=False)
    run = a.start(epochs=1, batch_size=16, accumulate=3, optimizer="sgd", lr=0.1)
    a.wait()
    assert run.step == 3 and run.steps_per_epoch == 3
    ref = mlp(64, 10)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    for idx in (order[:48], order[48:96], order[96:]):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    for wa, wb in zip(a.model.state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(wa, wb, atol=1e-6)


def test_bf16_trains_the_digits_mlp_to_within_a_few_points_of_float32(digits):
    train, val = digits
    accs = {}
    for precision in ("32", "bf16"):
        t = nbt.Trainer(mlp(64, 10, hidden=64), train, val, store=None)
        run = t.start(epochs=6, lr=3e-3, precision=precision)
        t.wait()
        assert run.status == "finished", run.error
        accs[precision] = run.epochs[-1]["val_accuracy"]
    assert accs["32"] > 0.9
    assert abs(accs["bf16"] - accs["32"]) < 0.04, accs


def test_bf16_trains_a_tiny_transformer_to_within_a_few_points_of_float32():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from test_models import dict_loader, tiny_bert, token_data
    ids, labels = token_data()
    accs = {}
    for precision in ("32", "bf16"):
        t = nbt.Trainer(tiny_bert(), dict_loader(ids[:400], labels[:400], shuffle=True),
                        dict_loader(ids[400:], labels[400:], 40), store=None)
        run = t.start(epochs=5, lr=3e-3, precision=precision)
        t.wait()
        assert run.status == "finished", run.error
        accs[precision] = run.epochs[-1]["val_accuracy"]
    assert accs["32"] > 0.8
    assert abs(accs["bf16"] - accs["32"]) < 0.06, accs


def test_float16_is_refused_off_cuda_saying_why(small_digits):
    train, _ = small_digits
    t = nbt.Trainer(mlp(64, 10), train, store=None)
    with pytest.raises(ValueError, match="precision='16'.*CUDA.*bf16"):
        t.start(precision="16")
    assert t.runs == [] and not t.running   # nothing started, the Trainer is fine
    run = t.start(epochs=1)
    t.wait()
    assert run.status == "finished"


def test_a_schedule_needing_the_run_length_is_refused_for_a_stream(small_digits):
    from test_models import Repeating
    (x, y), _ = small_digits
    t = nbt.Trainer(mlp(64, 10), Repeating(x, y), store=None)
    with pytest.raises(ValueError, match="stream"):
        t.start(schedule="onecycle")
    run = t.start(schedule="plateau", epochs=2)
    t.wait()
    assert run.status == "finished"


def test_new_fields_are_validated_at_the_door(small_digits):
    train, _ = small_digits
    t = nbt.Trainer(mlp(64, 10), train, store=None)
    for bad, words in (({"schedule": "exp"}, "schedule"), ({"warmup": 0.9}, "warmup"),
                       ({"accumulate": 0}, "accumulate"), ({"precision": "8"}, "precision")):
        with pytest.raises(ValueError, match=words):
            t.start(**bad)


# -- continuing from a run ------------------------------------------------------------------------

def test_a_continued_run_starts_from_its_parents_final_weights_and_loss(digits):
    train, val = digits
    t = nbt.Trainer(mlp(64, 10), train, val, store=None)
    first = t.start(epochs=4, lr=3e-3)
    t.wait()
    second = t.start(from_run=1, epochs=3, lr=3e-4)
    t.wait()
    assert second.status == "finished", second.error
    assert second.continued_from["number"] == 1 and second.continued_from["epoch"] == 4
    assert "continues #1" in second.note
    # its first steps start where the parent ended, not at the initial loss
    start_loss = second.history.columns("loss")["loss"][0]
    assert start_loss < first.history.columns("loss")["loss"][0] / 3
    assert start_loss == pytest.approx(first.epochs[-1]["train_loss"], rel=0.5)
    assert second.epochs[-1]["val_loss"] <= first.epochs[-1]["val_loss"] * 1.05
    # judged as a continuation: a loss that starts low is no lack of progress
    assert not [w for w in second.warnings if w.code in ("lr_too_low", "loss_plateau", "underfitting")]
    from nb_trainer.ui.status import runs_table_html
    assert "#2 ← #1 at epoch 4" in runs_table_html(t.runs, t.task)
    # a plain start afterwards is back at the initial weights
    third = t.start(epochs=1, lr=3e-3)
    t.wait()
    assert third.continued_from is None
    assert third.history.columns("loss")["loss"][0] == pytest.approx(first.history.columns("loss")["loss"][0])


def test_from_run_errors_name_the_run(small_digits):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10), train, val, store=None)
    with pytest.raises(ValueError, match="no runs yet"):
        t.start(from_run=1)
    t.start(epochs=1)
    t.wait()
    with pytest.raises(ValueError, match="runs #1 to #1"):
        t.start(from_run=3)
    with pytest.raises(TypeError, match="from_run"):
        t.start(from_run="latest")
    other = nbt.Trainer(mlp(64, 10, hidden=8), train, val, store=None)
    with pytest.raises(ValueError, match="do not fit this model"):
        other.start(from_run=t.runs[0])
