"""The learning-rate range test: leaves everything as it was, suggests by the valley rule, flags noise."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import nb_trainer as nbt
from nb_trainer.lr_finder import LRFinderResult, _trust, smooth, valley


def _reference_model(seed: int = 0) -> nn.Module:
    """The digits reference workload's model: MLP 64-256-256-10."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _state(model_or_state) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().clone() for k, v in state.items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(digits):
    train, val = digits
    model = _reference_model()
    t = nbt.Trainer(model, train, val, store=None, diagnostics=False, optimizer="adam", batch_size=64)
    yield t
    t.close()


def test_the_finder_leaves_every_weight_and_the_rng_unchanged(small_digits, make_mlp):
    (x, y), val = small_digits
    model = make_mlp(64, 10, dropout=0.3)
    t = nbt.Trainer(model, (x, y), val, store=None, diagnostics=False)
    run = t.start(epochs=2, lr=0.05)       # the model now holds trained weights, unlike initial_state
    t.wait()
    model_before, initial_before = _state(t.model), _state(t.initial_state)
    assert not _same(model_before, initial_before)
    dropout_p = [m.p for m in t.model.modules() if isinstance(m, nn.Dropout)]
    rng_before = torch.get_rng_state()
    result = t.lr_find(num_steps=40, dropout=0.1)
    assert len(result.lrs) > 10
    assert _same(_state(t.model), model_before)
    assert _same(_state(t.initial_state), initial_before)
    assert [m.p for m in t.model.modules() if isinstance(m, nn.Dropout)] == dropout_p
    assert t.model.training == model.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert t.runs == [run]                   # no run was added


def test_the_suggestion_beats_too_low_and_too_high_on_the_digits_reference(reference):
    result = reference.lr_find()
    assert isinstance(result, LRFinderResult) and isinstance(result.suggestion, float)
    assert 1e-5 < result.suggestion < 1.0
    assert not result.noisy, result.warning          # batch 64 on digits gives a clean curve
    scores = {}
    for lr in (result.suggestion, 1e-5, 1.0):
        run = reference.start(lr=lr, epochs=5, optimizer="adam", batch_size=64, seed=0)
        reference.wait()
        assert len(run.epochs) == 5 or run.status == "diverged"
        last = run.epochs[-1] if run.epochs else {"val_loss": math.inf, "val_accuracy": 0.0}
        scores[lr] = (last["val_loss"], last["val_accuracy"])
    good = scores[result.suggestion]
    for bad in (1e-5, 1.0):
        assert good[0] < scores[bad][0], scores
        assert good[1] > scores[bad][1], scores


def test_the_test_is_repeatable(reference):
    a, b = reference.lr_find(num_steps=60), reference.lr_find(num_steps=60)
    assert a.lrs == b.lrs and a.losses == b.losses and a.suggestion == b.suggestion


def test_the_lr_grows_geometrically_from_start_to_end(reference):
    result = reference.lr_find(start_lr=1e-6, end_lr=1e-2, num_steps=50)   # too low to blow up
    assert result.stop_reason == "reached end_lr" and len(result.lrs) == 50
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))
    assert result.smoothed == pytest.approx(smooth(result.losses))


def test_it_stops_when_the_smoothed_loss_passes_four_times_its_best(reference):
    result = reference.lr_find(end_lr=100.0)
    assert result.stop_reason.startswith("smoothed loss above 4")
    assert result.smoothed[-1] > 4 * min(result.smoothed)
    # it did not stop any earlier
    best = math.inf
    for s in result.smoothed[:-1]:
        best = min(best, s)
        assert s <= 4 * best


class _GoesNaN(nn.Module):
    """A model whose output turns NaN from its ``after``-th training forward on (scripted divergence)."""

    def __init__(self, inner: nn.Module, after: int):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                out = out * float("nan")
        return out


def test_it_stops_at_a_non_finite_loss(small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(_GoesNaN(make_mlp(64, 10), after=26), (x, y), val, store=None, diagnostics=False)
    result = t.lr_find(start_lr=1e-6, end_lr=1e-3, num_steps=60)
    assert result.stop_reason.startswith("the loss became nan")
    assert len(result.lrs) == 25 and all(math.isfinite(v) for v in result.losses)
    assert t.model.calls == 0                 # the finder trained a copy


def test_valley_picks_a_third_to_a_half_down_the_longest_decreasing_stretch():
    rising = [1.0, 1.1, 1.2, 1.3]
    falling = [1.25 - 0.05 * i for i in range(1, 25)]          # indices 4..27: the longest valley
    bump = [1.0, 1.5, 0.9, 0.95]                               # a short dip that must not win
    losses = rising + falling + bump + [2.0, 3.0]
    idx, start, end = valley(losses)
    assert end == 27                                           # the valley's bottom
    length = end - start
    assert start <= 4
    assert idx == start + int(length / 3) + int(length / 3 / 2)
    assert start + length / 3 - 1 <= idx <= start + length / 2


def test_valley_agrees_with_a_brute_force_longest_decreasing_subsequence():
    rng = random.Random(1)
    for _ in range(50):
        losses = [rng.random() for _ in range(rng.randint(5, 40))]
        idx, start, end = valley(losses)
        # brute force: length of the longest strictly decreasing subsequence ending at each point
        best = [1] * len(losses)
        for i in range(len(losses)):
            for j in range(i):
                if losses[j] > losses[i]:
                    best[i] = max(best[i], best[j] + 1)
        longest = max(best)
        assert best[end] == longest and end == best.index(longest)   # the first one that long
        assert start == max(end - longest, 0)


def _curve(noise: float, seed: int, n: int = 100):
    """A scripted range-test curve: flat, a valley over lr 1e-4..1e-2, then a blow-up; plus noise."""
    rng = random.Random(seed)
    lrs = [1e-7 * (1e8 ** (i / (n - 1))) for i in range(n)]
    clean = []
    for lr in lrs:
        x = math.log10(lr)
        if x < -4:
            clean.append(2.3)
        elif x < -2:
            clean.append(2.3 - 1.0 * (x + 4))
        else:
            clean.append(0.3 + 3 * (x + 2) ** 2)
    return lrs, [c + rng.gauss(0, noise) for c in clean]


def test_a_clean_curve_is_trusted_and_a_noisy_one_is_flagged():
    for seed in range(5):
        lrs, losses = _curve(0.02, seed)
        halves, noisy, why = _trust(lrs, losses, smooth(losses), 0.98, _valley_of(lrs, losses))
        assert not noisy and why is None
        assert abs(math.log10(halves[0] / halves[1])) < 0.5
    flagged = 0
    for seed in range(5):
        lrs, losses = _curve(1.5, seed)
        halves, noisy, why = _trust(lrs, losses, smooth(losses), 0.98, _valley_of(lrs, losses))
        flagged += noisy
        if noisy:
            assert why.startswith("the curve is too noisy to trust")
    assert flagged == 5


def test_a_test_that_diverges_within_few_steps_is_flagged():
    lrs, losses = _curve(0.02, 0)
    lrs, losses = lrs[:12], losses[:12]
    halves, noisy, why = _trust(lrs, losses, smooth(losses), 0.98, _valley_of(lrs, losses))
    assert noisy and "ended after 12 steps, too few" in why


def test_a_start_lr_that_blows_up_at_once_raises_and_says_what_to_do(reference):
    with pytest.raises(RuntimeError, match="start_lr=0.3 is too high"):
        reference.lr_find(start_lr=0.3, end_lr=1e4)


def _valley_of(lrs, losses):
    from nb_trainer.lr_finder import _suggest
    _, a, b = _suggest(lrs, smooth(losses))
    return a, b


def test_bad_arguments_are_refused_by_name(reference):
    with pytest.raises(ValueError, match="start_lr=0"):
        reference.lr_find(start_lr=0)
    with pytest.raises(ValueError, match="end_lr=1e-08"):
        reference.lr_find(start_lr=1e-7, end_lr=1e-8)
    with pytest.raises(ValueError, match="num_steps=5"):
        reference.lr_find(num_steps=5)
    with pytest.raises(ValueError, match="optimizer"):
        reference.lr_find(optimizer="lion")


def test_it_refuses_while_a_run_trains(small_digits, slow_model, wait_until):
    (x, y), val = small_digits
    t = nbt.Trainer(slow_model(), (x, y), val, store=None, diagnostics=False)
    t.start(epochs=50)
    try:
        with pytest.raises(RuntimeError, match="a run is training"):
            t.lr_find()
    finally:
        t.stop()
        t.wait()


def test_on_step_reports_progress_and_can_stop_it(reference):
    seen = []
    result = reference.lr_find(num_steps=50, on_step=lambda step, lr, loss: seen.append((step, lr, loss)) or step == 30)
    assert [s for s, _, _ in seen] == list(range(1, 31))
    assert len(result.lrs) == 30 and result.stop_reason == "stopped by on_step"


def test_plot_draws_on_a_figure_without_pyplot(reference):
    from matplotlib.figure import Figure
    result = reference.lr_find(num_steps=40)
    fig = result.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert any(list(line.get_xdata()) == result.lrs for line in ax.lines)
    png = result.png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    other = Figure()
    ax2 = other.add_subplot()
    assert result.plot(ax2) is other and ax2.lines
