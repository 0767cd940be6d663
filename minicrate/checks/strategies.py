"""Hypothesis strategies shared by the tests, the grader and the exercises.

Design: a strategy draws *sizes and a seed*, and the arrays are then generated
from that seed with NumPy on the host (float64) and moved to the requested
namespace.  Drawing entries one by one would let Hypothesis shrink towards
all-zero arrays, which sit exactly on ReLU kinks and make Gram matrices
singular -- places where a finite-difference check is meaningless.  Seeded
generation keeps every example well conditioned; Hypothesis still explores
and shrinks the sizes and the seed.

Needs the ``hypothesis`` package (``pip install minicrate[dev]``).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minicrate.core.backend import host_to

seeds = st.integers(min_value=0, max_value=2**32 - 1)
"""Seeds for :func:`numpy.random.default_rng`."""


def small_dims(min_value=1, max_value=6):
    """A small positive size (tokens N, width d, heads K, head width p)."""
    return st.integers(min_value=min_value, max_value=max_value)


bounded_floats = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, allow_infinity=False)
"""Finite floats of moderate size, for scalar hyper-parameters."""


@st.composite
def attention_shapes(draw, max_batch=2, max_tokens=5, max_heads=3, max_head_dim=3):
    """A dict ``B, N, K, p, d`` with ``d = K·p`` (the official code's choice)."""
    K = draw(small_dims(1, max_heads))
    p = draw(small_dims(1, max_head_dim))
    return {
        "B": draw(small_dims(1, max_batch)),
        "N": draw(small_dims(1, max_tokens)),
        "K": K,
        "p": p,
        "d": K * p,
    }


def normal(xp, shape, seed, scale=1.0, dtype="float64", device=None):
    """Seeded N(0, scale²) array of ``shape`` in namespace ``xp``."""
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return host_to(xp, values, dtype, device)


def orthonormal_bases(xp, K, d, p, seed, dtype="float64", device=None):
    """``U`` of shape ``(K, d, p)`` whose K·p columns are all orthonormal.

    The K subspaces are then mutually orthogonal (perfectly incoherent), as
    the theory assumes; needs K·p <= d.  Built from the QR factor of a Gaussian
    d×(K·p) matrix.
    """
    if K * p > d:
        raise ValueError(f"orthonormal bases need K*p <= d, got K={K}, p={p}, d={d}")
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, K * p)))
    U = Q.reshape(d, K, p).transpose(1, 0, 2)
    return host_to(xp, np.ascontiguousarray(U), dtype, device)


def union_of_subspaces(xp, U_host, n_per_subspace, seed, noise=0.05, dtype="float64", device=None):
    """Tokens (rows) drawn near a union of subspaces, CRATE's data model.

    Token i in group k is ``U_k a_i + noise · g``, then scaled to unit norm
    so that rate comparisons are not confounded by token size.

    Args:
        U_host: NumPy bases ``(K, d, p)``.
        n_per_subspace: tokens per subspace.

    Returns:
        ``(Z, labels)``: Z ``(K·n, d)`` in ``xp``; labels a NumPy int array.
    """
    rng = np.random.default_rng(seed)
    K, d, p = U_host.shape
    rows, labels = [], []
    for k in range(K):
        a = rng.standard_normal((n_per_subspace, p))
        rows.append(a @ U_host[k].T + noise * rng.standard_normal((n_per_subspace, d)))
        labels += [k] * n_per_subspace
    Z = np.concatenate(rows)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    return host_to(xp, Z, dtype, device), np.asarray(labels)


def well_conditioned_tokens(xp, shape, seed, dtype="float64", device=None):
    """Tokens ``(..., N, d)`` with entries of size about 1/√d.

    Keeps the Gram matrices I + cZZᵀ well conditioned for moderate c.
    """
    d = shape[-1]
    return normal(xp, shape, seed, scale=1.0 / np.sqrt(d), dtype=dtype, device=device)


def away_from_zero(xp, shape, seed, margin=0.1, dtype="float64", device=None):
    """Entries with |x| >= ``margin``: random sign times (margin + |N(0,1)|).

    For inputs of kinked functions (ReLU), so finite differences with a
    step well below ``margin`` never straddle the kink.
    """
    rng = np.random.default_rng(seed)
    values = np.sign(rng.standard_normal(shape)) * (margin + np.abs(rng.standard_normal(shape)))
    return host_to(xp, values, dtype, device)
