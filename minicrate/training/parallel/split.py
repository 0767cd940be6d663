"""How a batch is split into chunks, and BLAS limited to one thread while chunks run.

Shared by :mod:`minicrate.training.parallel.threads` (chunks in threads) and
:mod:`minicrate.training.parallel.procpool` (chunks in worker processes), so neither
imports the other for these helpers.
"""

from __future__ import annotations

import contextlib
import functools
import os

from minicrate.core.validate import check_array, check_int_array, describe


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def blas_controller():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController()


def one_thread_blas():
    """Context manager: BLAS uses one thread inside (no-op without threadpoolctl)."""
    controller = blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def chunks(n, workers):
    """``workers`` contiguous slices covering ``range(n)``, sizes differing by at most one."""
    workers = max(1, min(workers, n))
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(workers)]


def check_batch(images, labels):
    """Check a whole batch before it is split: a chunk's own checks would name the chunk's
    shapes, and labels that are too few would be broadcast over a chunk."""
    check_array(images, "images", ndim=4, finite=False)
    check_int_array(labels, "labels", ndim=1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have one entry per image ({images.shape[0]}), got {describe(labels)}")
