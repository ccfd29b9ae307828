"""glibc malloc settings for processes that allocate and free the same few MB every step, and huge
pages for a large array read at random rows.

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
import sys
from collections.abc import Sequence

import torch

# madvise's advice number for transparent huge pages (Linux, asm-generic/mman-common.h).
MADV_HUGEPAGE = 14
HUGE_PAGE = 2 * 1024 * 1024
# mallopt's parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems (HEAP_MAX / 2 ... DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return None if name is None else ctypes.CDLL(name)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Serve allocations below 32 MiB from the heap and keep up to 256 MiB of freed heap; True where
    glibc took both settings (False elsewhere: musl, macOS, Windows, where nothing changes)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def empty_on_huge_pages(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory the kernel is asked (madvise MADV_HUGEPAGE) to back with
    2 MiB pages as it is first written, where transparent huge pages are set to `madvise` or `always`.
    For a training set gathered at random rows every step (188 MB for Fashion-MNIST as float32): with 4 KiB
    pages nearly every row read misses the TLB; the gather of 600 rows took 245 against 324 us here. A
    plain tensor where the advice is not taken (other systems, THP off): the same values either way."""
    tensor = torch.empty(tuple(shape), dtype=dtype)
    madvise = getattr(_libc(), "madvise", None)
    if madvise is None or not sys.platform.startswith("linux"):
        return tensor
    start = tensor.data_ptr()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE  # whole 2 MiB pages inside the tensor only
    last = (start + tensor.numel() * tensor.element_size()) // HUGE_PAGE * HUGE_PAGE
    if last > first:
        madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), ctypes.c_int(MADV_HUGEPAGE))
    return tensor
