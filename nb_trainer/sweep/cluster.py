"""Where a sweep's trials run: a local Ray started safely, one already running, or a cluster.

``address=None``: reuse the Ray this kernel is already connected to, or start a local one
with a worker per CPU core. A local Ray started here is kept safe by default:

- it listens on the loopback address only. Ray otherwise binds the machine's network
  address (and asks a public DNS address which one that is), opening its ports to the
  local network; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's own switch, set here when
  the user has not set it) makes it use 127.0.0.1;
- it sends no usage statistics unless the user turned them on
  (``RAY_USAGE_STATS_ENABLED``, or ``ray enable-usage-stats``);
- its worker logs stay in Ray's log files instead of being printed into the cell;
- its idle workers are ready for a sweep's first trials: one per core starts with the
  cluster, and they import torch, Ray Tune and nb_trainer's trial code while idle
  (``preload_python_modules``). Tune gives its trial actors a ``runtime_env`` of its own
  (``PL_DISABLE_FORK=1``), and Ray never gives an idle worker to an actor whose ``runtime_env``
  differs from the worker's: each trial's actor was a new process (4.3 s to its first call here,
  against 0.35 s on an idle worker). So the local Ray's processes get that variable from the
  start, and Tune, while that Ray is up, adds nothing (:func:`_tune_actors_on_idle_workers`).
  Ray ends idle workers beyond the CPUs not yet reserved, every 0.2 s: a sweep's trials reserve
  every CPU (a placement group each) a moment before they ask for a worker, and when that check
  fell in between, Ray ended the idle workers and started new processes for the trials (in
  about a third of the first sweeps here). Workers Ray was asked to keep alive are spared, so
  the local Ray's first idle workers are started that way (:func:`_prestart_idle_workers`)
  instead of by Ray's own prestart, like those after a sweep.
- a sweep's trial workers end with it (Ray ends an actor's process with the actor), and no
  idle workers took their place: every later sweep's trials paid a new process and
  its imports (6.7-7.8 s to the first epoch here, against 1.4-1.9 s on idle workers). So when a
  sweep ends, as many idle workers as it used are started again (:func:`refill_idle_workers`),
  and they import while the notebook does something else.
  A cluster's workers (``address=``) are its own: none of this applies there.

``address="auto"`` or ``"ray://host:port"`` attaches to an existing cluster as Ray does.
Nothing here runs when Ray is missing: :func:`require_ray` says how to install it.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
from typing import Optional

from ..switches import is_on

INSTALL_HINT = 'pip install "nb_trainer[ray]"'
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
USAGE_ENV = "RAY_USAGE_STATS_ENABLED"
# what the local Ray's worker processes import while idle, before a sweep needs them: the trial's
# code (torch, the engine) and Ray Tune's trainable; torch._dynamo is what building an optimizer
# imports first (1.3 s here)
PRELOAD = ("torch", "torch._dynamo", "ray.tune", "nb_trainer.sweep.trial", "nb_trainer.session")
# each preloaded idle worker holds about 460 MiB (320 of its own) here: NBT_RAY_PRELOAD=0 leaves them bare
PRELOAD_ENV = "NBT_RAY_PRELOAD"
# Tune's environment for its trial actors (ray.tune.execution.class_cache.DEFAULT_ENV_VARS), given
# to the local Ray's processes from the start instead
TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
# how long an idle worker started here is kept (Ray ends idle workers beyond the CPUs not reserved,
# except for this while): the next sweep of a working day finds it
KEEP_ALIVE_S = 24 * 3600

_lock = threading.Lock()
_started_here = False     # this module started the local Ray the kernel is connected to
_requests: "queue.Queue" = queue.Queue()
_lasting: Optional[threading.Thread] = None
_lasting_lock = threading.Lock()
_tune_env_taken: dict = {}    # what _tune_actors_on_idle_workers took out of Tune's actor env


def _serve() -> None:
    while True:
        fn, box, done = _requests.get()
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the caller's thread, raised there
            box["error"] = e
        finally:
            done.set()


def _on_a_lasting_thread(fn):
    """Run ``fn`` on a thread that lives as long as the process, and return what it returns.

    Ray starts its local processes (GCS, raylet) with a parent-death signal, and Linux sends it
    when the *thread* that started them ends: a local Ray started on a sweep's own thread was
    killed (SIGKILL) when that sweep ended. So ``ray.init`` runs here; the processes still end
    with the kernel."""
    global _lasting
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _lasting_lock:
        if _lasting is None or not _lasting.is_alive():
            _lasting = threading.Thread(target=_serve, name="nbt-ray-starter", daemon=True)
            _lasting.start()
    box: dict = {}
    done = threading.Event()
    _requests.put((fn, box, done))
    done.wait()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def require_ray():
    """Import Ray Tune, or raise ``ImportError`` saying how to install it."""
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise ImportError(f"sweeps run on Ray Tune, which is not installed here ({e}); "
                          f"install it with: {INSTALL_HINT}") from None
    return ray


def _usage_stats_opted_in() -> bool:
    """Did the user turn Ray's usage statistics on (``ray enable-usage-stats`` writes this file)?"""
    path = os.path.expanduser("~/.ray/config.json")
    try:
        with open(path) as f:
            return bool(json.load(f).get("usage_stats"))
    except (OSError, ValueError, AttributeError):
        return False


def _safe_local_environment(ray) -> None:
    """Loopback only and no usage statistics for the Ray about to start (unless the user said otherwise).

    Ray's own processes read these from their environment when they start; the driver read the
    loopback switch when ``ray`` was imported, so an imported Ray is told as well."""
    if LOOPBACK_ENV not in os.environ:
        os.environ[LOOPBACK_ENV] = "0"
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False
    if USAGE_ENV not in os.environ and not _usage_stats_opted_in():
        os.environ[USAGE_ENV] = "0"


def _start_local(ray, num_cpus: int, quiet: dict) -> None:
    """``ray.init`` of a local Ray whose processes have Tune's actor environment from the start."""
    loopback = os.environ.get(LOOPBACK_ENV, "1").lower() in ("0", "false")
    saved = {k: os.environ.get(k) for k in TUNE_ACTOR_ENV}
    os.environ.update(TUNE_ACTOR_ENV)    # inherited by Ray's processes, its workers among them
    try:
        preload = is_on(PRELOAD_ENV)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 # the first idle workers come from _prestart_idle_workers, kept alive
                 _system_config={"preload_python_modules": list(PRELOAD) if preload else [],
                                 "prestart_worker_first_driver": False},
                 **({"_node_ip_address": "127.0.0.1"} if loopback else {}), **quiet)
    finally:
        for k, v in saved.items():     # the kernel's own environment stays as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tune_actors_on_idle_workers(on: bool) -> None:
    """While the local Ray started here is up, Tune's trial actors take no ``runtime_env`` of their own.

    Their variables are already in every process of that Ray (:func:`_start_local`), so nothing
    changes for the trials, except that Ray can give them its idle, preloaded workers. Undone at
    :func:`shutdown`. If Tune keeps that environment elsewhere one day, trials start new processes, as before."""
    try:
        from ray.tune.execution import class_cache
        env = class_cache.DEFAULT_ENV_VARS
    except (ImportError, AttributeError):
        return
    if on:
        for k, v in TUNE_ACTOR_ENV.items():
            if env.get(k) == v:
                _tune_env_taken[k] = env.pop(k)
    else:
        for k, v in _tune_env_taken.items():
            env.setdefault(k, v)
        _tune_env_taken.clear()


def refill_idle_workers(count: int) -> int:
    """Have the local Ray started here start ``count`` idle workers, as it did with the cluster.

    A sweep's trial actors took the idle workers, and their processes ended with them; the next
    sweep's trials take these instead of new processes. They import :data:`PRELOAD` while idle, as
    the first ones did. Returns how many were asked for, 0 when there is no local Ray of ours or
    Ray refused (nothing else changes then: the next trials start new processes)."""
    try:
        import ray
    except ImportError:
        return 0
    with _lock:
        if not (_started_here and ray.is_initialized()):
            return 0
        return _prestart_idle_workers(ray, count)


def _prestart_idle_workers(ray, count: int) -> int:
    """Ask the local raylet for ``count`` idle workers of this job, kept alive :data:`KEEP_ALIVE_S`.

    Uses the raylet's own request for it (``PrestartWorkers``, on loopback); returns how many were
    asked for, 0 when Ray refused."""
    count = int(count)
    if count <= 0:
        return 0
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2
        node = ray._private.worker.global_worker.node
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON, job_id=bytes.fromhex(ray.get_runtime_context().get_job_id()),
            runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env="{}"),
            keep_alive_duration_secs=KEEP_ALIVE_S, num_workers=count)
        channel = init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}")
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
        finally:
            channel.close()
        return count
    except Exception as e:  # a Ray without that request, or one going down: the trials start processes
        logging.getLogger(__name__).debug("no idle workers started: %r", e)
        return 0


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> dict:
    """Make sure this process is connected to Ray; returns what it is connected to.

    ``{"address": ..., "started": bool (a local Ray started by this call), "cpus": int}``.
    """
    global _started_here
    ray = require_ray()
    with _lock:
        started = False
        if not ray.is_initialized():
            # Ray's start-up notes (token authentication on, no SIGTERM handler off the main thread)
            # would land in the cell: only its errors do
            quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
            # a Ray left from before (shut down by the user) was not ours to keep: Tune's actors as Tune makes them
            _started_here = False
            _tune_actors_on_idle_workers(False)
            if address is None:
                _safe_local_environment(ray)
                cpus = num_cpus or os.cpu_count() or 1
                _on_a_lasting_thread(lambda: _start_local(ray, cpus, quiet))
                started = _started_here = True
                _prestart_idle_workers(ray, cpus)      # one per core, for the first sweep's trials
                _tune_actors_on_idle_workers(True)
                from . import control
                control.shared()     # its process starts now, beside the idle workers' imports
            else:
                _on_a_lasting_thread(lambda: ray.init(address=address, **quiet))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return {"address": address or "local", "started": started, "cpus": cpus}


def shutdown() -> bool:
    """Shut down the local Ray that nb_trainer started (its processes end). Returns whether it did.

    A Ray the user started or attached to is theirs: ``ray.shutdown()`` it yourself."""
    global _started_here
    try:
        import ray
    except ImportError:
        return False
    with _lock:
        if not (_started_here and ray.is_initialized()):
            return False
        ray.shutdown()
        _started_here = False
        _tune_actors_on_idle_workers(False)
        return True
