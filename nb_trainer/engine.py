"""One training run: the step and epoch loop, called on a worker thread.

The loop reads top to bottom: the step (batch -> loss, ``step.py``), L1,
backward, gradient norms, clip, optimizer step, record. Per-step values stay
on the device (``steplog.py``) and reach the host only when the engine
*logs* (every ``LOG_SECONDS`` or ``LOG_MAX_STEPS`` steps), so a GPU is never
stalled once a step. Stop, pause and live changes are flags checked once a
step. The sampled diagnostics (``probes.py``), the rollback and best weights
(``checkpoints.py``) and early stopping (``callbacks/early_stopping.py``) are
pieces the loop calls; the store and the health monitor are callbacks.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
from typing import Optional, Sequence

import torch
from torch import nn

from . import events as ev
from .allocator import keep_freed_memory
from .callbacks import Callback, EarlyStopping
from .checkpoints import Checkpoints
from .config import TrainConfig
from .data import Source, TaskInfo
from .health.warning import HealthWarning
from .optim import apply_hyper, build_optimizer, dropout_defaults, set_dropout  # noqa: F401 (re-exported)
from .precision import Precision
from .probes import PROBE_BATCH, PROBE_SECONDS, PROBE_SHARE, Probes  # noqa: F401 (re-exported)
from .run import Run
from .schedules import Schedule
from .step import Step, evaluate
from .steplog import NORM_CALIBRATION, NORM_MAX_STRIDE, NORM_SHARE, NormSampler, PendingSteps  # noqa: F401

LOG_SECONDS = 0.25     # host sync at most this often ...
LOG_MAX_STEPS = 256    # ... or after this many steps, whichever first
VAL_BATCH = 1024       # batch size for evaluation (no gradients, so larger is cheaper)


class TrainingDataError(ValueError):
    """The data cannot be trained on (the run's warnings say why)."""


class Diverged(Exception):
    """The loss went non-finite."""


class RunControl:
    """Requests from other threads, honoured at the next step."""

    def __init__(self) -> None:
        self.pending = False          # read once a step without a lock: any request waiting
        self._stop = False
        self.reason = ""              # why a stop was asked for, when the asker said (an interrupt)
        self._resume = threading.Event()
        self._resume.set()
        self._changes: dict = {}
        self._lock = threading.Lock()

    def request_stop(self, reason: str = "") -> None:
        if reason and not self._stop:
            self.reason = reason
        self._stop = True
        self.pending = True
        self._resume.set()

    def pause(self) -> None:
        self._resume.clear()
        self.pending = True

    def resume(self) -> None:
        self._resume.set()

    def change(self, changes: dict) -> None:
        with self._lock:
            self._changes.update(changes)
            self.pending = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def take_changes(self) -> dict:
        with self._lock:
            changes, self._changes = self._changes, {}
            self.pending = self._stop or not self._resume.is_set()
            return changes

    def wait_resumed(self, timeout: float) -> bool:
        return self._resume.wait(timeout)


class Engine:
    """Trains ``model`` for one run. ``run()`` blocks; call it on a worker thread."""

    def __init__(self, run: Run, model: nn.Module, train: Source, val: Optional[Source],
                 task: TaskInfo, step: Step, initial_state: dict, bus: ev.EventBus,
                 control: RunControl, callbacks: Sequence[Callback] = (),
                 data_warnings: Sequence = (), dropout_p: Optional[dict] = None,
                 diagnostics: bool = True, targets: Optional[torch.Tensor] = None):
        self.run_ = run
        self.model = model
        self.train_src = train
        self.val_src = val
        self.task = task
        self.step = step
        self.initial_state = initial_state
        self.start_state = initial_state   # a continued run starts from its parent's final weights instead
        self.bus = bus
        self.control = control
        self.callbacks = list(callbacks)
        self.data_warnings = list(data_warnings)
        self.dropout_p = dropout_p or {}
        self.diagnostics = diagnostics
        self._targets = targets
        self.config = run.config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.matrices = [p for p in self.params if p.dim() > 1]
        self.device = next(iter(initial_state.values())).device if initial_state else torch.device("cpu")
        self._stop_reason = ""
        self.checkpoints = Checkpoints(model)
        self.probes = Probes(model, step, self.params, self.param_names)
        self.norms = NormSampler(self.params, self.device)
        self.pending = PendingSteps()
        self._check_weights = False        # a non-finite gradient norm was seen: check the weights
        if run.config.patience > 0:
            self.callbacks.append(EarlyStopping(run.config.patience))

    # -- public to callbacks ------------------------------------------------
    def warn(self, warning: HealthWarning) -> HealthWarning:
        stored, new = self.run_.add_warning(warning)
        self.bus.publish(ev.WARNING, self.run_, warning=stored, new=new)
        return stored

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.control.request_stop()

    def target_sample(self) -> Optional[torch.Tensor]:
        """Targets of the first training examples (the health rules' trivial baseline), or None."""
        return self._targets

    def restore_best(self) -> None:
        """Put the best epoch's weights back into the model (early stopping)."""
        self.checkpoints.restore_best()

    @property
    def best_state(self) -> Optional[dict]:
        """The weights of the epoch with the lowest val loss (the store saves them)."""
        return self.checkpoints.best

    # -- the run --------------------------------------------------------------
    def run(self) -> Run:
        run = self.run_
        run.started_at = time.time()
        run.status = "running"
        outcome = "running"
        try:
            self._setup()
            self.bus.publish(ev.RUN_STARTED, run)
            for cb in self.callbacks:
                cb.on_run_start(run, self)
            for epoch in range(1, self.config.epochs + 1):
                run.epoch = epoch
                if not self._train_epoch(epoch):
                    break
                self._end_epoch(epoch)
                if self.control.stop_requested:
                    break
            if self.control.stop_requested:
                outcome = "stopped"
                run.stop_reason = self._stop_reason or self.control.reason or "stopped by the user"
            else:
                outcome = "finished"
        except Diverged as d:
            self.checkpoints.restore_healthy()
            outcome = "diverged"
            run.stop_reason = str(d)
        except Exception as e:  # caught once, recorded on the run, shown by the panel
            outcome = "failed"
            run.error = e
        finally:
            run.ended_at = time.time()
            self._keep_final_state(outcome)
            # the end hooks (the final health verdict, the store's last write) read the outcome; the
            # status shows it only once they are done, so whoever polls run.status until it is no
            # longer "running" then reads the run's final warnings
            run.outcome = outcome
            for cb in self.callbacks:
                try:
                    cb.on_run_end(run, self)
                except Exception as e:  # the run's outcome stands; the callback's failure is shown
                    if run.error is None and outcome != "failed":
                        run.error = e
            run.status = outcome
            run._done.set()
            self.bus.publish(ev.RUN_ENDED, run)
        return run

    def _keep_final_state(self, outcome: str) -> None:
        """The weights the run ends with, on the CPU: a later run can continue from them."""
        run = self.run_
        if outcome in ("failed", "running"):
            return
        run.final_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if outcome == "diverged":
            run.final_epoch = self.checkpoints.healthy_epoch
        elif run.stop_reason.startswith("early stopping"):
            run.final_epoch = run.best_epoch
        else:
            run.final_epoch = len(run.epochs)

    def _setup(self) -> None:
        run, cfg, model = self.run_, self.config, self.model
        for w, fatal in self.data_warnings:
            self.warn(dataclasses.replace(w, fix=dict(w.fix)))  # each run its own copy, updated on its own
        fatal = [w for w, f in self.data_warnings if f]
        if fatal:
            raise TrainingDataError("; ".join(f"{w.code}: {w.message}" for w in fatal))
        model.load_state_dict(self.start_state)
        if self.params and self.params[0].device.type == "cpu":
            keep_freed_memory()     # a CPU step reuses the memory the last one freed (allocator.py)
        set_dropout(model, cfg.dropout, self.dropout_p)
        # the CPU generator (dropout, init): torch.manual_seed would also walk the CUDA machinery
        torch.random.default_generator.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.optimizer = build_optimizer(cfg, self.params)
        self.precision = Precision(cfg.precision, self.device)
        if self.precision.scaled:
            self.norms.stride_fixed = True  # every step's norm: a skipped step shows in it (see precision.py)
        run.history.layer_names = list(self.param_names)
        batches = self.train_src.num_batches(cfg.batch_size)
        # optimizer steps: a group of `accumulate` batches is one step, the epoch's last group may be shorter
        run.steps_per_epoch = None if batches is None else -(-batches // cfg.accumulate)
        self.schedule = Schedule(cfg, None if batches is None else run.steps_per_epoch * cfg.epochs)
        self.base_lr = cfg.lr
        self._last_lr = cfg.lr
        self.checkpoints.start()
        if not self.diagnostics:
            self.probes.stop_collecting()
        model.train()

    # -- one epoch ------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> bool:
        """Train one pass; False when a stop request cut it short.

        Each optimizer step: ``accumulate`` batches of forward, loss (+ L1) and backward (their
        gradients summed, weighted by batch size), then unscale (float16), gradient norms, clip,
        the scheduled lr, the optimizer step, and the step's values kept on the device."""
        run, model, control, step = self.run_, self.model, self.control, self.step
        params, opt, probes, norms, amp = self.params, self.optimizer, self.probes, self.norms, self.precision
        k = self.config.accumulate
        self._epoch_t0 = time.perf_counter()
        self._epoch_loss_sum = 0.0
        self._epoch_n = 0
        self._epoch_norms: list[float] = []     # the epoch's logged gradient norms: its record keeps their median
        next_log = time.perf_counter() + LOG_SECONDS
        next_probe = probes.epoch_due_time()
        group = 0                      # batches in the current accumulation group
        group_loss, group_n = None, 0  # their loss summed over examples (on the device), examples
        batches = self.train_src.batches(self.config.batch_size, self.generator, shuffle=True)
        # the lookahead that finds an epoch's last, shorter, group is needed only when accumulating
        for item in (_with_last(batches) if k > 1 else batches):
            batch, last = item if k > 1 else (item, False)
            if group == 0:
                if control.pending and not self._handle_requests():
                    self._log(epoch)
                    return False
                cfg = self.config  # a live change may have replaced it
                norms.step_started(run.step)
                for p in params:  # opt.zero_grad(set_to_none=True) without its profiler wrapper: 25 µs -> 1 µs
                    p.grad = None
            if epoch == 1:
                probes.collect(batch)

            if amp.dtype is None:
                loss, _, _, n = step(model, batch)
            else:
                with amp.autocast():
                    loss, _, _, n = step(model, batch)
            total_loss = loss + cfg.l1 * sum(w.abs().sum() for w in self.matrices) if cfg.l1 > 0 else loss
            if k > 1:
                # summed over examples here, divided by the group's examples before the step: the
                # gradient of the mean over the effective batch, also for a shorter last group
                total_loss = total_loss * n
                group_loss = loss.detach() * n if group_loss is None else group_loss + loss.detach() * n
                group_n += n
            if amp.scaled:
                amp.backward(total_loss)
            else:
                total_loss.backward()
            group += 1
            if group < k and not last:
                continue
            if k > 1:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / group_n)
                loss, n = group_loss / group_n, group_n
            group, group_loss, group_n = 0, None, 0

            if amp.scaled:
                amp.unscale(opt)
            layer_norms = norms.take(run.step, needed=cfg.grad_clip > 0 or amp.scaled)
            if cfg.grad_clip > 0:
                self._clip(layer_norms, cfg.grad_clip)
            lr = self.base_lr if self.schedule.constant else self._scheduled_lr(run.step)
            probing = self.diagnostics and time.perf_counter() >= next_probe
            before = probes.before_update() if probing else None
            if amp.scaled:
                amp.step(opt)   # the scaler's step: skipped when the unscaled gradients hold Inf/NaN
            else:
                opt.step()

            self.pending.add(loss, layer_norms, n, lr)  # stays on the device: read at the next log
            run.step += 1
            norms.step_done(run.step)
            if probing:
                # dead units (a forward pass with hooks) at most once a second; update ratios
                # (a clone and two norms) whenever a probe is due
                self._probe(epoch, before, dead_units=probes.dead_units_due())
                next_probe = time.perf_counter() + PROBE_SECONDS
            if len(self.pending) >= LOG_MAX_STEPS or time.perf_counter() >= next_log:
                self._log(epoch)
                next_log = time.perf_counter() + LOG_SECONDS
        self._log(epoch)
        return True

    def _scheduled_lr(self, t: int) -> float:
        """Put the schedule's lr (and onecycle's momentum) for optimizer step ``t`` into the optimizer."""
        sched = self.schedule
        if sched.constant:
            return self.base_lr
        lr = self.base_lr * sched.factor(t)
        momentum = sched.momentum(t)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
            if momentum is not None:
                if "betas" in g:
                    g["betas"] = (momentum, g["betas"][1])
                else:
                    g["momentum"] = momentum
        self._last_lr = lr
        return lr

    def _clip(self, layer_norms: list, max_norm: float) -> None:
        # the same scaling as clip_grad_norm_, from the norms already taken (no second pass)
        grad_norm = torch.linalg.vector_norm(torch.stack(layer_norms))
        torch._foreach_mul_([p.grad for p in self.params if p.grad is not None],
                            (max_norm / (grad_norm + 1e-6)).clamp(max=1.0))

    def _log(self, epoch: int) -> None:
        """Bring the pending per-step values to the host (one sync) and publish them."""
        if not len(self.pending):
            return
        run = self.run_
        n = len(self.pending)
        losses, sampled, norms, per_layer, sizes, lrs = self.pending.read(self.norms.norms)
        first_step = run.step - n + 1
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        keep = n if bad is None else bad
        for i in range(keep):
            self._epoch_loss_sum += losses[i] * sizes[i]
            self._epoch_n += sizes[i]
        rows = [j for j, i in enumerate(sampled) if i < keep]
        if self.precision.scaled:
            # float16: a non-finite (unscaled) norm is a step the gradient scaler skipped, not an
            # exploding gradient: counted, and left out of the history the health rules read
            skipped = [j for j in rows if not math.isfinite(norms[j])]
            run.skipped_steps += len(skipped)
            rows = [j for j in rows if math.isfinite(norms[j])]
        elif not all(math.isfinite(v) for v in norms):
            self._check_weights = True
        new = {
            "step": [first_step + sampled[j] for j in rows], "epoch": [epoch] * len(rows),
            "loss": [losses[sampled[j]] for j in rows], "grad_norm": [norms[j] for j in rows],
            "lr": [lrs[sampled[j]] for j in rows], "layer_norms": [per_layer[j] for j in rows],
        }
        if rows:
            run.history.extend(**new)
            self._epoch_norms.extend(v for v in new["grad_norm"] if math.isfinite(v))
            if len(self._epoch_norms) > 4096:
                del self._epoch_norms[::2]      # a long epoch: every other one, the median about the same
        if bad is not None:
            before = [norms[j] for j, i in enumerate(sampled) if i <= bad]
            self._diverge(first_step + bad, epoch, losses[bad], before[-1] if before else float("nan"))
        for cb in self.callbacks:
            cb.on_log(run, self, new)
        self.bus.publish(ev.LOGGED, run, n=keep)

    def _diverge(self, step: int, epoch: int, loss: float, grad_norm: float,
                 what: Optional[str] = None) -> None:
        run = self.run_
        cfg = self.config
        recent = run.history.last("loss", 50)
        finite = [v for v in recent if math.isfinite(v)]
        seen = (f"; the loss was still {finite[-1]:.4g}" if what else f"; it was {finite[-1]:.4g} just before") \
            if finite else ""
        healthy = self.checkpoints.healthy_epoch
        where = (f"the end of epoch {healthy}" if healthy else "the initial weights")
        fix = {"lr": max(cfg.lr / 10, 1e-7)}
        if cfg.grad_clip == 0:
            fix["grad_clip"] = 1.0
        self.warn(HealthWarning(
            code="nan_loss", severity="error",
            message=(f"{what or f'the loss became {loss}'} at step {step} (epoch {epoch}){seen}; the gradient norm "
                     f"was {grad_norm:.3g}. Training stopped and the weights were rolled back to {where}"),
            suggestion=f"lower the learning rate to {fix['lr']:.3g}"
                       + (" and clip gradients at 1.0" if "grad_clip" in fix else "")
                       + "; if it persists, check the data and the loss for values that overflow",
            fix=fix, step=step, epoch=epoch))
        raise Diverged(f"{'weights' if what else 'loss'} became non-finite at step {step}; rolled back to {where}")

    def _probe(self, epoch: int, before: Optional[list], dead_units: bool = True) -> None:
        run = self.run_
        probe = self.probes.take(run.step, epoch, before, dead_units=dead_units)
        run.probes.append(probe)
        if len(run.probes) > 2000:
            del run.probes[:1000:2]
        for cb in self.callbacks:
            cb.on_probe(run, self, probe)

    # -- requests from other threads -------------------------------------------
    def _handle_requests(self) -> bool:
        """Apply live changes; wait while paused. False: stop now."""
        run, control = self.run_, self.control
        changes = control.take_changes()
        if changes:
            self._apply_changes(changes)
        if control.paused and not control.stop_requested:
            self._log(run.epoch)
            run.status = "paused"
            self.bus.publish(ev.LOGGED, run, n=0)
            while not control.wait_resumed(0.1):
                pass
            if not control.stop_requested:
                run.status = "running"
                self.bus.publish(ev.LOGGED, run, n=0)
            changes = control.take_changes()
            if changes:
                self._apply_changes(changes)
        return not control.stop_requested

    def _apply_changes(self, changes: dict) -> None:
        run = self.run_
        new = self.config.replace(**changes)
        diff = self.config.diff(new)
        if not diff:
            return
        self._log(run.epoch)  # the steps so far, with the values they were taken with
        self.config = run.config = new
        apply_hyper(self.optimizer, new)
        if "dropout" in diff:
            set_dropout(self.model, new.dropout, self.dropout_p)
        change = {"step": run.step, "epoch": run.epoch, "changes": {k: v[1] for k, v in diff.items()}}
        if "lr" in diff:
            self.base_lr = new.lr
            if not self.schedule.constant:
                # the slider sets the schedule's peak: its shape goes on, scaled, from this step
                change["note"] = (f"{new.schedule} schedule rescaled ×{new.lr / diff['lr'][0]:.3g} from step "
                                  f"{run.step}")
            self._last_lr = self._scheduled_lr(run.step)
        run.changes.append(change)

    # -- epoch end ----------------------------------------------------------------
    def _end_epoch(self, epoch: int) -> None:
        run, cfg = self.run_, self.config
        self._check_finite_weights(epoch)
        record = {"epoch": epoch,
                  "train_loss": self._epoch_loss_sum / self._epoch_n if self._epoch_n else float("nan")}
        if self.val_src is not None:
            record.update(self.evaluate(self.val_src))
        if self._epoch_norms:
            # what a stored run (no per-step history) draws its gradient norm from, one point an epoch
            record["grad_norm"] = float(statistics.median(self._epoch_norms))
        record["lr"] = self._last_lr
        record["seconds"] = time.perf_counter() - self._epoch_t0
        run.epochs.append(record)
        if self.schedule.epoch_end(record.get("val_loss", record["train_loss"])):
            self._last_lr = self._scheduled_lr(run.step)  # plateau: the next epoch trains at lr / 10
        # a healthy epoch: its weights are the ones to roll back to, and the best when its val loss is
        if self.checkpoints.epoch_end(epoch, record.get("val_loss", record["train_loss"])):
            run.best_val_loss, run.best_epoch = self.checkpoints.best_value, epoch
        if self.diagnostics and (epoch in (1, (cfg.epochs + 1) // 2, cfg.epochs) or not run.probes):
            # after the first, the middle and the last epoch, however fast the run: a short run still
            # gets the probes the health rules need (dead units on two probes in a row, the final state)
            self._probe(epoch, None)
        for cb in self.callbacks:
            cb.on_epoch_end(run, self, record)
        self.bus.publish(ev.EPOCH_ENDED, run, record=record)

    def _check_finite_weights(self, epoch: int) -> None:
        """A step can leave non-finite weights while every loss seen was finite (the epoch's last
        step, an overflowing update): such an epoch must not become the rollback checkpoint.

        Non-finite weights come from a non-finite gradient (an update from finite gradients stays
        finite: a gradient large enough to overflow one has an infinite norm). A step's NaN/Inf
        gradient either shows in the next step's loss or, for the epoch's last step, in its norm,
        which the log always takes; so the weights are checked only after such a norm was seen."""
        if self._check_weights and self.params and \
                not bool(torch.stack(torch._foreach_norm(self.params)).isfinite().all()):
            norms = self.run_.history.last("grad_norm", 1)
            self._diverge(self.run_.step, epoch, float("nan"), norms[-1] if norms else float("nan"),
                          what="the weights became non-finite")

    def evaluate(self, source: Source, prefix: str = "val_") -> dict:
        """Loss and task metrics of the current model on ``source``."""
        bs = max(VAL_BATCH, self.config.batch_size)
        return evaluate(self.step, self.model, source.batches(bs, None, shuffle=False), self.task,
                        self.device, prefix, autocast=self.precision.autocast)


def _with_last(iterable):
    """``(item, is_last)`` for each item (one item of lookahead)."""
    it = iter(iterable)
    try:
        item = next(it)
    except StopIteration:
        return
    for following in it:
        yield item, False
        item = following
    yield item, True
