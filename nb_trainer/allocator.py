"""Freed CPU memory kept for the next step, so that a step on the CPU does not fault its buffers in anew.

Every training step frees and allocates the same buffers: the gradients (the engine sets them
to ``None``), the optimizer's temporaries, the activations. glibc's ``malloc`` hands large freed
blocks back to the kernel: its mmap threshold starts at 128 KiB and only grows as such blocks
are freed, and a heap is trimmed once twice that lies free at its top. The next step then
faults every page of those blocks in again, in system time. On the digits MLP (64-1024-1024-10,
batch 32, one thread) that was about 20k minor faults an epoch (medians 18k and 21k; at times a
storm of 100k), 9-11% of the run's CPU time in the kernel, and a first epoch 1.5x the others;
kept, 3k an epoch, under 3%, and the run 1.04-1.09x faster (medians; ``benchmarks/bench_allocator.py``).

:func:`keep_freed_memory` fixes both thresholds (``mallopt``) once per process, the first time
a run trains on the CPU: blocks up to 32 MiB (the ceiling of glibc's own adaptive threshold)
come from the heap, up to 512 MiB freed at the top of a heap stays there for the next step, and
a heap grows by 64 MiB of address space beyond what it needs (pages are touched only when
used), so that a training thread's heap is not unmapped whenever it empties (glibc deletes an
empty thread heap whatever the trim threshold: without the pad, half the faults remained).
A process keeps at most what its training already held at its peak; blocks over 32 MiB are
still returned at once. ``NBT_KEEP_FREED_MEMORY=0`` turns it off; thresholds the user set
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES``) and other allocators (musl, macOS,
Windows, a preloaded jemalloc or tcmalloc) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

from .switches import is_on

ENV = "NBT_KEEP_FREED_MEMORY"
MMAP_THRESHOLD = 32 << 20     # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: it refuses more
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 64 << 20            # a thread's heap (64 MiB at most) is not unmapped once it empties
_M_TRIM_THRESHOLD = -1        # glibc's malloc.h
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_lock = threading.Lock()
_state: dict = {}


def applies() -> bool:
    """Would :func:`keep_freed_memory` change anything in this process?"""
    if not is_on(ENV):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(k) for k in _USER_SETTINGS):
        return False     # the user tuned malloc themselves
    preload = os.environ.get("LD_PRELOAD", "").lower()
    return not any(name in preload for name in _OTHER_ALLOCATORS)


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process (see the module's docstring). Returns whether they are set."""
    with _lock:
        if "done" in _state:
            return _state["done"]
        done = False
        if applies():
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
                mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                mallopt.restype = ctypes.c_int
                done = all(mallopt(option, value) == 1 for option, value in (
                    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
            except (OSError, AttributeError):
                done = False
        _state["done"] = done
        return done
