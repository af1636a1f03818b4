"""IPython magics: a thin layer over the Python API.

``%load_ext nb_trainer`` registers ``%nbtrain``, ``%nbstop``, ``%nbruns`` and
``%nbstatus``. Everything they do, the :class:`~nb_trainer.Trainer` API does.
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
    if not records:
        return "<i>no stored runs</i>"
    rows = []
    for r in records:
        cfg = r.config
        last = r.epochs[-1] if r.epochs else {}
        metric = next((f"{k}={last[k]:.4g}" for k in ("val_accuracy", "val_r2", "val_loss", "train_loss")
                       if last.get(k) is not None), "–")
        problems = getattr(r, "problems", None)
        damage = (f"<br><span class='nbt-damaged' style='color:#cf222e'>damaged: "
                  f"{html.escape('; '.join(problems))}</span>" if problems else "")
        rows.append(f"<tr><td>{html.escape(str(r.id))}</td><td>{html.escape(cfg.optimizer)} lr={cfg.lr:.3g}</td>"
                    f"<td>{len(r.epochs)}/{cfg.epochs}</td><td>{html.escape(metric)}</td>"
                    f"<td>{html.escape(r.status)}{damage}</td></tr>")
    return ("<table><tr><th>run</th><th>config</th><th>epochs</th><th>last</th><th>status</th></tr>"
            + "".join(rows) + "</table>")


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(TrainerMagics)


def unload_ipython_extension(ipython) -> None:
    for t in all_trainers():
        t.stop()
    magics = ipython.magics_manager.magics.get("line", {})
    for name in ("nbtrain", "nbstop", "nbruns", "nbstatus"):
        magics.pop(name, None)
