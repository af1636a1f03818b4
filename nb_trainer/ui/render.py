"""Drawing the live figure where it cannot slow training: one renderer process per kernel.

A 4-panel matplotlib frame costs 10–300 ms of CPU and holds the GIL the whole
time; drawn in the kernel it takes that time from the training thread. So
panels hand decimated snapshots (:func:`nb_trainer.ui.figure.snapshot`) to a
long-lived renderer process and get PNG bytes back. In the kernel a frame
costs only the snapshot and the send (about a millisecond).

Usage (what the panel does)::

    from nb_trainer.ui import figure, render
    renderer = render.get_renderer()          # shared by every panel; starts the process
    seq = renderer.submit(key, figure.snapshot(trainer.runs, trainer.task), size=(720, 440),
                          callback=lambda png: image.set_trait("value", png))
    png = renderer.poll(key)                  # newest finished frame for key, or None
    png = renderer.wait(key, seq, timeout=5)  # block until frame `seq` (or a newer one) is done

Behaviour:

* ``submit`` never blocks. Per key the newest snapshot wins: snapshots that
  arrive while a frame is being drawn replace each other, and only the last
  one is drawn. A snapshot whose ``stamp`` and size equal the last one
  submitted for the key is skipped (``submit`` returns None).
* ``callback(png)`` runs on the renderer's I/O thread (not the caller's)
  after each frame for its key; setting a widget trait there is fine, calling
  ``wait`` there is not (it would wait for itself).
* Snapshots are read, never changed: do not modify one after submitting it.
* The process is started with the "spawn" method and runs
  :func:`_child_main` of this module (this module imports neither torch nor
  matplotlib at its top). It exits when its pipe to the kernel closes, when
  its parent process is gone (checked every second: also after SIGKILL), or
  on :meth:`Renderer.close`. It ignores SIGINT, so "interrupt kernel" (sent to
  the kernel's process group) does not kill it. It runs at a lower priority
  (nice 5): where the cores are busy, training gets most of them.
* The process takes about a second to start (spawn, matplotlib's import).
  Frames asked for meanwhile are drawn in the kernel (within the in-process
  budget below), so a panel shows its first real frame at once instead of
  after the process is up; the first run of a fresh kernel is plotted live.
* A panel's very first frame is also drawn in the kernel when the renderer has
  not answered within :data:`FIRST_FRAME_PATIENCE` (a busy machine starves it).
  That is rare: a new figure's first draw costs 0.6-1 s, a redraw ~0.15 s, so the
  renderer keeps a figure drawn once ready for the next new panel (its warm-up's
  at the start, a closed panel's, or another after :data:`SPARE_IDLE_SECONDS` idle).
* A renderer process that dies is reaped and a new one started for the next
  frame (the frame that was lost is drawn again). If processes cannot be
  started, or die more than :data:`MAX_RESTARTS` times in a minute, frames are
  drawn in the kernel on the I/O thread instead, at an adaptive rate that
  keeps drawing under :data:`INPROCESS_BUDGET` of wall time in the long run
  (a leaky bucket of the drawing thread's CPU time; ``mode`` then reads
  "inprocess"). With 10–25 ms blitted frames that is a frame every 0.3–0.8 s.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Any, Callable, Hashable, Optional

log = logging.getLogger(__name__)

DEFAULT_SIZE = (720, 440)
MAX_FIGURES = 8             # figures (panels) the renderer keeps; older ones are rebuilt when needed
START_TIMEOUT = 60.0        # spawn + matplotlib import, on a loaded 2-core machine
FRAME_TIMEOUT = 30.0        # a renderer silent this long on one frame is killed and restarted
MAX_RESTARTS = 3            # deaths within RESTART_WINDOW seconds before drawing in-process instead
RESTART_WINDOW = 60.0
INPROCESS_BUDGET = 0.03     # in-process drawing: at most this share of wall time in the long run,
INPROCESS_BURST = 0.3       # after a burst of this many CPU seconds (the first, full draw) ...
INPROCESS_MIN_INTERVAL = 0.25   # ... and at most 4 frames per second
PARENT_CHECK_SECONDS = 1.0
# a key's first frame is drawn in the kernel if the renderer takes longer. The renderer draws a new
# panel's first frame in 0.15-0.25 s on a spare figure and 0.5-0.6 s on a new one (panels made one
# after another leave it no idle time for a spare); drawn in the kernel, the same frame is a new
# figure there (0.6-1.0 s of CPU, holding the GIL: the training thread all but stops meanwhile).
# At 0.4 s the kernel drew it whenever the renderer had no spare, and the renderer's copy came later
# for it (1.1-1.5 s): a panel made right after another cost 8-10% of its 3 runs' throughput
FIRST_FRAME_PATIENCE = 0.8
RENDERER_NICE = 5           # the renderer process runs at a lower priority than the kernel
MAX_SPARES = 2              # figures kept drawn for new panels (a closed panel's, or made while idle)
SPARE_IDLE_SECONDS = 2.0    # the renderer idle this long (no run is drawing) makes a spare figure for the next new panel


def render_png(snapshot: dict, size: tuple[int, int] = DEFAULT_SIZE, scale: float = 1.0) -> bytes:
    """Draw ``snapshot`` in this process and return PNG bytes (a full draw: 0.1–0.3 s)."""
    from .figure import LiveFigure
    return LiveFigure(size, scale).render(snapshot)


def _figure_for(figures: "collections.OrderedDict", key, geometry, spares: Optional[list] = None):
    """The cached figure of ``key`` at ``geometry`` (width, height, scale), made anew when it differs.

    ``spares``: figures already drawn once (the warm-up's); one of the same geometry is taken before
    a new one is made. A figure's first draw costs about twice a full redraw of one drawn before
    (0.6-1.0 s against 0.4 s here), and that is the first frame of a kernel's first run."""
    from .figure import LiveFigure
    fig = figures.pop(key, None)
    want = (tuple(geometry[:2]), geometry[2])
    if fig is None or (fig.size, fig.scale) != want:
        spare = next((f for f in spares or () if (f.size, f.scale) == want), None)
        if spare is not None:
            spares.remove(spare)      # every frame is drawn from its snapshot alone: nothing of the warm-up's shows
            fig = spare
        else:
            fig = LiveFigure(geometry[:2], geometry[2])
    figures[key] = fig
    while len(figures) > MAX_FIGURES:
        figures.popitem(last=False)
    return fig


# -- the renderer process -----------------------------------------------------------------------------

def _child_main(conn, parent_pid: int) -> None:
    """Body of the renderer process: draw frames asked for on ``conn`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # on a busy machine the training process comes first: frames may come later, training never waits
        os.nice(RENDERER_NICE)
    except (AttributeError, OSError):
        pass
    from . import figure  # noqa: F401  (matplotlib's import, before saying ready)
    figures: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        return
    spares = [f for f in (_warm_up(),) if f is not None]
    spare_geometry = (DEFAULT_SIZE, 1.0)    # the next new panel's, most likely: the latest frame's
    while True:
        try:
            ready = any((f.size, f.scale) == spare_geometry for f in spares)
            if not conn.poll(PARENT_CHECK_SECONDS if ready else SPARE_IDLE_SECONDS):
                if os.getppid() != parent_pid:      # parent gone (killed): we were re-parented
                    return
                if not ready:
                    # idle: draw a figure for the next new panel now, so that its first frame is a redraw
                    # (~0.1 s) and not a new figure's first draw (0.6-1 s, when the kernel would draw it too)
                    _keep_spare(spares, _warm_up(*spare_geometry))
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "forget":
            # a closed panel's figure, drawn before, is the next new panel's: its first frame is then a redraw
            # (0.05-0.15 s, often on axes drawn at the same limits) instead of a new figure's first draw
            _keep_spare(spares, figures.pop(msg[1], None))
            continue
        _, key, seq, geometry, snap = msg
        spare_geometry = (tuple(geometry[:2]), geometry[2])
        t0 = time.perf_counter()
        try:
            fig = _figure_for(figures, key, geometry, spares)
            png = fig.render(snap)
            reply = ("frame", key, seq, png, (time.perf_counter() - t0) * 1e3, fig.full_draws)
        except Exception:
            # one bad snapshot must not take down the renderer every panel shares:
            # the traceback goes back to the kernel, recorded as Renderer.last_error
            reply = ("error", key, seq, traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:
            return


def _keep_spare(spares: list, fig) -> None:
    """Keep ``fig`` (a figure no panel uses now) for the next new panel; at most :data:`MAX_SPARES`, the newest."""
    if fig is None:
        return
    spares.append(fig)
    del spares[:-MAX_SPARES]


def _warm_up(size=DEFAULT_SIZE, scale: float = 1.0):
    """Draw one frame of a made-up run on a new figure: a process's first draw (fonts, text layout,
    log-axis labels) costs several times a later one, and a figure's first draw about twice a redraw;
    the first run's first frame should pay neither. Returns the figure (drawn once, it becomes the next
    new panel's figure), or None."""
    import numpy as np
    from .figure import SNAPSHOT_VERSION, LiveFigure
    x = np.arange(1, 41, dtype=np.float32)
    line = (x, np.linspace(2.3, 0.3, 40, dtype=np.float32))
    run = {"id": "warm-up", "number": 1, "label": "run 1", "status": "running", "current": True,
           "version": 0, "x_total": 80.0, "loss": line, "grad_norm": (x, np.full(40, 1.5, np.float32)),
           "lr": (x, np.full(40, 1e-3, np.float32)), "val_loss": (x[9::10], line[1][9::10]),
           "metric": (x[9::10], np.linspace(0.5, 0.9, 4, dtype=np.float32))}
    snap = {"version": SNAPSHOT_VERSION, "task": "classification", "metric": "val_accuracy",
            "metric_label": "val accuracy", "stamp": None, "runs": [run]}
    try:
        fig = LiveFigure(tuple(size), scale)
        fig.render(snap)
        return fig
    except Exception:  # only a warm-up: the real frames report their own errors
        log.debug("renderer warm-up failed", exc_info=True)
        return None


# -- the kernel side ----------------------------------------------------------------------------------

class Renderer:
    """Draws frames for any number of panels (keys) in one renderer process.

    Parameters
    ----------
    mode : {"process", "inprocess"}
        "inprocess" draws on this object's I/O thread at an adaptive rate
        (also what "process" falls back to when no process can be run).

    Attributes
    ----------
    mode : str
        "process" or "inprocess" (after a fallback).
    restarts : int
        Renderer processes started after the first.
    last_error : str or None
        The latest drawing error (a traceback), if any.
    last_render_ms : float or None
        Time the latest frame took to draw and encode, in the renderer.
    frames : int
        Frames delivered.
    inprocess_cpu_s : float
        CPU seconds spent drawing in this process (in-process mode only).
    """

    def __init__(self, mode: str = "process"):
        if mode not in ("process", "inprocess"):
            raise ValueError(f"mode: got {mode!r}; accepted: 'process', 'inprocess'")
        self.mode = mode
        self.restarts = 0
        self.frames = 0
        self.last_error: Optional[str] = None
        self.last_render_ms: Optional[float] = None
        self.last_figure_draws: Optional[int] = None   # full draws of the latest frame's figure, in the process
        self._cond = threading.Condition()
        self._pending: "collections.OrderedDict[Hashable, tuple]" = collections.OrderedDict()
        self._forget: list = []
        self._forgotten: set = set()        # keys forgotten since their last submit
        self._frames: dict[Hashable, bytes] = {}
        self._done: dict[Hashable, int] = {}          # newest seq finished (drawn or failed) per key
        self._stamps: dict[Hashable, Any] = {}
        self._callbacks: dict[Hashable, Callable[[bytes], Any]] = {}
        self._seq = itertools.count(1)
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._proc = None
        self._conn = None
        self._ready = False                 # the process said "ready" (until then frames are drawn here)
        self._start_deadline = 0.0
        self._started_once = False
        self._deaths: "collections.deque[float]" = collections.deque()
        self._figures: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()
        self._next_inprocess = 0.0
        self.inprocess_cpu_s = 0.0          # CPU seconds spent drawing in this process
        self._debt = 0.0                    # in-process drawing: CPU seconds not yet paid off
        self._debt_at = time.perf_counter()
        self._owner = os.getpid()

    # -- public ---------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pid(self) -> Optional[int]:
        """The renderer process's pid (None before it runs, or in-process)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def start(self) -> "Renderer":
        """Start the I/O thread (and with it the renderer process) ahead of the first frame."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this Renderer is closed; use render.get_renderer() for a live one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="nbt-renderer-io", daemon=True)
                self._thread.start()
        return self

    def submit(self, key: Hashable, snapshot: dict, size: tuple[int, int] = DEFAULT_SIZE,
               callback: Optional[Callable[[bytes], Any]] = None, force: bool = False,
               scale: float = 1.0) -> Optional[int]:
        """Ask for a frame of ``snapshot`` for ``key``; returns its sequence number at once.

        ``size`` is the size the image is shown at (CSS pixels) and ``scale`` the
        device pixels per CSS pixel (the PNG is ``size * scale``). Returns None
        (and draws nothing) when ``snapshot["stamp"]``, ``size`` and ``scale``
        equal the last submission for ``key``, unless ``force``. ``callback``,
        if given, replaces the key's callback.
        """
        from .figure import _check_size, check_scale
        size = (*_check_size(size), check_scale(scale))
        if not isinstance(snapshot, dict) or "runs" not in snapshot:
            raise TypeError(f"snapshot: expected a dict from nb_trainer.ui.figure.snapshot(), "
                            f"got {type(snapshot).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: got {callback!r}; accepted: a callable taking PNG bytes, or None")
        with self._cond:
            if self._closed:
                raise RuntimeError("this Renderer is closed; use render.get_renderer() for a live one")
            stamp = (snapshot.get("stamp"), size)
            if not force and snapshot.get("stamp") is not None and self._stamps.get(key) == stamp:
                return None
            self._stamps[key] = stamp
            self._forgotten.discard(key)
            if callback is not None:
                self._callbacks[key] = callback
            seq = next(self._seq)
            self._pending.pop(key, None)
            self._pending[key] = (seq, snapshot, size)
            self._cond.notify_all()
        self.start()
        return seq

    def poll(self, key: Hashable) -> Optional[bytes]:
        """PNG bytes of the newest finished frame for ``key``, or None."""
        with self._cond:
            return self._frames.get(key)

    def wait(self, key: Hashable, seq: Optional[int] = None, timeout: Optional[float] = None) -> Optional[bytes]:
        """Block until frame ``seq`` for ``key`` (or a newer one) is done; return the newest frame.

        Without ``seq``, waits for any frame. Returns None on timeout, and the
        previous frame (possibly None) when drawing ``seq`` failed.
        """
        def done():
            d = self._done.get(key)
            return self._closed or (d is not None and (seq is None or d >= seq))
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                return None
            return self._frames.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop everything kept for ``key`` (a panel that closed), here and in the renderer."""
        with self._cond:
            self._pending.pop(key, None)
            for d in (self._frames, self._done, self._stamps, self._callbacks):
                d.pop(key, None)
            self._forget.append(key)
            self._forgotten.add(key)
            self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the I/O thread and the renderer process (waits up to ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._stop_child(timeout)

    def __repr__(self) -> str:
        return (f"<Renderer {self.mode} pid={self.pid} frames={self.frames} restarts={self.restarts}"
                f"{' closed' if self._closed else ''}>")

    # -- the I/O thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        if self.mode == "process":
            self._spawn_child()          # start early: the first frame should not wait for it
        while True:
            with self._cond:
                while not self._closed:
                    if self._forget:
                        break
                    if self._proc is not None and not self._proc.is_alive():
                        break                  # died while idle (or while starting): reap it now
                    if self.mode == "process" and self._proc is None:
                        break                  # start one again (the last one died)
                    starting = self.mode == "process" and not self._ready
                    if starting and self._check_ready():
                        starting = False
                    if self._pending and (self._ready or time.perf_counter() >= self._next_inprocess):
                        break
                    if starting:
                        wait = 0.05            # look for "ready" often: the first frames wait on it
                    elif self.mode == "process" or not self._pending:
                        wait = 1.0
                    else:
                        wait = max(0.01, self._next_inprocess - time.perf_counter())
                    self._cond.wait(wait)
                if self._closed:
                    return
                forget, self._forget = self._forget, []
                in_child = self.mode == "process" and self._ready
                item = self._pending.popitem(last=False) if self._pending and (
                    in_child or time.perf_counter() >= self._next_inprocess) else None
            for key in forget:
                self._figures.pop(key, None)
                self._send_control(("forget", key))
            if self._proc is not None and not self._proc.is_alive():
                self._child_died("it exited")
            if self.mode == "process" and self._proc is None and not self._closed:
                self._spawn_child()
            if item is None:
                continue
            key, (seq, snap, size) = item
            if not in_child:
                # the process is not up yet (or none can run): draw here, within the budget
                self._draw_here(key, seq, snap, size)
            elif not self._draw_in_child(key, seq, snap, size):
                self._requeue(key, (seq, snap, size))    # the process died: again, here or in the next one

    def _draw_in_child(self, key, seq, snap, size) -> bool:
        """Send one frame to the renderer process and wait for it; False if the process died."""
        conn, proc = self._conn, self._proc
        if conn is None or proc is None:
            return False
        try:
            conn.send(("render", key, seq, size, snap))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            self._finish(key, seq, None, error=f"snapshot for {key!r} could not be pickled: {e}")
            return True
        except OSError:
            self._child_died("the pipe broke")
            return False
        sent = time.monotonic()
        deadline = sent + FRAME_TIMEOUT
        first = key not in self._frames      # this key has never shown a frame (a new panel's first run)
        while True:
            if first and time.monotonic() - sent > FIRST_FRAME_PATIENCE and time.perf_counter() >= self._next_inprocess:
                # a busy machine starves the (lower-priority) renderer: the first frame is drawn here
                # meanwhile, once, within the in-process budget; the renderer's copy replaces it
                first = False
                self._draw_here(key, seq, snap, size)
            try:
                if conn.poll(0.05 if first else 0.25):
                    msg = conn.recv()
                    break
            except (EOFError, OSError):
                msg = None
                break
            if not proc.is_alive():
                msg = None
                break
            if self._closed:
                return True
            if time.monotonic() > deadline:
                log.warning("nb_trainer renderer process %s took over %.0f s for one frame; restarting it",
                            proc.pid, FRAME_TIMEOUT)
                proc.kill()
                msg = None
                break
        if msg is None:
            self._child_died("it exited while drawing")
            return False
        if msg[0] == "frame":
            _, _, _, png, ms, draws = msg
            self.last_render_ms = ms
            self.last_figure_draws = draws
            self._finish(key, seq, png)
        else:
            self._finish(key, seq, None, error=msg[3])
        return True

    def _draw_here(self, key, seq, snap, size) -> None:
        t0 = time.thread_time()
        w0 = time.perf_counter()
        try:
            png = _figure_for(self._figures, key, size).render(snap)
        except Exception:
            # same contract as the renderer process: the error is recorded, the panel keeps going
            self._finish(key, seq, None, error=traceback.format_exc())
            png = None
        # A leaky bucket: CPU time spent drawing (what the training thread loses to us)
        # drains at INPROCESS_BUDGET seconds per second; frames wait while it is over the burst.
        now = time.perf_counter()
        cost = time.thread_time() - t0
        self.inprocess_cpu_s += cost
        self._debt = max(0.0, self._debt - INPROCESS_BUDGET * (now - self._debt_at)) + cost
        self._debt_at = now
        self.last_render_ms = (now - w0) * 1e3
        self._next_inprocess = now + max(INPROCESS_MIN_INTERVAL,
                                         (self._debt - INPROCESS_BURST) / INPROCESS_BUDGET)
        if png is not None:
            self._finish(key, seq, png)

    def _finish(self, key, seq, png: Optional[bytes], error: Optional[str] = None) -> None:
        with self._cond:
            if key in self._forgotten:
                return
            if error is not None:
                self.last_error = error
                self._stamps.pop(key, None)       # let the same snapshot be tried again
                log.warning("nb_trainer: drawing the live plot failed:\n%s", error)
            else:
                self._frames[key] = png
                self.frames += 1
            self._done[key] = max(seq, self._done.get(key, 0))
            callback = self._callbacks.get(key) if png is not None else None
            self._cond.notify_all()
        if callback is not None:
            try:
                callback(png)
            except Exception:
                log.exception("nb_trainer: a live-plot frame callback raised")

    def _requeue(self, key, item) -> None:
        with self._cond:
            if key not in self._pending:       # a newer snapshot, if any, replaces the lost one
                self._pending[key] = item
                self._pending.move_to_end(key, last=False)

    # -- the process ----------------------------------------------------------------------------
    def _spawn_child(self) -> None:
        """Start a renderer process; it says "ready" on its pipe about a second later (:meth:`_check_ready`)."""
        if self._proc is not None or self.mode != "process" or self._closed:
            return
        ctx = multiprocessing.get_context("spawn")
        try:
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_child_main, args=(child_conn, os.getpid()),
                               name="nbt-renderer", daemon=True)
            proc.start()
        except (OSError, RuntimeError, AssertionError, ValueError, ImportError) as e:
            # e.g. no usable interpreter to spawn, or this process is itself a daemon child
            self._fall_back(f"the renderer process could not be started ({type(e).__name__}: {e})")
            return
        child_conn.close()        # only the child holds its end: its exit is our EOF, and ours its EOF
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        self._proc, self._conn, self._ready = proc, parent_conn, False
        self._start_deadline = time.monotonic() + START_TIMEOUT

    def _check_ready(self) -> bool:
        """Has the starting process said "ready"? Never blocks; reaps one that died or took too long."""
        conn, proc = self._conn, self._proc
        if self._ready or conn is None or proc is None:
            return self._ready
        try:
            while conn.poll(0):
                if conn.recv()[0] == "ready":
                    self._ready = True
                    return True
        except (EOFError, OSError):
            self._child_died("it did not start")
            return False
        if not proc.is_alive():
            self._child_died("it did not start")
        elif time.monotonic() > self._start_deadline:
            self._child_died(f"it did not start within {START_TIMEOUT:.0f} s")
        return False

    def _child_died(self, why: str) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)             # reap: never leave a zombie
            log.info("nb_trainer renderer process %s ended (%s, exit code %s)", proc.pid, why, proc.exitcode)
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > RESTART_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) > MAX_RESTARTS:
            self._fall_back(f"the renderer process ended {len(self._deaths)} times within "
                            f"{RESTART_WINDOW:.0f} s (last: {why})")

    def _fall_back(self, why: str) -> None:
        log.warning("nb_trainer: %s; drawing live plots in the kernel at a reduced rate instead", why)
        self.last_error = why
        self.mode = "inprocess"

    def _send_control(self, msg) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send(msg)
        except OSError:
            self._child_died("the pipe broke")

    def _stop_child(self, timeout: float) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready = False
        if conn is not None:
            try:
                conn.send(None)
            except OSError:
                pass              # already gone: the join below reaps it either way
            conn.close()
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)


_shared: Optional[Renderer] = None
_shared_lock = threading.Lock()


@atexit.register
def _close_shared() -> None:
    # before multiprocessing's own exit handler (registered earlier, so run later) stops the
    # process: otherwise the I/O thread would see it die and start another one
    renderer = _shared
    if renderer is not None and renderer._owner == os.getpid():
        renderer.close(timeout=1.0)


def get_renderer(start: bool = True) -> Renderer:
    """The renderer shared by every panel in this process (created, and started, on first use).

    A closed renderer, or one inherited through ``fork``, is replaced by a new one.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed or _shared._owner != os.getpid():
            _shared = Renderer()
        renderer = _shared
    if start:
        renderer.start()
    return renderer
