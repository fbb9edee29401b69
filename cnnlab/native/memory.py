"""Keep XLA:CPU's per-step scratch memory mapped between steps (glibc ``mallopt``), for CPU training speed.

XLA:CPU allocates one temporary buffer per execution of a program, the size of the step's live intermediates
(301 MB for a CIFAR ResNet-20 training step at batch 128), with ``posix_memalign`` on one of its worker
threads. glibc serves an allocation that large from a fresh ``mmap`` and returns it with ``munmap`` when freed,
so every step page-faults the whole buffer again: 73,700 minor faults per ResNet-20 step, about a quarter of the
step's time on 2 cores (measured with ``getrusage`` and ``strace``; docs/training.md).

``keep_freed_memory()`` tells glibc to serve every thread from the main heap (``M_ARENA_MAX`` = 1), never to
``mmap`` (``M_MMAP_MAX`` = 0), and to keep up to 2 GiB of freed memory instead of returning it to the system
(``M_TRIM_THRESHOLD``): the buffer is then reused, already mapped, by the next step (12,300 faults per step).
The cost is that the process keeps its peak heap, and that threads share one malloc arena.

It must run before JAX starts its CPU backend (a thread keeps the arena it first allocated from), so the
command-line entry points call it first (``experiments/main.py``, ``experiments/bench/train.py``). It does
nothing outside glibc (macOS, musl) and when ``CNNLAB_KEEP_FREED_MEMORY=0`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "CNNLAB_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, ~2 GiB

_applied: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Apply the glibc settings (module docstring) once; True if they are in force in this process."""
    if "done" in _applied:
        return _applied["done"]
    ok = False
    if os.environ.get(ENV, "1") != "0" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = all(libc.mallopt(parameter, value) == 1 for parameter, value in
                     ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
        except (OSError, AttributeError):
            ok = False
    _applied["done"] = ok
    return ok
