"""Learning-rate range test: train a copy for a few steps with an exponentially growing lr.

The test (Smith 2015, as popularised by fastai) runs ``num_steps`` optimizer
steps on a deep copy of the model, starting from the Trainer's initial
weights, with the optimizer of the config the next ``start()`` would use and
the lr raised geometrically from ``start_lr`` to ``end_lr``. The loss is
smoothed with a bias-corrected exponential moving average (``beta``) and the
test stops early once the smoothed loss exceeds ``diverge`` (4) times its
best, or a loss turns non-finite. The user's model, the Trainer's initial
weights and the global random state are untouched.

Suggestion rule, fastai's "valley" (``fastai.callback.schedule.valley``):
drop the first 10% of the points and the last 5 (warm-up of the average and
the blow-up), find the longest decreasing stretch of the smoothed loss (the
longest decreasing subsequence, ending at ``end`` and ``L`` points long,
starting at ``start = end - L``), and take the point
``start + ⌊L/3⌋ + ⌊L/6⌋``: between a third and half of the way down the
valley, where the loss still falls steeply and is far from the blow-up.

Trust check: a single range test is one noisy sample (its answer moves with
the batch order). The steps are split into the even and the odd ones, two
interleaved curves over the same lr range made of different batches, and the
rule is applied to each. When the two suggestions differ by more than
``NOISY_DECADES`` (half a decade, about ×3), or the smoothed loss falls
along the valley by less than ``MIN_DEPTH_TO_NOISE`` times the step-to-step
noise of the loss, the result says ``noisy`` and why. It
also warns when the test diverged too early to find a valley.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

NOISY_DECADES = 0.5          # even/odd suggestions further apart than this (log10) are not trusted
MIN_DEPTH_TO_NOISE = 2.0     # valley depth / residual noise of the raw loss below this: not trusted
MIN_POINTS = 20              # fewer usable points than this: no valley can be trusted


@dataclass
class LRFinderResult:
    """What a range test saw and what it suggests.

    Attributes
    ----------
    lrs, losses, smoothed : list of float
        The lr of each step, its loss, and the smoothed loss.
    suggestion : float
        The suggested learning rate (fastai's valley rule; see the module doc).
    index : int
        Where the suggestion is in ``lrs``.
    valley : (int, int)
        First and last index of the valley the rule used.
    noisy : bool
        True when the curve is too noisy to trust the suggestion; ``warning`` says why.
    warning : str or None
    halves : (float, float)
        The suggestions from the even and the odd steps alone.
    stop_reason : str
        Why the test ended ("reached end_lr", "smoothed loss above 4× its best", ...).
    seconds : float
    config : TrainConfig
        The config whose optimizer and batch size were tested.
    """

    lrs: list
    losses: list
    smoothed: list
    suggestion: float
    index: int
    valley: tuple
    noisy: bool
    warning: Optional[str]
    halves: tuple
    stop_reason: str
    seconds: float
    config: object = None
    start_lr: float = 0.0
    end_lr: float = 0.0

    def plot(self, ax=None):
        """Draw the curve (log lr vs loss) with the suggestion marked.

        With ``ax`` (a matplotlib Axes) draw on it; otherwise on a new
        ``matplotlib.figure.Figure`` (no pyplot). Returns the Figure.
        """
        if ax is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            fig = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
        else:
            fig = ax.figure
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", linewidth=1.6, label="smoothed")
        a, b = self.valley
        if b > a:
            ax.plot(self.lrs[a:b + 1], self.smoothed[a:b + 1], color="C2", linewidth=3, alpha=0.35,
                    label="valley")
        color = "C3" if self.noisy else "C1"
        ax.axvline(self.suggestion, color=color, linestyle="--", linewidth=1)
        ax.plot([self.suggestion], [self.smoothed[self.index]], "o", color=color,
                label=f"suggestion {self.suggestion:.2g}" + (" (noisy)" if self.noisy else ""))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        # from the lowest loss before the blow-up to a little above the starting level
        bottom = self.smoothed.index(min(self.smoothed))
        shown = [v for v in self.losses[:bottom + 1] + self.smoothed if math.isfinite(v)]
        start = self.smoothed[: max(1, len(self.smoothed) // 10)]
        low, high = min(shown), max(start + [min(shown) * 1.5])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low) + 1e-12)
        ax.legend(fontsize="small", loc="lower left")
        ax.set_title("learning-rate range test", fontsize="medium")
        return fig

    def png(self, dpi: int = 100) -> bytes:
        """The plot as PNG bytes (for an ``ipywidgets.Image``)."""
        import io
        buf = io.BytesIO()
        self.plot().savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()

    def __repr__(self) -> str:
        flag = f", noisy: {self.warning}" if self.noisy else ""
        return f"<LRFinderResult suggestion={self.suggestion:.3g} over {len(self.lrs)} steps{flag}>"


def smooth(losses: list, beta: float = 0.98) -> list:
    """Bias-corrected exponential moving average (what fastai's Recorder plots)."""
    avg, out = 0.0, []
    for i, v in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def valley(losses: list) -> tuple[int, int, int]:
    """fastai's valley rule on ``losses``: (suggested index, valley start, valley end)."""
    n = len(losses)
    if n == 0:
        raise ValueError("valley() needs at least one point")
    lds = [1] * n          # length of the longest decreasing subsequence ending at i
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return idx, max(max_start, 0), max_end


def _suggest(lrs: list, smoothed: list) -> tuple[int, int, int]:
    """Apply the valley rule over the trimmed range; indices refer to the full lists."""
    n = len(lrs)
    lo, hi = n // 10, n - 5
    if hi - lo < 2:
        lo, hi = 0, n
    idx, a, b = valley(smoothed[lo:hi])
    return lo + idx, lo + a, lo + b


def _check(name: str, value, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not accepted: {name} must be {accepted}")


def lr_find(trainer, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, on_step: Optional[Callable] = None,
            **changes) -> LRFinderResult:
    """Run a learning-rate range test for ``trainer``; returns an :class:`LRFinderResult`.

    Parameters
    ----------
    trainer : Trainer
        Its model is copied (deep copy, reset to the Trainer's initial
        weights); its optimizer, batch size, momentum, weight decay, L1,
        dropout, clipping and seed are those the next ``start(**changes)``
        would use.
    start_lr, end_lr : float
        The lr range, swept geometrically.
    num_steps : int
        Optimizer steps (batches, cycling over the training data).
    beta : float
        Smoothing of the loss curve (exponential moving average).
    diverge : float
        Stop once the smoothed loss exceeds this many times its best.
    on_step : callable, optional
        Called as ``on_step(step, lr, loss)`` after each step (a panel's
        progress bar). Returning True stops the test.
    **changes : TrainConfig fields to test with instead (e.g. ``optimizer="sgd"``).

    Raises ``RuntimeError`` while a run of ``trainer`` is training.
    """
    from .optim import build_optimizer, set_dropout

    _check("start_lr", start_lr, isinstance(start_lr, (int, float)) and 0 < start_lr < math.inf, "a number > 0")
    _check("end_lr", end_lr, isinstance(end_lr, (int, float)) and start_lr < end_lr < math.inf,
           f"a number > start_lr ({start_lr:g})")
    _check("num_steps", num_steps, isinstance(num_steps, int) and not isinstance(num_steps, bool)
           and num_steps >= MIN_POINTS, f"an integer >= {MIN_POINTS}")
    _check("beta", beta, isinstance(beta, (int, float)) and 0 <= beta < 1, "a number in [0, 1)")
    _check("diverge", diverge, isinstance(diverge, (int, float)) and diverge > 1, "a number > 1")
    if trainer.running:
        raise RuntimeError("a run is training: wait() or stop() it before lr_find(), "
                           "which needs the CPU/GPU and a still copy of the model")
    config = trainer.config(**changes)

    t0 = time.perf_counter()
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(trainer.initial_state)
    set_dropout(model, config.dropout, getattr(trainer, "_dropout_p", {}))
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in params if p.dim() > 1]
    optimizer = build_optimizer(config.replace(lr=start_lr), params)
    step_fn = trainer.step
    ratio = (end_lr / start_lr) ** (1 / (num_steps - 1))

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stop_reason = "reached end_lr"
    avg, best = 0.0, math.inf
    devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    # the test's randomness (shuffling, dropout) is seeded, and the caller's RNG state is put back
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model.train()
        step = 0
        while step < num_steps and stop_reason == "reached end_lr":
            seen = 0
            for batch in trainer.train_data.batches(config.batch_size, generator, shuffle=True):
                seen += 1
                lr = start_lr * ratio ** step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = step_fn(model, batch).loss
                total = loss + config.l1 * sum(w.abs().sum() for w in matrices) if config.l1 > 0 else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                value = float(loss.detach())    # one host sync a step: the stop rule needs every loss
                step += 1
                if not math.isfinite(value):
                    stop_reason = f"the loss became {value} at lr {lr:.3g}"
                    break
                avg = beta * avg + (1 - beta) * value
                s = avg / (1 - beta ** step)
                lrs.append(lr)
                losses.append(value)
                smoothed.append(s)
                best = min(best, s)
                if on_step is not None and on_step(step, lr, value):
                    stop_reason = "stopped by on_step"
                    break
                if s > diverge * best:
                    stop_reason = f"smoothed loss above {diverge:g}× its best at lr {lr:.3g}"
                    break
                if step >= num_steps:
                    break
            if seen == 0:
                raise ValueError("the training data yielded no batch")
    seconds = time.perf_counter() - t0
    if len(lrs) < 3:
        hint = ("stop it later" if stop_reason == "stopped by on_step"
                else f"start_lr={start_lr:g} is too high to find a valley; try a lower one")
        raise RuntimeError(f"the range test ended after {len(lrs)} step(s) ({stop_reason}): {hint}")
    idx, a, b = _suggest(lrs, smoothed)
    halves, noisy, why = _trust(lrs, losses, smoothed, beta, (a, b))
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=float(lrs[idx]), index=idx,
                          valley=(a, b), noisy=noisy, warning=why, halves=halves, stop_reason=stop_reason,
                          seconds=seconds, config=config, start_lr=float(start_lr), end_lr=float(end_lr))


def _trust(lrs: list, losses: list, smoothed: list, beta: float, valley_ab: tuple):
    """(even/odd suggestions, noisy?, why) — see the module doc."""
    n = len(lrs)
    reasons = []
    halves: tuple = (math.nan, math.nan)
    if n < MIN_POINTS:
        reasons.append(f"the test ended after {n} steps, too few to find a valley "
                       "(lower start_lr or raise num_steps)")
    else:
        picks = []
        for part in (slice(0, None, 2), slice(1, None, 2)):
            sub_lrs = lrs[part]
            # the same smoothing horizon in steps: every other point, so beta squared
            sub = smooth(losses[part], beta ** 2)
            i, _, _ = _suggest(sub_lrs, sub)
            picks.append(sub_lrs[i])
        halves = (float(picks[0]), float(picks[1]))
        apart = abs(math.log10(picks[0]) - math.log10(picks[1]))
        if apart > NOISY_DECADES:
            reasons.append(f"the even and odd steps alone suggest {picks[0]:.2g} and {picks[1]:.2g}, "
                           f"{apart:.1f} decades apart")
        a, b = valley_ab
        depth = smoothed[a] - smoothed[b]
        # step-to-step noise of the raw loss over the valley, from the median absolute first
        # difference (robust to the trend and to spikes): for independent noise of std s the
        # difference has std s*sqrt(2), and its median absolute value is 0.954*s
        jumps = sorted(abs(losses[i + 1] - losses[i]) for i in range(a, b)) or [0.0]
        noise = jumps[len(jumps) // 2] / 0.954
        if b <= a or depth <= MIN_DEPTH_TO_NOISE * noise:
            reasons.append(f"the valley is shallow: the smoothed loss falls by {depth:.3g} along it while "
                           f"the loss jumps by about {noise:.3g} from step to step")
    if not reasons:
        return halves, False, None
    return halves, True, ("the curve is too noisy to trust: " + "; ".join(reasons)
                          + ". Try a larger batch_size, more num_steps, or compare two runs near the suggestion.")
