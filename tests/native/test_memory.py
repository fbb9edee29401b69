"""cnnlab.native.memory: with the glibc settings, a large buffer freed and allocated again is not page-faulted again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, threading
from cnnlab.native import memory
applied = memory.keep_freed_memory() if sys.argv[1] == "1" else False
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 80 * 2**20  # 80 MiB: above glibc's largest mmap threshold (32 MiB)

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

counts = []
def work():  # on a new thread, as XLA:CPU allocates its step buffer on a worker thread
    for _ in range(4):
        before = faults()
        buffer = libc.malloc(SIZE)
        ctypes.memset(buffer, 1, SIZE)  # touch every page
        counts.append(faults() - before)
        libc.free(buffer)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, max(counts[1:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    results = {}
    for setting in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
        applied, faults = done.stdout.split()
        results[setting] = (applied == "True", int(faults))
    pages = 80 * 2**20 // 4096
    assert results["0"] == (False, results["0"][1]) and results["0"][1] > pages // 2  # mmap'd afresh every time
    assert results["1"][0] is True and results["1"][1] < pages // 20  # reused, already mapped


def test_the_environment_switch_turns_it_off():
    code = "from cnnlab.native import memory; print(memory.keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"CNNLAB_KEEP_FREED_MEMORY": "0", "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "False"
