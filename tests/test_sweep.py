"""Sweeps on a real local Ray: trials in parallel, the store, the best trial, stop, divergence, ASHA,
loopback only, a killed driver, and no Ray process left after shutdown.

One local cluster for the module (``ray.init`` takes 10-20 s on these machines), started
with what TESTING.md asks of every test that starts Ray: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
``RAY_USAGE_STATS_ENABLED=0`` and ``HOME`` a temporary folder holding an empty
``ray_bootstrap_config.yaml``, all set before Ray is imported. The module's last test shuts the
cluster down and checks that its processes are gone.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import nb_trainer as nbt

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def ray_environment(home: Path) -> dict:
    """The environment a process that starts (or joins) Ray needs here: loopback only, no usage stats,
    no cloud-metadata probe (Ray's dashboard probes it when ~/ray_bootstrap_config.yaml is missing)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("")
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home),
            # the workers import this checkout's nb_trainer (and this module, for its models)
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]
                                          + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED", "HOME",
                                            "PYTHONPATH")}
    os.environ.update(ray_environment(tmp_path_factory.mktemp("ray-home")))
    import ray
    from nb_trainer.sweep import cluster
    assert not ray.is_initialized(), "another test left Ray running"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the models below, by value
    info = cluster.connect(num_cpus=2)
    info["gcs"] = ray.get_runtime_context().gcs_address
    yield info
    cluster.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Busy(nn.Module):
    """The digits MLP, with each training step spinning the CPU for ``delay`` s: a trial that lasts
    (and uses its core) long enough to be watched, stopped and compared."""

    def __init__(self, inner: nn.Module, delay: float):
        super().__init__()
        self.inner = inner
        self.delay = delay

    def forward(self, x):
        if self.training:
            end = time.perf_counter() + self.delay
            while time.perf_counter() < end:
                pass
        return self.inner(x)


def _trainer(digits, make_mlp, store, delay=0.0):
    train, val = digits
    model = make_mlp(64, 10)
    return nbt.Trainer(Busy(model, delay) if delay else model, train, val, store=str(store))


def _ray_processes():
    """This process's descendants that are Ray's (gcs_server, raylet, dashboard, workers): not the
    others a test session leaves, such as multiprocessing's resource tracker."""
    import psutil
    me = psutil.Process()
    found = []
    for p in me.children(recursive=True):
        try:
            text = p.name() + " " + " ".join(p.cmdline())
        except psutil.Error:
            continue                    # it ended meanwhile
        if "ray" in text.lower():
            found.append(p)
    return found


def test_the_idle_workers_outlive_a_sweep_reserving_every_cpu(ray_cluster, wait_until):
    # Ray ends idle workers beyond the CPUs not reserved (checking every 0.2 s, once idle for 1 s),
    # and a sweep's trials reserve every CPU (a placement group each) a moment before they ask for
    # workers: the local Ray's idle workers, kept alive, are still there for them (cluster.py)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from nb_trainer.sweep import control
    ray.get(control.shared().ping.remote(), timeout=60)     # its process is no longer ray::IDLE
    assert wait_until(lambda: len(_idle_workers()) >= 2, timeout=60)
    idle = _idle_workers()
    time.sleep(1.5)                     # idle for longer than Ray's threshold
    groups = [placement_group([{"CPU": 1}]) for _ in range(2)]
    try:
        ray.get([g.ready() for g in groups], timeout=30)
        assert ray.available_resources().get("CPU", 0) == 0
        time.sleep(1.0)                 # five of Ray's checks
        assert idle <= _idle_workers(), (idle, _idle_workers())
    finally:
        for g in groups:
            remove_placement_group(g)


# -- a 4-trial grid, one of them set to diverge --------------------------------------------------------

@pytest.fixture(scope="module")
def grid(ray_cluster, digits, tmp_path_factory):
    from conftest import mlp
    store = tmp_path_factory.mktemp("grid-store")
    t = _trainer(digits, mlp, store, delay=0.02)       # about 0.5 s an epoch
    import ray
    from nb_trainer.sweep import control
    # the control actor's process (started with the cluster) is named ray::IDLE too until the actor is in it
    ray.get(control.shared().ping.remote(), timeout=60)
    deadline = time.monotonic() + 60
    while len(_idle_workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)                     # connect starts one idle worker per core with the cluster
    idle = _idle_workers()
    t0 = time.monotonic()
    sweep = t.sweep({"lr": [0.01, 0.03, 0.1, 10.0]}, parallel=2, scheduler="fifo", optimizer="sgd", epochs=6)
    first_epoch = None
    while not sweep.done:
        if first_epoch is None and any(r.epochs for r in sweep.runs):
            first_epoch = time.monotonic() - t0
        time.sleep(0.05)
    return {"trainer": t, "sweep": sweep, "store": store, "seconds": time.monotonic() - t0,
            "first_epoch": first_epoch, "idle_workers": idle}


def _idle_workers() -> set:
    """The pids of the cluster's idle worker processes (Ray names them ``ray::IDLE``)."""
    import psutil
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::IDLE"):
                found.add(p.pid)
        except psutil.Error:
            continue
    return found


def test_every_trial_of_the_grid_ran(grid):
    sweep = grid["sweep"]
    assert sweep.status == "finished", sweep.error
    assert sorted(r.config.lr for r in sweep.runs) == [0.01, 0.03, 0.1, 10.0]
    by_lr = {r.config.lr: r for r in sweep.runs}
    for lr in (0.01, 0.03, 0.1):
        assert by_lr[lr].status == "finished" and len(by_lr[lr].epochs) == 6
        assert by_lr[lr].config.optimizer == "sgd"          # the fixed config went to every trial


def test_the_trials_trained_in_parallel_on_two_workers(grid):
    runs = grid["sweep"].runs
    assert len({r.worker["pid"] for r in runs}) >= 2
    first, second = runs[0], runs[1]
    assert first.started_at < second.ended_at and second.started_at < first.ended_at


def test_the_first_trials_ran_on_the_clusters_idle_workers_with_their_imports_done(grid):
    # Tune's own runtime_env for its trial actors would make Ray start a new process for each (and
    # the control actor would take an idle one): the local Ray gives its processes that environment
    # from the start, so the trials take the workers Ray started, and preloaded, with the cluster
    assert len(grid["idle_workers"]) >= 2
    pids = {r.worker["pid"] for r in grid["sweep"].runs}
    assert pids <= grid["idle_workers"], (pids, grid["idle_workers"])
    assert "PL_DISABLE_FORK" not in os.environ      # the kernel's own environment is left as it was
    from ray.tune.execution import class_cache
    assert "PL_DISABLE_FORK" not in class_cache.DEFAULT_ENV_VARS   # (restored at shutdown: below)


def test_one_control_actor_serves_every_sweep_of_the_connection(grid):
    from nb_trainer.sweep import control
    assert grid["sweep"].done
    assert grid["sweep"]._control._actor_id == control.shared()._actor_id   # kept, and the next sweep's


def _imported_torch(pid: int) -> bool:
    """Has that process loaded torch's library (it is in its memory map)?"""
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_later_sweep_finds_idle_preloaded_workers_again(grid, digits, tmp_path, wait_until):
    # Ray ends a trial's process with its actor and starts no idle worker in its place: the
    # sweep that ended asked it for as many as it used, they import torch while idle, and the next
    # sweep's trials take them instead of starting processes of their own
    from conftest import mlp
    used = {r.worker["pid"] for r in grid["sweep"].runs}
    assert wait_until(lambda: len([p for p in _idle_workers() - used if _imported_torch(p)]) >= 2, timeout=90), \
        (_idle_workers(), used)
    idle = _idle_workers() - used
    t = _trainer(digits, mlp, tmp_path / "store", delay=0.02)      # about 0.5 s an epoch: both train at once
    sweep = t.sweep({"lr": [0.01, 0.03]}, parallel=2, scheduler="fifo", optimizer="sgd", epochs=3)
    sweep.wait(timeout=120)
    assert sweep.status == "finished", sweep.error
    pids = {r.worker["pid"] for r in sweep.runs}
    assert len(pids) == 2 and pids <= idle, (pids, idle)


def test_a_trial_set_to_diverge_is_recorded_diverged(grid):
    run = next(r for r in grid["sweep"].runs if r.config.lr == 10.0)
    assert run.status == "diverged"
    assert run.warning("nan_loss") is not None
    assert len(run.epochs) < 6
    stored = next(r for r in nbt.load_runs(str(grid["store"])) if r.id == run.id)
    assert stored.status == "diverged" and stored.warning("nan_loss") is not None


def test_every_trial_is_in_the_store_with_its_epochs(grid):
    sweep = grid["sweep"]
    stored = {r.id: r for r in nbt.load_runs(str(grid["store"]))}
    assert {r.id for r in sweep.runs} == set(stored)
    for run in sweep.runs:
        record = stored[run.id]
        assert record.sweep == sweep.id
        assert record.status == run.status
        assert record.epochs == run.epochs and record.epochs
        assert record.config.lr == run.config.lr


def test_best_is_the_trial_with_the_best_val_metric(grid):
    sweep = grid["sweep"]
    assert sweep.metric == "val_accuracy" and sweep.mode == "max"
    healthy = [r for r in sweep.runs if r.status == "finished"]
    expected = max(healthy, key=lambda r: max(e["val_accuracy"] for e in r.epochs))
    assert sweep.best is expected
    assert sweep.best.config.lr != 10.0


def test_trials_do_not_touch_the_trainer(grid):
    t = grid["trainer"]
    assert t.runs == [] and t.sweeps == [grid["sweep"]]


def test_every_ray_process_listens_and_connects_on_loopback_only(grid):
    import ipaddress
    import psutil
    seen = 0
    for p in _ray_processes():
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            addresses = [c.laddr.ip] + ([c.raddr.ip] if c.raddr else [])
            for a in addresses:
                ip = ipaddress.ip_address(a)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                assert ip.is_loopback, f"{p.name()} (pid {p.pid}) {c.status} {c.laddr} -> {c.raddr}"
            seen += c.status == psutil.CONN_LISTEN
    assert seen >= 3        # the GCS, the raylet, the workers: the check looked at something


# -- stopping ---------------------------------------------------------------------------------------------

def _cpu_seconds(pids) -> float:
    import psutil
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue        # the process is gone: it uses no CPU
        total += times.user + times.system
    return total


def test_stop_ends_every_trial_within_5_seconds(ray_cluster, digits, make_mlp, tmp_path, wait_until):
    t = _trainer(digits, make_mlp, tmp_path / "store", delay=0.02)      # about 0.5 s an epoch
    sweep = t.sweep({"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, parallel=2, scheduler="fifo", epochs=200)
    assert wait_until(lambda: sum(1 for r in sweep.runs if r.epochs) >= 2, timeout=120), sweep
    pids = {r.worker["pid"] for r in sweep.runs}
    t0 = time.monotonic()
    sweep.stop()
    sweep.wait(timeout=30)
    took = time.monotonic() - t0
    assert sweep.status == "stopped" and took < 5.0, (sweep, took)
    assert [r.status for r in sweep.runs] == ["stopped"] * len(sweep.runs)
    assert all(r.stop_reason == "the sweep was stopped" for r in sweep.runs)
    assert len(sweep.runs) == 2                        # the two trials not yet started never start
    # the trials' workers stopped training: within 5 s of stop() they use (almost) no CPU (a core each before)
    idle_after = None
    while idle_after is None and time.monotonic() - t0 < 5.0:
        before = _cpu_seconds(pids)
        time.sleep(0.5)
        if _cpu_seconds(pids) - before < 0.1:
            idle_after = time.monotonic() - t0
    print(f"sweep.stop(): trials recorded stopped after {took:.2f} s, their workers idle after {idle_after} s")
    assert idle_after is not None, "the trials' workers still train 5 s after stop()"
    before = _cpu_seconds(pids)
    time.sleep(2.0)
    assert _cpu_seconds(pids) - before < 0.4
    stored = {r.id: r.status for r in nbt.load_runs(str(tmp_path / "store"))}
    assert stored == {r.id: "stopped" for r in sweep.runs}


# -- ASHA -------------------------------------------------------------------------------------------------

def test_asha_stops_weak_trials_early(ray_cluster, digits, make_mlp, tmp_path):
    t = _trainer(digits, make_mlp, tmp_path / "store")
    # one trial at a time, strongest first: each weaker one meets the stronger ones' results at its first rung
    sweep = t.sweep({"lr": [3e-2, 1e-5, 3e-6]}, parallel=1, scheduler="asha", optimizer="adam", epochs=8)
    sweep.wait(timeout=300)
    assert sweep.status == "finished", sweep.error
    strong, weak, weaker = sweep.runs
    assert strong.status == "finished" and len(strong.epochs) == 8
    for run in (weak, weaker):
        assert run.status == "stopped" and len(run.epochs) == 2        # ASHA's first rung: epochs // 4
        assert "ASHA" in run.stop_reason
    assert sweep.best is strong


# -- a killed driver ------------------------------------------------------------------------------------

def test_a_driver_killed_mid_sweep_leaves_every_finished_epoch_readable(ray_cluster, tmp_path, wait_until):
    store = tmp_path / "store"
    script = textwrap.dedent(f"""
        import time, torch
        torch.set_num_threads(1)
        from sklearn.datasets import load_digits
        import nb_trainer as nbt
        from test_sweep import Busy
        from conftest import mlp
        d = load_digits()
        x = torch.tensor(d.data / 16.0, dtype=torch.float32); y = torch.tensor(d.target)
        t = nbt.Trainer(Busy(mlp(64, 10), 0.02), (x[:1400], y[:1400]), (x[1400:], y[1400:]), store={str(store)!r})
        sw = t.sweep({{"lr": [1e-3, 1e-2]}}, parallel=2, scheduler="fifo", epochs=500, address={ray_cluster["gcs"]!r})
        print("started", flush=True)
        sw.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def epochs_stored():
            try:
                return [len(r.epochs) for r in nbt.load_runs(str(store))]
            except (FileNotFoundError, sqlite3.OperationalError):    # not there yet, or its tables not yet made
                return []
        assert wait_until(lambda: len(epochs_stored()) == 2 and min(epochs_stored()) >= 2, timeout=180), \
            (epochs_stored(), proc.poll())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = nbt.load_runs(str(store))
    assert len(records) == 2
    for r in records:
        assert r.status == "interrupted" and len(r.epochs) >= 2
        assert [e["epoch"] for e in r.epochs] == list(range(1, len(r.epochs) + 1))
        assert r.sweep is not None


# -- last: shutting the cluster down ----------------------------------------------------------------

def test_shutdown_leaves_no_ray_process(ray_cluster, wait_until):
    import ray
    from nb_trainer.sweep import cluster
    procs = _ray_processes()
    assert procs, "the cluster's processes should be children of this process"
    assert cluster.shutdown() is True
    assert not ray.is_initialized()

    def gone():
        return all(not p.is_running() or p.status() == "zombie" for p in procs)
    assert wait_until(gone, timeout=30, interval=0.2), [(p.pid, p.name(), " ".join(p.cmdline())[:200])
                                                        for p in procs if p.is_running()]
    assert cluster.shutdown() is False          # nothing left to shut down
    from ray.tune.execution import class_cache
    assert class_cache.DEFAULT_ENV_VARS.get("PL_DISABLE_FORK") == "1"   # Tune's own again, for other clusters
