"""What the panel installs in the IPython kernel: the interrupt, and the saved rendering's updates.

* **Interrupt** (Kernel › Interrupt, the toolbar's ■). It reaches the kernel as SIGINT. While
  the kernel is idle, ipykernel ignores SIGINT, so a run training in the background went on:
  a handler installed here as the idle kernel's (the one ipykernel puts back after each
  request) asks every training run to stop, reason "interrupted from the notebook", then does
  what the handler it replaced did (nothing). While a cell runs, ipykernel's own handler raises
  ``KeyboardInterrupt`` in it, and is left alone, so the traceback is the user's code as
  always: a cell that ends by ``KeyboardInterrupt`` stops every training run (``post_run_cell``),
  and a cell blocked in ``Trainer.wait()`` ends with one line instead of a traceback (see
  :mod:`nb_trainer.interrupt`).
* **Saved rendering.** After each cell (``post_run_cell``), every displayed panel whose runs
  changed brings its static rendering up to date (:mod:`nb_trainer.ui.static`): an update sent
  while a cell runs reaches every frontend, nbclient included; the panel's own thread sends one
  as soon as a run ends, which JupyterLab and Notebook 7 take also between cells.
"""
from __future__ import annotations

import logging
import signal
import threading
import weakref

from .. import interrupt

log = logging.getLogger(__name__)

_panels: "weakref.WeakSet" = weakref.WeakSet()
STATIC_WAIT_S = 10.0      # post_run_cell waits at most this long for a run's final frame


class _SigintHandler:
    """Stop every training run, then chain to ``previous`` (what SIGINT did before)."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, signum, frame):
        from ..session import all_trainers
        interrupt.stop_all(all_trainers())
        previous = self.previous
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_DFL:
            raise KeyboardInterrupt
        return None                     # SIG_IGN: the idle kernel ignores it, as before


def _ours(handler) -> bool:
    return isinstance(handler, _SigintHandler)


def install(shell) -> None:
    """Install the hooks in ``shell`` (an IPython shell) once; call from the main thread."""
    if shell is None or getattr(shell, "_nbt_kernel_hooks", False):
        return
    shell.events.register("post_run_cell", _post_run_cell)
    _install_idle_handler(shell)
    shell._nbt_kernel_hooks = True


def uninstall(shell) -> None:
    if shell is None or not getattr(shell, "_nbt_kernel_hooks", False):
        return
    try:
        shell.events.unregister("post_run_cell", _post_run_cell)
    except ValueError:
        pass
    kernel = getattr(shell, "kernel", None)
    saved = getattr(kernel, "saved_sigint_handler", None)
    if _ours(saved):
        kernel.saved_sigint_handler = saved.previous
    shell._nbt_kernel_hooks = False


def _install_idle_handler(shell) -> None:
    # ipykernel sets its own handler around each request and puts back the one it saved:
    # replacing the saved one makes ours the handler of the idle kernel
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "saved_sigint_handler"):
        saved = kernel.saved_sigint_handler
        if not _ours(saved):
            kernel.saved_sigint_handler = _SigintHandler(saved)


def attach(panel) -> None:
    """``panel`` was displayed: keep its saved rendering up to date after each cell."""
    from IPython import get_ipython
    shell = get_ipython()
    if shell is None:
        return
    if threading.current_thread() is threading.main_thread():
        install(shell)
    _panels.add(panel)


def _post_run_cell(result=None) -> None:
    if isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
        from ..session import all_trainers
        interrupt.stop_all(all_trainers())
    for panel in list(_panels):
        try:
            panel.publish_static(wait=STATIC_WAIT_S)
        except Exception:  # a failed update must not break the user's cell
            log.exception("nb_trainer: updating a panel's saved rendering failed")
