"""glibc malloc settings for processes that allocate and free the same few MB every step.

A batched group's step allocates its gathered batch (K x 60 x 784 floats: 1.9 MB for 10 members) and
its weight gradients (3 MB for the first layer) and frees them again. Above glibc's mmap threshold
(128 KiB at first, then raised adaptively) each such buffer is a fresh mmap, and every page of it a page
fault on first touch: 240-290 faults per step in a fresh group process, about 8% of its time. Served
from the heap instead, and with the heap's top not handed back to the kernel, the same pages are reused
step after step. The process keeps its peak heap (tens of MB for a group), which is what it needs anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems (HEAP_MAX / 2 ... DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Serve allocations below 32 MiB from the heap and keep up to 256 MiB of freed heap; True where
    glibc took both settings (False elsewhere: musl, macOS, Windows, where nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
