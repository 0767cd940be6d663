r"""Data parallelism over the batch on the CPU cores (NumPy backend).

NumPy spreads one large matrix product over the cores (through BLAS), but
every elementwise operation — LayerNorm, softmax, ReLU, the copies between
token and head layouts — runs on one core, and the small per-head products of
attention (``(N, p) @ (p, N)`` blocks, 65×64 for 32×32 images) gain little
from BLAS threads, which must meet at a barrier after every block.

Here the batch is split into one chunk per core and each chunk runs the
whole forward and backward in its own Python thread, with BLAS set to one
thread.  NumPy releases the GIL inside its loops, so the chunks really run at
the same time: everything, not only the large products, uses every core.
The gradients of a mean loss combine exactly::

    loss = Σ_i (n_i / B) · loss_i        grads = Σ_i (n_i / B) · grads_i

(chunk i has n_i samples).  The result equals the one-chunk computation up to
floating-point rounding (sums in another order).

Only NumPy gains: CuPy and torch have their own parallel kernels, so with
those backends (and with one usable core) the functions below simply call the
model once.  Setting BLAS threads needs ``threadpoolctl``; without it the
chunks run one after the other.

Threads share Python's interpreter lock between NumPy calls; when the calls are
short (small models) they wait for each other.  ``processes=True`` runs the
chunks in worker processes instead (:mod:`minicrate.training.parallel.procpool`: parameters,
batch and gradients in shared memory), the default for
:func:`loss_and_grads` on NumPy.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

from minicrate.core.backend import backend_name, namespace
from minicrate.training.parallel.split import (  # noqa: F401  (re-exported: older imports)
    blas_controller,
    check_batch,
    chunks,
    one_thread_blas,
    usable_cores,
)


def default_workers(xp) -> int:
    """Chunks per batch: the usable cores for NumPy, 1 for every other backend."""
    return usable_cores() if backend_name(xp) == "numpy" and blas_controller() is not None else 1


@functools.lru_cache(maxsize=4)
def _pool(workers):
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minicrate-batch")


def weighted_combine(results, shares):
    """``(Σ w_i loss_i, Σ w_i grads_i)`` with ``w_i = shares[i] / Σ shares``.

    ``results`` are the chunks' ``(loss_i, grads_i, ...)`` in chunk order and
    ``shares`` what each chunk's mean loss averages over (samples, or selected
    positions).  The sums run in chunk order, so the result does not depend on
    which thread finished first.
    """
    total = sum(shares)
    loss, grads = 0.0, None
    for share, (loss_i, grads_i, *_) in zip(shares, results, strict=True):
        w = share / total
        loss += w * loss_i
        if grads is None:
            grads = {k: w * g for k, g in grads_i.items()}
        else:
            for k, g in grads_i.items():
                grads[k] += w * g
    return loss, grads


def map_chunks(fn, n, workers):
    """``[fn(s) for s in chunks(n, workers)]``, the calls running in parallel threads
    with one-thread BLAS when ``workers > 1``."""
    parts = chunks(n, workers)
    if len(parts) == 1:
        return [fn(parts[0])]
    with one_thread_blas():
        return list(_pool(len(parts)).map(fn, parts))


def process_pool(workers):
    """The worker processes for ``workers`` chunks.  One pool is kept at a time: another
    number of workers, or a pool that was closed, starts a new one.  A pool serves any
    model: each call names the function its chunks run."""
    from minicrate.training.parallel.procpool import ProcessPool

    pool = current_pool()
    if pool is not None and pool.workers == int(workers):
        return pool
    close_pool()
    _POOLS.append(ProcessPool(workers))
    return _POOLS[0]


_POOLS = []  # at most one ProcessPool


def current_pool():
    """The live :class:`~minicrate.training.parallel.procpool.ProcessPool`, or None."""
    return _POOLS[0] if _POOLS and not _POOLS[0].closed else None


def close_pool():
    """Stop the worker processes, if any (they also stop when the program exits)."""
    for pool in _POOLS:
        pool.close()
    _POOLS.clear()


def _plan(params, inputs, workers, processes):
    """``(B, workers, use processes)`` for a batch: the model's backend (the parameters'; ids may
    stay on the host) decides the default workers and whether processes can run the chunks."""
    xp = namespace(next(iter(params.values())))
    workers = default_workers(xp) if workers is None else int(workers)
    if processes is None:  # worker processes need POSIX pipes (pass_fds)
        processes = backend_name(xp) == "numpy" and os.name == "posix"
    elif processes and backend_name(xp) != "numpy":
        raise ValueError(f"processes=True needs NumPy arrays, got {backend_name(xp)}")
    return inputs[0].shape[0], workers, bool(processes)


def split_grads(fn, params, inputs, config, options=None, *, workers=None, processes=None, shares=None):
    """A training step ``fn(params, *inputs, config, **options) -> (loss, grads, *aux)`` with the
    batch (the inputs' rows) split over ``workers`` chunks.

    Args:
        fn: a module-level function returning a chunk's mean loss, its gradients and any
            per-row outputs (e.g. logits).
        workers: number of chunks (``None``: :func:`default_workers`).
        processes: chunks in worker processes (:mod:`minicrate.training.parallel.procpool`)
            rather than threads; ``None``: processes on NumPy.
        shares: ``shares(slice) -> float``, what a chunk's mean averages over (default: its rows).

    Returns:
        ``(loss, grads, *aux)`` for the whole batch: the chunks' weighted sums, aux concatenated.
    """
    options, inputs = dict(options or {}), tuple(inputs)
    B, workers, processes = _plan(params, inputs, workers, processes)
    if workers <= 1 or B < 2:
        return fn(params, *inputs, config, **options)
    if processes:
        return process_pool(workers).grads(fn, params, inputs, config, options, shares=shares)

    def run(s):
        return s, fn(params, *(x[s, ...] for x in inputs), config, **options)

    results = map_chunks(run, B, workers)
    share = shares or (lambda s: s.stop - s.start)
    loss, grads = weighted_combine([r for _, r in results], [share(s) for s, _ in results])
    aux = [namespace(results[0][1][j]).concat([r[j] for _, r in results], axis=0)
           for j in range(2, len(results[0][1]))]
    return (loss, grads, *aux)


def split_map(fn, params, inputs, config, options=None, *, workers=None, processes=None):
    """An inference forward ``fn(params, *inputs, config, **options) -> (n, ...)`` with the batch
    split over ``workers`` chunks (worker processes on NumPy, as :func:`split_grads`).

    Returns:
        the chunks' outputs concatenated along the rows.
    """
    options, inputs = dict(options or {}), tuple(inputs)
    B, workers, processes = _plan(params, inputs, workers, processes)
    if workers <= 1 or B < 2:
        return fn(params, *inputs, config, **options)
    if processes:
        return process_pool(workers).map(fn, params, inputs, config, options)
    parts = map_chunks(lambda s: fn(params, *(x[s, ...] for x in inputs), config, **options), B, workers)
    return namespace(parts[0]).concat(parts, axis=0)


def loss_and_grads(params, images, labels, config, *, workers=None, processes=None, **options):
    """:func:`minicrate.models.classifier.loss_and_grads` with the batch split over ``workers`` chunks
    (:func:`split_grads`).

    Args:
        params, images, labels, config: as for :func:`minicrate.models.classifier.loss_and_grads`.
        workers, processes: as for :func:`split_grads`.
        options: passed on to :func:`minicrate.models.classifier.loss_and_grads`.

    Returns:
        ``(loss, grads, logits)`` for the whole batch.
    """
    from minicrate.models.classifier import loss_and_grads as single

    check_batch(images, labels)
    return split_grads(single, params, (images, labels), config, options, workers=workers,
                       processes=processes)


def predict(params, images, config, *, workers=None, processes=None, **options):
    """:func:`minicrate.models.classifier.predict` (logits, no cache) with the batch split over
    ``workers`` chunks (:func:`split_map`)."""
    from minicrate.models.classifier import predict as single

    return split_map(single, params, (images,), config, options, workers=workers, processes=processes)


def forward(params, images, config, *, workers=None, **options):
    """:func:`minicrate.models.classifier.forward` over batch chunks in parallel threads.

    Returns:
        ``(logits, caches)``: logits for the whole batch and the list of the
        chunks' caches (each usable with :func:`minicrate.models.classifier.backward` on its
        rows of the logits' gradient).
    """
    from minicrate.models.classifier import forward as single

    xp = namespace(images)
    B = images.shape[0]
    workers = default_workers(xp) if workers is None else int(workers)
    results = map_chunks(lambda s: single(params, images[s, ...], config, **options), B, workers)
    return xp.concat([r[0] for r in results], axis=0), [r[1] for r in results]
