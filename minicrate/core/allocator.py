r"""Keep freed array memory in the process for reuse (glibc's ``mallopt``).

Every NumPy operation allocates its result, and a training step frees and
allocates hundreds of arrays of the same few sizes.  By default glibc hands a
large freed block back to the operating system (``munmap``, or trimming the
top of the heap), so the next array of that size is fresh memory: the kernel
maps and zeroes it page by page, one *page fault* per 4 KiB.  On the benchmark
machine that cost more than the arithmetic it served: one thread, one
forward+backward of config (a) took 81 ms with 114 thousand page faults per
step on (b), and 35 ms with none once freed memory was kept (issue 8;
``benchmarks/README.md``).

:func:`keep_freed_memory` raises glibc's two thresholds so that freed blocks
stay in the heap and are reused, which is what PyTorch's and CuPy's caching
allocators do on GPUs.  The price: the process keeps its peak heap until it
exits, instead of shrinking after a big step.  It changes the whole process
(every library in it), so minicrate calls it only where it owns the process:
the training loops, the batch-parallel worker processes and the benchmarks.
Set ``MINICRATE_KEEP_FREED_MEMORY=0`` to leave the allocator alone (the memory
benchmark does, to measure peaks honestly).

Host-side code: nothing here touches arrays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

ENV = "MINICRATE_KEEP_FREED_MEMORY"
# Blocks up to this size are served from the heap and kept there when freed
# (glibc's default: 128 KiB, rising to at most 32 MiB as big blocks are freed).
THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt`` or None (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Ask glibc to keep freed blocks below ``threshold`` bytes for reuse.

    Returns:
        True when the allocator was changed; False where there is no glibc, when
        ``MINICRATE_KEEP_FREED_MEMORY=0`` is set, or when glibc refused.
    """
    threshold = int(threshold)
    if threshold <= 0:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold}")
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    cap = min(threshold, 2**31 - 1)  # mallopt takes an int
    # mallopt returns 1 on success.  Older glibc refuses an mmap threshold above 32 MiB;
    # then blocks above 32 MiB still go back to the system (smaller ones are kept).
    ok_mmap = mallopt(M_MMAP_THRESHOLD, cap) == 1 or mallopt(M_MMAP_THRESHOLD, min(cap, 32 << 20)) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, cap) == 1
    return ok_mmap and ok_trim
