#!/usr/bin/env python
"""Ways to compute the per-head attention products of config (a), timed alone on one thread.

One 64-image chunk of config (a) (what each worker computes) has B·K = 64 · 4 = 256 heads,
each with N = 17 tokens of width p = 16.  The fused layer runs the scores ``S = W Wᵀ`` and the
outputs ``A W`` as stacked ``matmul`` calls: 256 small BLAS products each.  Issue 21 asked
whether batching the heads differently pays; this script times the candidates on those shapes:

* ``matmul``: the fused layer's way, ``(256, 17, 16) @ (256, 16, 17)``;
* ``einsum``: the same contraction through ``np.einsum`` (no BLAS for batched operands);
* ``broadcast``: multiply and sum, ``(W[:, :, None, :] * W[:, None, :, :]).sum(-1)``;
* ``block-diagonal``: the heads of ``g`` images at once, one ``(g·17, 16) @ (16, g·17)``
  product per head index, of which only the diagonal blocks are kept (``g`` times the flops,
  ``g`` times fewer calls).

Usage::

    .venv/bin/python benchmarks/head_products.py            # float32, 200 repetitions each
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minicrate.training.parallel.split import one_thread_blas  # noqa: E402


def median_us(fn, repeats):
    """Median wall time of ``fn()`` in microseconds over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def block_diagonal(W, group):
    """Scores of ``group`` images' heads in one product per head index: ``(n, N, N)``."""
    n, N, p = W.shape
    G = W.reshape(n // group, group * N, p)
    S = G @ np.swapaxes(G, -1, -2)  # (n / group, group·N, group·N)
    idx = np.arange(group)
    blocks = S.reshape(n // group, group, N, group, N)[:, idx, :, idx, :]  # (group, n / group, N, N)
    return np.swapaxes(blocks, 0, 1).reshape(n, N, N)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((256, 17, 16)).astype(args.dtype)
    A = rng.standard_normal((256, 17, 17)).astype(args.dtype)
    Wt = np.swapaxes(W, -1, -2)
    reference = W @ Wt
    candidates = {
        "matmul S = W Wᵀ": lambda: W @ Wt,
        "einsum S": lambda: np.einsum("bnp,bmp->bnm", W, W),
        "broadcast S": lambda: (W[:, :, None, :] * W[:, None, :, :]).sum(-1),
        "block-diagonal S, 2 images": lambda: block_diagonal(W, 2),
        "block-diagonal S, 4 images": lambda: block_diagonal(W, 4),
        "matmul O = A W": lambda: A @ W,
        "einsum O": lambda: np.einsum("bnm,bmp->bnp", A, W),
    }
    print(f"256 heads of 17×16 ({args.dtype}), one BLAS thread, median of {args.repeats} calls")
    tol = 1e-4 if args.dtype == "float32" else 1e-12
    times = {}
    with one_thread_blas():
        for name, fn in candidates.items():
            if " S" in name and name != "matmul S = W Wᵀ":  # the same scores, whatever the route
                assert np.allclose(fn(), reference, rtol=tol, atol=tol), name
            times[name] = median_us(fn, args.repeats)
    base = times["matmul S = W Wᵀ"]
    for name, us in times.items():
        print(f"  {name:<30} {us:9.1f} µs   {us / base:5.2f} × matmul S")
    return 0


if __name__ == "__main__":
    sys.exit(main())
