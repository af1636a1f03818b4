"""One training run: the step and epoch loop, called on a worker thread.

The loop reads top to bottom: forward, loss (+ L1), backward, gradient norms,
clip, step, record. Per-step values (loss, gradient norms) stay on the device
as 0-d tensors in a list; the host reads them only when the engine *logs*
(every ``LOG_SECONDS`` or ``LOG_MAX_STEPS`` steps), so a GPU is never stalled
once a step. Stop, pause and live changes are flags checked once a step.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import events as ev
from .config import TrainConfig
from .data import Source, TaskInfo
from .health.warning import HealthWarning
from .metrics import metrics_for
from .run import Run

LOG_SECONDS = 0.25     # host sync at most this often ...
LOG_MAX_STEPS = 256    # ... or after this many steps, whichever first
PROBE_SECONDS = 1.0    # sampled diagnostics (dead units, update ratios) at least once a second ...
PROBE_SHARE = 0.01     # ... and at the start of every epoch while probes take under 1% of the time
                       # (short runs of short epochs still get a probe an epoch for the health rules)
PROBE_BATCH = 256      # examples in the fixed probe batch
VAL_BATCH = 1024       # batch size for evaluation (no gradients, so larger is cheaper)
# Per-layer gradient norms (torch._foreach_norm) read every gradient once: about 3% of a step of
# the digits MLP on one CPU thread, well under 1% of a step of a larger model or on a GPU. The
# engine times them over the first steps of a run and, when they cost more than NORM_SHARE of a
# step, takes them every k-th step (k <= NORM_MAX_STRIDE) instead of every step. The loss is
# still read at every step (the epoch's mean, divergence); the step history holds the steps whose
# norms were taken. With gradient clipping the norm is needed, so taken, at every step.
NORM_SHARE = 0.005
NORM_MAX_STRIDE = 8
NORM_CALIBRATION = (5, 25)  # steps [5, 25) of a run are timed: after the first, slower, steps

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_RELU = (nn.ReLU, nn.ReLU6)


class TrainingDataError(ValueError):
    """The data cannot be trained on (the run's warnings say why)."""


class Diverged(Exception):
    """The loss went non-finite."""


class Callback:
    """Hooks into a run, called on the training thread. They do nothing by default.

    Keep them cheap: they run between steps. ``engine.warn(w)`` records a
    warning; ``engine.request_stop(reason)`` ends the run after the current step.
    """

    def on_run_start(self, run: Run, engine: "Engine") -> None: ...
    def on_log(self, run: Run, engine: "Engine", new: dict) -> None: ...
    def on_probe(self, run: Run, engine: "Engine", probe: dict) -> None: ...
    def on_epoch_end(self, run: Run, engine: "Engine", record: dict) -> None: ...
    def on_run_end(self, run: Run, engine: "Engine") -> None: ...


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


def set_dropout(model: nn.Module, p: Optional[float], defaults: dict) -> None:
    """Set ``p`` of every dropout layer (``None``: back to the model's own)."""
    for name, m in model.named_modules():
        if isinstance(m, _DROPOUT):
            m.p = defaults.get(name, m.p) if p is None else p


def dropout_defaults(model: nn.Module) -> dict:
    return {name: m.p for name, m in model.named_modules() if isinstance(m, _DROPOUT)}


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer a config names. ``momentum`` is SGD's momentum and Adam's beta1."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer={name!r}")  # unreachable: TrainConfig validated it


def _apply_hyper(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    for group in optimizer.param_groups:
        group["lr"] = config.lr
        group["weight_decay"] = config.weight_decay
        if "betas" in group:
            group["betas"] = (config.momentum, group["betas"][1])
        elif config.optimizer == "momentum":
            group["momentum"] = config.momentum


class Engine:
    """Trains ``model`` for one run. ``run()`` blocks; call it on a worker thread."""

    def __init__(self, run: Run, model: nn.Module, train: Source, val: Optional[Source],
                 task: TaskInfo, loss_fn: Callable, initial_state: dict, bus: ev.EventBus,
                 control: RunControl, callbacks: Sequence[Callback] = (),
                 data_warnings: Sequence = (), dropout_p: Optional[dict] = None,
                 diagnostics: bool = True, cast_binary_targets: bool = False):
        self.run_ = run
        self.model = model
        self.train_src = train
        self.val_src = val
        self.task = task
        self.loss_fn = loss_fn
        self.initial_state = initial_state
        self.bus = bus
        self.control = control
        self.callbacks = list(callbacks)
        self.data_warnings = list(data_warnings)
        self.dropout_p = dropout_p or {}
        self.diagnostics = diagnostics
        self.cast_binary_targets = cast_binary_targets
        self.config = run.config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.matrices = [p for p in self.params if p.dim() > 1]
        self.device = next(iter(initial_state.values())).device if initial_state else torch.device("cpu")
        self._stop_reason = ""
        self.healthy_state: Optional[dict] = None
        self.healthy_epoch = 0
        self.best_state: Optional[dict] = None
        self.probe_batch = None
        self._last_probe_t = 0.0
        self._probe_cost = 0.0
        self._last_dead_t = -PROBE_SECONDS  # the first probe looks for dead units too
        self.norm_stride = 1               # gradient norms every this many steps (see NORM_SHARE)
        self._no_grad = torch.zeros((), device=self.device)
        self._check_weights = False        # a non-finite gradient norm was seen: check the weights
        self._norm_seconds = 0.0
        self._state_tensors: list = []
        self._reset_pending()

    # -- public to callbacks ------------------------------------------------
    def warn(self, warning: HealthWarning) -> HealthWarning:
        stored, new = self.run_.add_warning(warning)
        self.bus.publish(ev.WARNING, self.run_, warning=stored, new=new)
        return stored

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.control.request_stop()

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
                completed = self._train_epoch(epoch)
                if not completed:
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
            self._restore(self.healthy_state)
            outcome = "diverged"
            run.stop_reason = str(d)
        except TrainingDataError as e:
            outcome = "failed"
            run.error = e
        except Exception as e:  # caught once, recorded on the run, shown by the panel
            outcome = "failed"
            run.error = e
        finally:
            run.ended_at = time.time()
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

    def _setup(self) -> None:
        run, cfg, model = self.run_, self.config, self.model
        for w, fatal in self.data_warnings:
            self.warn(dataclasses.replace(w, fix=dict(w.fix)))  # each run its own copy, updated on its own
        fatal = [w for w, f in self.data_warnings if f]
        if fatal:
            raise TrainingDataError("; ".join(f"{w.code}: {w.message}" for w in fatal))
        model.load_state_dict(self.initial_state)
        set_dropout(model, cfg.dropout, self.dropout_p)
        # the CPU generator (dropout, init): torch.manual_seed would also walk the CUDA machinery
        torch.random.default_generator.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.optimizer = build_optimizer(cfg, self.params)
        run.history.layer_names = list(self.param_names)
        run.steps_per_epoch = self.train_src.num_batches(cfg.batch_size)
        self._state_tensors = list(model.state_dict().values())
        self.healthy_state = self._copy_state()
        self.healthy_epoch = 0
        model.train()

    # -- one epoch ------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> bool:
        """Train one pass; False when a stop request cut it short."""
        run, model, control = self.run_, self.model, self.control
        loss_fn, params, opt = self.loss_fn, self.params, self.optimizer
        cfg = self.config
        self._epoch_t0 = time.perf_counter()
        self._epoch_loss_sum = 0.0
        self._epoch_n = 0
        next_log = time.perf_counter() + LOG_SECONDS
        next_probe = self._epoch_probe_time()
        calib_start, calib_end = NORM_CALIBRATION
        for xb, yb in self.train_src.batches(cfg.batch_size, self.generator, shuffle=True):
            if run.step < calib_end and run.step == calib_start:
                self._calib_t0 = time.perf_counter()
            if control.pending and not self._handle_requests():
                self._log(epoch)
                return False
            cfg = self.config  # a live change may have replaced it
            if self.diagnostics and (self.probe_batch is None or (epoch == 1 and len(self.probe_batch) < PROBE_BATCH)):
                # the first PROBE_BATCH examples of the first epoch, even when batches are smaller: a unit
                # is called dead when it outputs 0 on all of them, which a few examples would say by chance
                self.probe_batch = xb[:PROBE_BATCH].detach() if self.probe_batch is None else torch.cat(
                    [self.probe_batch, xb[:PROBE_BATCH - len(self.probe_batch)].detach()])
            if self.cast_binary_targets:
                yb = yb.to(torch.get_default_dtype() if not xb.is_floating_point() else xb.dtype)

            out = model(xb)
            loss = loss_fn(out, yb)
            total_loss = loss
            if cfg.l1 > 0:
                total_loss = loss + cfg.l1 * sum(w.abs().sum() for w in self.matrices)
            for p in params:  # opt.zero_grad(set_to_none=True) without its profiler wrapper: 25 µs -> 1 µs
                p.grad = None
            total_loss.backward()

            sampled = run.step % self.norm_stride == 0 or cfg.grad_clip > 0
            if sampled:
                calibrating = calib_start <= run.step < calib_end
                t_norm = time.perf_counter() if calibrating else 0.0
                layer_norms = self._layer_norms()
                if calibrating:
                    self._norm_seconds += time.perf_counter() - t_norm
                if cfg.grad_clip > 0:
                    # the same scaling as clip_grad_norm_, without a second norm pass
                    grad_norm = torch.linalg.vector_norm(torch.stack(layer_norms))
                    torch._foreach_mul_([p.grad for p in params if p.grad is not None],
                                        (cfg.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0))

            probing = self.diagnostics and time.perf_counter() >= next_probe
            before = [w.detach().clone() for w in self.matrices] if probing else None
            opt.step()

            # stays on the device: read at the next log
            self._losses.append(loss.detach())
            if sampled:
                self._layers.append(layer_norms)
                self._sampled.append(len(self._losses) - 1)
            self._sizes.append(xb.shape[0])
            run.step += 1
            if run.step == calib_end:
                self._calibrate_norms()
            if probing:
                # dead units (a forward pass with hooks) at most once a second here; update ratios
                # (a clone and two norms) whenever a probe is due
                self._probe(epoch, before, dead_units=time.perf_counter() - self._last_dead_t >= PROBE_SECONDS)
                next_probe = time.perf_counter() + PROBE_SECONDS
            if len(self._losses) >= LOG_MAX_STEPS or time.perf_counter() >= next_log:
                self._log(epoch)
                next_log = time.perf_counter() + LOG_SECONDS
        self._log(epoch)
        return True

    def _layer_norms(self) -> list:
        """The current gradients' norms: one 0-d tensor per parameter, on the device (stacked, and
        the global norm taken, once per log). A parameter the loss did not reach has no gradient: 0,
        so the norms always line up with layer_names."""
        if not self.params:
            return [self._no_grad]
        return torch._foreach_norm([p.grad if p.grad is not None else self._no_grad for p in self.params])

    def _calibrate_norms(self) -> None:
        """Take gradient norms every k-th step when every step would cost more than NORM_SHARE."""
        steps = NORM_CALIBRATION[1] - NORM_CALIBRATION[0]
        step_seconds = (time.perf_counter() - self._calib_t0) / steps
        share = self._norm_seconds / steps / max(step_seconds, 1e-9)
        self.norm_stride = max(1, min(NORM_MAX_STRIDE, math.ceil(share / NORM_SHARE - 1e-9)))

    def _reset_pending(self) -> None:
        self._losses: list = []    # every step's loss (0-d tensors, on the device)
        self._layers: list = []    # per sampled step: the list of per-parameter gradient norms
        self._sampled: list = []   # which of the pending steps have norms (indices into _losses)
        self._sizes: list = []

    def _log(self, epoch: int) -> None:
        """Bring the pending per-step values to the host (one sync) and publish them."""
        if not self._losses:
            return
        run = self.run_
        n = len(self._losses)
        if not self._sampled or self._sampled[-1] != n - 1:
            # the gradients of the latest step are still in place: take its norms, so that the
            # history always ends at the latest step
            self._layers.append(self._layer_norms())
            self._sampled.append(n - 1)
        m = len(self._sampled)
        losses_t = torch.stack(self._losses).float()
        if m:
            layers = torch.stack([t for step in self._layers for t in step]).view(m, -1).float()
            # one transfer: every loss, then per sampled step its global and per-layer norms
            flat = torch.cat([losses_t, torch.linalg.vector_norm(layers, dim=1), layers.reshape(-1)]).tolist()
            losses, norms = flat[:n], flat[n:n + m]
            width = layers.shape[1]
            per_layer = [flat[n + m + i * width:n + m + (i + 1) * width] for i in range(m)]
        else:
            losses, norms, per_layer = losses_t.tolist(), [], []
        sampled, sizes = self._sampled, self._sizes
        lr = self.config.lr  # one lr for the pending steps: a live change logs them before it applies
        self._reset_pending()
        first_step = run.step - n + 1
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        keep = n if bad is None else bad
        for i in range(keep):
            self._epoch_loss_sum += losses[i] * sizes[i]
            self._epoch_n += sizes[i]
        rows = [j for j, i in enumerate(sampled) if i < keep]
        if not all(math.isfinite(v) for v in norms):
            self._check_weights = True
        new = {
            "step": [first_step + sampled[j] for j in rows], "epoch": [epoch] * len(rows),
            "loss": [losses[sampled[j]] for j in rows], "grad_norm": [norms[j] for j in rows],
            "lr": [lr] * len(rows), "layer_norms": [per_layer[j] for j in rows],
        }
        if rows:
            run.history.extend(**new)
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
        where = (f"the end of epoch {self.healthy_epoch}" if self.healthy_epoch else "the initial weights")
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

    def _epoch_probe_time(self) -> float:
        """When this epoch's first probe is due: at once before any probe; else once the last
        probe's cost is under PROBE_SHARE of the time since it, and PROBE_SECONDS after it at the latest."""
        if not self.run_.probes:
            return 0.0
        return self._last_probe_t + min(PROBE_SECONDS, self._probe_cost / PROBE_SHARE)

    def _probe(self, epoch: int, before: list, dead_units: bool = True) -> None:
        """Sample the costly signals: update/weight ratio per matrix, dead ReLU units."""
        run, model = self.run_, self.model
        t0 = time.perf_counter()
        ratios = []
        if before:
            deltas = torch._foreach_sub([w.detach() for w in self.matrices], before)
            num = torch.stack(torch._foreach_norm(deltas))
            den = torch.stack(torch._foreach_norm(before)).clamp(min=1e-12)
            ratios = (num / den).tolist()
        dead = {}
        relus = [(n, m) for n, m in model.named_modules() if isinstance(m, _RELU)] if dead_units else []
        if relus and self.probe_batch is not None:
            self._last_dead_t = time.perf_counter()
            outs = {}
            hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: outs.__setitem__(name, out))
                     for n, m in relus]
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    model(self.probe_batch)
            finally:
                model.train(was_training)
                for h in hooks:
                    h.remove()
            for name, out in outs.items():
                o = out.detach()
                if o.dim() >= 2:
                    # a unit (feature or channel) is dead when it outputs 0 for every example
                    units = o.transpose(0, 1).reshape(o.shape[1], -1)
                    dead[name] = {"dead_units": float((units <= 0).all(1).float().mean()),
                                  "zero_outputs": float((o <= 0).float().mean()),
                                  "units": int(o.shape[1])}
        probe = {"step": run.step, "epoch": epoch,
                 "update_ratio": dict(zip([n for n, p in zip(self.param_names, self.params) if p.dim() > 1], ratios)),
                 "dead_relu": dead, "examples": 0 if self.probe_batch is None else len(self.probe_batch)}
        run.probes.append(probe)
        if len(run.probes) > 2000:
            del run.probes[:1000:2]
        self._last_probe_t = time.perf_counter()
        self._probe_cost = self._last_probe_t - t0
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
        _apply_hyper(self.optimizer, new)
        if "dropout" in diff:
            set_dropout(self.model, new.dropout, self.dropout_p)
        run.changes.append({"step": run.step, "epoch": run.epoch,
                            "changes": {k: v[1] for k, v in diff.items()}})

    # -- epoch end ----------------------------------------------------------------
    def _end_epoch(self, epoch: int) -> None:
        run, cfg = self.run_, self.config
        # a step can leave non-finite weights while every loss seen was finite (the epoch's last
        # step, an overflowing update): such an epoch must not become the rollback checkpoint
        # Non-finite weights come from a non-finite gradient (an update from finite gradients stays
        # finite: a gradient large enough to overflow one has an infinite norm). A step's NaN/Inf
        # gradient either shows in the next step's loss or, for the epoch's last step, in its norm,
        # which _log always takes; so the weights are checked only after such a norm was seen.
        if self._check_weights and self.params and \
                not bool(torch.stack(torch._foreach_norm(self.params)).isfinite().all()):
            norms = run.history.last("grad_norm", 1)
            self._diverge(run.step, epoch, float("nan"), norms[-1] if norms else float("nan"),
                          what="the weights became non-finite")
        record = {"epoch": epoch,
                  "train_loss": self._epoch_loss_sum / self._epoch_n if self._epoch_n else float("nan")}
        if self.val_src is not None:
            record.update(self.evaluate(self.val_src))
        record["lr"] = cfg.lr
        record["seconds"] = time.perf_counter() - self._epoch_t0
        run.epochs.append(record)
        # a healthy epoch: keep its weights to roll back to
        self._copy_state(into=self.healthy_state)
        self.healthy_epoch = epoch
        watched = record.get("val_loss", record["train_loss"])
        if watched is not None and math.isfinite(watched) and (
                run.best_val_loss is None or watched < run.best_val_loss - 1e-12):
            run.best_val_loss = watched
            run.best_epoch = epoch
            self.best_state = self._copy_state(into=self.best_state)
        if self.diagnostics and (epoch in (1, (cfg.epochs + 1) // 2, cfg.epochs) or not run.probes):
            # after the first, the middle and the last epoch, however fast the run: a short run still
            # gets the probes the health rules need (dead units on two probes in a row, the final state)
            self._probe(epoch, None)
        for cb in self.callbacks:
            cb.on_epoch_end(run, self, record)
        if cfg.patience > 0 and run.best_epoch is not None and epoch - run.best_epoch >= cfg.patience:
            self._restore(self.best_state)
            reason = (f"early stopping: no val-loss improvement for {cfg.patience} epochs; "
                      f"restored the weights of epoch {run.best_epoch}")
            if epoch < cfg.epochs:
                self.request_stop(reason)
            else:  # patience ran out on the last epoch: the run finished, with the best weights
                run.stop_reason = reason
        self.bus.publish(ev.EPOCH_ENDED, run, record=record)

    def evaluate(self, source: Source, prefix: str = "val_") -> dict:
        """Loss and task metrics of the current model on ``source``."""
        model = self.model
        was_training = model.training
        model.eval()
        acc = metrics_for(self.task.task, self.task.n_classes, self.device)
        loss_sum = None
        n = 0
        try:
            with torch.no_grad():
                bs = max(VAL_BATCH, self.config.batch_size)
                for xb, yb in source.batches(bs, None, shuffle=False):
                    if self.cast_binary_targets:
                        yb = yb.to(xb.dtype if xb.is_floating_point() else torch.get_default_dtype())
                    out = model(xb)
                    batch_loss = self.loss_fn(out, yb).detach() * len(xb)
                    loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                    n += len(xb)
                    acc.update(out, yb)
        finally:
            model.train(was_training)
        result = {prefix + "loss": float(loss_sum) / n if n else float("nan")}
        result.update(acc.compute(prefix))
        return result

    # -- weights ----------------------------------------------------------------------
    def _copy_state(self, into: Optional[dict] = None) -> dict:
        if into is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # the model's state tensors are updated in place, so the list taken at setup stays current
        torch._foreach_copy_(list(into.values()), self._state_tensors)
        return into

    def _restore(self, state: Optional[dict]) -> None:
        if state is not None:
            self.model.load_state_dict(state)
