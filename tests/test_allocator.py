"""Freed CPU memory kept for the next step (``nb_trainer/allocator.py``), in fresh processes.

The setting is per process and cannot be undone, so each side runs in a subprocess: a short
CPU run of an MLP whose gradients and Adam temporaries (4 MiB blocks, over glibc's initial mmap
threshold) are freed and allocated again every step. Page faults, not time, are compared: they
do not depend on how busy the machine is.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nb_trainer import allocator

ROOT = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the thresholds are glibc's")

RUN = textwrap.dedent("""
    import json, resource, sys
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    import nb_trainer as nbt
    from nb_trainer import allocator
    torch.set_num_threads(1)
    torch.manual_seed(0)
    X, y = torch.randn(1024, 64), torch.randint(0, 10, (1024,))
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    from nb_trainer.callbacks import Callback

    class Faults(Callback):
        seen = []

        def on_epoch_end(self, run, engine, record):
            self.seen.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    t = nbt.Trainer(model, (X, y), store=None, optimizer="adam", batch_size=32)
    t.callbacks.append(Faults())
    t.start(lr=1e-3, epochs=6)
    run = t.wait()
    assert run.status == "finished", run.error
    # epochs 3-6: the steady state (the first epochs also touch the run's new memory for the first time)
    print(json.dumps({"faults": Faults.seen[-1] - Faults.seen[1], "kept": allocator.keep_freed_memory()}))
""")


def _run(keep: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(NBT_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RUN, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@glibc
def test_a_cpu_run_stops_faulting_its_freed_buffers_back_in():
    default, kept = _run("0"), _run("1")
    assert not default["kept"] and kept["kept"]
    # 4 epochs of 32 steps, each freeing and allocating about 20 MiB (gradients, optimizer temporaries)
    # in 4 MiB blocks: with glibc's defaults much of it is faulted in again every step (110-650 faults
    # a step measured here); kept, it is reused (25-40 a step: what the epochs' ends allocate anew)
    steps = 4 * 32
    assert kept["faults"] < 64 * steps and kept["faults"] < default["faults"] / 2, (default, kept)


def test_the_users_own_malloc_settings_and_the_switch_are_respected(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv(allocator.ENV, "0")
    assert not allocator.applies()
    monkeypatch.setenv(allocator.ENV, "1")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert not allocator.applies()                      # the user tuned malloc: left alone
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert not allocator.applies()                      # not glibc's malloc at all
    monkeypatch.delenv("LD_PRELOAD")
    is_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert allocator.applies() is is_glibc
