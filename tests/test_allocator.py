"""Freed CPU memory kept for the next step (``nb_trainer/allocator.py``), in fresh processes.

The setting is per process and cannot be undone, so each check runs in a subprocess. What is
checked is where glibc puts blocks and whether it gives freed ones back (the heap's end,
``sbrk(0)``), which is deterministic; how many page faults that saves a training run depends on
timing and is measured in ``benchmarks/bench_allocator.py``, not here.
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

PROBE = textwrap.dedent("""
    import ctypes, json, sys
    sys.path.insert(0, sys.argv[1])
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_ssize_t,)
    from nb_trainer import allocator
    kept = None
    if sys.argv[2] == "call":
        kept = allocator.keep_freed_memory()
    elif sys.argv[2] == "train":       # a short CPU run of the engine sets them
        import torch
        from torch import nn
        import nb_trainer as nbt
        torch.set_num_threads(1)
        t = nbt.Trainer(nn.Linear(8, 2), (torch.randn(64, 8), torch.randint(0, 2, (64,))), store=None)
        t.start(epochs=1)
        assert t.wait().status == "finished"
        kept = allocator.keep_freed_memory()
    big = [libc.malloc(1 << 20) for _ in range(64)]            # 1 MiB blocks: over glibc's first mmap threshold
    end = libc.sbrk(0)
    on_heap = sum(1 for b in big if b < end)
    for b in big:
        libc.free(b)
    small = [libc.malloc(64 << 10) for _ in range(1024)]       # 64 MiB in 64 KiB blocks: on the heap either way
    end = libc.sbrk(0)
    for b in small:
        libc.free(b)
    print(json.dumps({"kept": kept, "big_on_heap": on_heap, "heap_kept": libc.sbrk(0) == end}))
""")


def _probe(how: str, keep: str = "1") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(NBT_KEEP_FREED_MEMORY=keep, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), how], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_blocks_stay_in_the_heap_for_the_next_step():
    default, kept = _probe("none"), _probe("call")
    # glibc's defaults: every 1 MiB block is a mapping of its own (freed, unmapped: the next step
    # faults it in again), and 64 MiB freed at the heap's top is given back
    assert default == {"kept": None, "big_on_heap": 0, "heap_kept": False}, default
    assert kept == {"kept": True, "big_on_heap": 64, "heap_kept": True}, kept


@pytest.mark.slow
@glibc
def test_a_cpu_run_sets_them_and_the_switch_turns_it_off():
    assert _probe("train") == {"kept": True, "big_on_heap": 64, "heap_kept": True}
    assert _probe("train", keep="0") == {"kept": False, "big_on_heap": 0, "heap_kept": False}


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
