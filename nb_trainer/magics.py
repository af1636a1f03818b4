"""IPython magics: a thin layer over the Python API.

``%load_ext nb_trainer`` registers ``%nbtrain``, ``%nbstop``, ``%nbruns``,
``%nbstatus`` and ``%nbsweep``. Everything they do, the :class:`~nb_trainer.Trainer` API does.
"""
from __future__ import annotations

import html
import sqlite3

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import HTML, display

from .config import FIELDS, TrainConfig
from .metrics import LOSSES
from .session import TASK_CHOICES, Trainer, all_trainers
from .sweep.space import Domain


def _option(spec):
    """Parse one TrainConfig option from its text, checked against the field's spec."""
    def parse(text: str):
        if spec.kind == "choice":
            return text
        if spec.nullable and text.lower() == "none":
            return None
        try:
            if spec.kind == "int":
                try:
                    return int(text)
                except ValueError:
                    # "1e3" as the Python API takes 1e3: a float with an integer value (TrainConfig checks)
                    return float(text)
            return float(text)
        except ValueError:
            raise UsageError(f"--{spec.name} {text!r}: {spec.name} must be {spec.accepted()}") from None
    parse.__name__ = spec.name
    return parse


def _config_arguments(func):
    for spec in reversed(list(FIELDS.values())):
        func = argument(f"--{spec.name}", type=_option(spec), default=None,
                        help=f"{spec.help} ({spec.accepted()})".replace("%", "%%"))(func)
    return func


def _sweep_arguments(func):
    for spec in reversed(list(FIELDS.values())):
        func = argument(f"--{spec.name}", default=None,
                        help=f"{spec.help}: low:high, a,b,c or one value ({spec.accepted()})".replace("%", "%%"))(func)
    return func


def _sweep_value(spec, text: str):
    """One %nbsweep option: ``low:high`` a sampled range, ``a,b,c`` a grid axis, else a fixed value."""
    from .sweep import loguniform, uniform
    parse = _option(spec)
    if ":" in text:
        if spec.kind == "choice":
            raise ValueError(f"--{spec.name} {text!r}: {spec.name} takes {spec.accepted()}; list values as a,b")
        low, _, high = text.partition(":")
        low, high = parse(low.strip()), parse(high.strip())
        return loguniform(low, high) if spec.log else uniform(low, high)
    if "," in text:
        return [parse(v.strip()) for v in text.split(",") if v.strip()]
    return parse(text)


@magics_class
class TrainerMagics(Magics):
    """Magics of nb_trainer."""

    @magic_arguments()
    @argument("model", help="the model: a name or expression in the notebook's namespace")
    @argument("train", help="training data: (X, y), a Dataset or a DataLoader (a name or expression)")
    @argument("val", nargs="?", default=None, help="validation data, same kinds as train (optional)")
    @argument("--task", default="auto", choices=TASK_CHOICES, help="what the model predicts (default: auto)")
    @argument("--loss", default=None, help="loss name (cross_entropy, bce, mse, mae, huber) or an expression")
    @argument("--store", default=".nb_trainer", help="folder for run records; 'none' keeps nothing on disk")
    @argument("--target", default=None, help="the key of the target in dict batches (default: labels, label, "
              "target, targets or y, the first present)")
    @argument("--inputs", default=None, type=int, help="how many leading elements of a tuple batch are inputs "
              "(default: from the model's forward signature)")
    @argument("--step", default=None, help="a function step(model, batch) -> loss | (loss, outputs, targets) "
              "(a name or expression)")
    @argument("--no-start", action="store_true", help="show the panel without starting a run")
    @argument("--no-panel", action="store_true", help="do not display the panel")
    @_config_arguments
    @line_magic
    def nbtrain(self, line: str = ""):
        """Show the training panel for MODEL on TRAIN [VAL] and start a run.

        Usage::

            t = %nbtrain model train val --lr 3e-3 --optimizer adamw --epochs 20

        MODEL, TRAIN and VAL are names or expressions in the notebook's
        namespace (no spaces inside an expression; quote it otherwise). Every
        TrainConfig field is an option. Returns the Trainer, so
        ``t = %nbtrain ...`` keeps it for the Python API.
        """
        try:
            args = parse_argstring(self.nbtrain, line)
        except UsageError:
            raise
        except SystemExit:
            raise UsageError(f"could not parse %nbtrain arguments: {line!r}; see %nbtrain?") from None
        model = self._lookup(args.model, "MODEL")
        train = self._lookup(args.train, "TRAIN")
        val = None if args.val is None else self._lookup(args.val, "VAL")
        loss = args.loss
        if loss is not None and loss.lower() not in LOSSES:
            loss = self._lookup(loss, "--loss")
        store = None if str(args.store).lower() == "none" else args.store
        step = None if args.step is None else self._lookup(args.step, "--step")
        options = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
        try:
            TrainConfig.from_dict(options)
            trainer = Trainer(model, train, val, task=args.task, loss=loss, store=store, target=args.target,
                              inputs=args.inputs, step=step, **options)
        except (ValueError, TypeError) as e:
            raise UsageError(str(e)) from None
        if not args.no_panel:
            display(trainer.panel())
        if not args.no_start:
            trainer.start()
        return trainer

    def _lookup(self, expr: str, what: str):
        ns = self.shell.user_ns
        if expr in ns:
            return ns[expr]
        try:
            return eval(expr, ns)  # noqa: S307 - the user's own expression in their own namespace
        except Exception as e:
            raise UsageError(f"{what} {expr!r} is not a name or expression in the notebook: "
                             f"{type(e).__name__}: {e}") from None

    @magic_arguments()
    @argument("trainer", nargs="?", default=None, help="a Trainer (name); default: every Trainer")
    @line_magic
    def nbstop(self, line: str = ""):
        """Stop the current run of TRAINER, or of every Trainer."""
        args = parse_argstring(self.nbstop, line)
        trainers = [self._trainer(args.trainer)] if args.trainer else all_trainers()
        for t in trainers:
            t.stop()
        for t in trainers:
            t.wait(timeout=10)
        return None

    @magic_arguments()
    @argument("trainer", help="the Trainer (a name in the notebook)")
    @argument("--trials", type=int, default=None, help="trials in all (a multiple of the grid's size)")
    @argument("--parallel", type=int, default=None, help="trials at a time (default: the cluster's CPUs)")
    @argument("--scheduler", default="asha", choices=("asha", "fifo"),
              help="asha stops weak trials early; fifo runs every trial to its last epoch")
    @argument("--address", default=None, help="a Ray cluster: 'auto' or 'ray://host:port' (default: a local Ray)")
    @_sweep_arguments
    @line_magic
    def nbsweep(self, line: str = ""):
        """Sweep TRAINER's settings on Ray Tune, like ``t.sweep(...)``; returns the Sweep.

        Usage::

            sw = %nbsweep t --lr 1e-4:1e-1 --weight_decay 0,1e-4,1e-3 --trials 12 --parallel 2

        Every TrainConfig field is an option: ``low:high`` samples it (on a log scale for the fields
        the panel shows on a log slider: lr, weight_decay, l1, grad_clip, batch_size), ``a,b,c`` is a grid
        axis, one value fixes it. The panel's Sweep section shows the trials as they train.
        """
        try:
            args = parse_argstring(self.nbsweep, line)
        except SystemExit:
            raise UsageError(f"could not parse %nbsweep arguments: {line!r}; see %nbsweep?") from None
        trainer = self._trainer(args.trainer)
        space, fixed = {}, {}
        try:
            for name, spec in FIELDS.items():
                text = getattr(args, name)
                if text is None:
                    continue
                value = _sweep_value(spec, text)
                if isinstance(value, (list, Domain)):
                    space[name] = value
                else:
                    fixed[name] = value
            if not space:
                raise ValueError("give at least one setting to sweep, e.g. --lr 1e-4:1e-1 or --weight_decay 0,1e-4")
            return trainer.sweep(space, trials=args.trials, parallel=args.parallel, scheduler=args.scheduler,
                                 address=args.address, **fixed)
        except (ValueError, TypeError) as e:
            raise UsageError(str(e)) from None

    def _trainer(self, name: str) -> Trainer:
        obj = self._lookup(name, "TRAINER")
        if not isinstance(obj, Trainer):
            raise UsageError(f"{name!r} is a {type(obj).__name__}, not an nb_trainer Trainer")
        return obj

    @magic_arguments()
    @argument("trainer", nargs="?", default=None, help="a Trainer (name); default: every Trainer")
    @argument("--all", action="store_true", help="also runs from earlier kernels, read from the store")
    @argument("--store", default=".nb_trainer", help="the store folder --all reads")
    @line_magic
    def nbruns(self, line: str = ""):
        """Show a table of runs: this kernel's (of TRAINER or every Trainer), or --all from the store."""
        args = parse_argstring(self.nbruns, line)
        from .ui.status import runs_table_html
        if args.all:
            from .store import load_runs
            try:
                records = load_runs(args.store)
            except (OSError, ValueError, TypeError, sqlite3.Error) as e:   # no store, a damaged database
                raise UsageError(f"%nbruns --all: {e}") from None
            display(HTML(_records_table(records)))
            return None
        trainers = [self._trainer(args.trainer)] if args.trainer else all_trainers()
        if not trainers:
            display(HTML("<i>no Trainer in this kernel</i>"))
        for t in trainers:
            display(HTML(f"<b>{html.escape(repr(t))}</b>" + runs_table_html(t.runs, t.task, limit=1000)))
        return None

    @magic_arguments()
    @argument("trainer", nargs="?", default=None, help="a Trainer (name); default: every Trainer")
    @line_magic
    def nbstatus(self, line: str = ""):
        """Say what each Trainer is doing: its current run, progress and warnings."""
        args = parse_argstring(self.nbstatus, line)
        from .ui.status import progress, status_html, warning_html
        trainers = [self._trainer(args.trainer)] if args.trainer else all_trainers()
        if not trainers:
            display(HTML("<i>no Trainer in this kernel</i>"))
        for t in trainers:
            run = t.current
            parts = [f"<b>{html.escape(repr(t))}</b>", status_html(run)]
            if run is not None:
                parts.append(html.escape(progress(run)[2]))
                parts.extend(warning_html(w) for w in run.warnings)
            display(HTML("<div>" + "<br>".join(parts) + "</div>"))
        return None


def _records_table(records) -> str:
    """The stored runs, in the panel's columns (config, epochs, best metric, status), one table per
    model (fingerprint) and task, newest first, each numbered as the store keeps them."""
    if not records:
        return "<i>no stored runs</i>"
    from .ui.status import runs_table_html
    groups: dict = {}
    for r in records:
        groups.setdefault((getattr(r, "fingerprint", None), r.task, r.model), []).append(r)
    parts = []
    for (_, task, model), runs in groups.items():
        parts.append(f"<div><b>{html.escape(model or 'model')}</b> ({html.escape(task or '?')}, "
                     f"{len(runs)} run{'s' if len(runs) != 1 else ''}, oldest {html.escape(str(runs[0].id))})</div>"
                     + runs_table_html(runs, task, limit=1000, label=lambda i, r: f"#{i + 1} {r.id}" + (f" (sweep {r.sweep})" if getattr(r, "sweep", None) else "")))
    damaged = [r for r in records if getattr(r, "problems", None)]
    for r in damaged:  # read in part: say what could not be read
        parts.append(f"<div class='nbt-damaged' style='color:#cf222e'>run {html.escape(str(r.id))} damaged: "
                     f"{html.escape('; '.join(r.problems))}</div>")
    return "".join(parts)


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(TrainerMagics)
    from .ui.kernel import install
    install(ipython)       # Kernel › Interrupt stops training from now on


def unload_ipython_extension(ipython) -> None:
    for t in all_trainers():
        t.stop()
    from .ui.kernel import uninstall
    uninstall(ipython)
    magics = ipython.magics_manager.magics.get("line", {})
    for name in ("nbtrain", "nbstop", "nbruns", "nbstatus", "nbsweep"):
        magics.pop(name, None)
