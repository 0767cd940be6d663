r"""ISTA, the sparsification step (the book's chapter *Sparsification*).

One non-negative proximal-gradient step on the LASSO problem
:math:`\min_{A\ge 0} \lambda\lVert A\rVert_1 + \tfrac12\lVert X - AD^\top\rVert_F^2`
(rows are tokens, so the paper's :math:`Z \approx DA` reads :math:`X \approx AD^\top`),
warm-started at :math:`A_0 = X`:

.. math:: Y = \operatorname{ReLU}\big(X + \eta(XD - XD^\top D) - \eta\lambda\big)

This is the official code's ``FeedForward`` with ``D`` stored as there
(``(d, d)``).  Computed with two matrix products as
:math:`X + \eta\,(X - XD^\top)\,D - \eta\lambda`.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_positive, check_same_kind


def ista_forward(X, D, *, eta=0.1, lam=0.1):
    """One ISTA step, as ``FeedForward`` in the official ``model/crate.py``.

    Args:
        X: tokens (LN₂ of the MSSA output in the official layer), ``(..., N, d)``.
        D: square dictionary, ``(d, d)``.
        eta: step size η >= 0 (0.1 in the official code).
        lam: sparsity weight λ >= 0 (0.1; 0.5 in the CRATE-MAE encoder).

    Returns:
        ``(Y, cache)``: Y >= 0 of X's shape.
    """
    check_array(X, "X", min_ndim=1)
    d = X.shape[-1]
    check_array(D, "D", ndim=2)
    if tuple(D.shape) != (d, d):
        raise ValueError(f"D must have shape (d, d) = ({d}, {d}) for X of shape {tuple(X.shape)}, got {tuple(D.shape)}")
    check_same_kind(X=X, D=D)
    eta = check_positive(eta, "eta", allow_zero=True)
    lam = check_positive(lam, "lam", allow_zero=True)
    xp = namespace(X, D)
    residual = X - X @ xp.matrix_transpose(D)  # X − X Dᵀ
    P = X + eta * (residual @ D) - eta * lam
    active = P > 0
    Y = xp.where(active, P, xp.zeros_like(P))
    return Y, {"X": X, "D": D, "active": active, "eta": eta}


def ista_backward(dY, cache):
    r"""Backward of :func:`ista_forward` (tokens as rows).

    .. math:: \bar P = \bar Y \odot 1[P > 0],\quad
              \bar X = \bar P + \eta(\bar P D^\top - \bar P D^\top D),\quad
              \bar D = \eta\,[G - D(G + G^\top)],\ G = X^\top\bar P

    (the ReLU passes gradient only where its input was positive; 0 at the kink).

    Returns:
        ``(dX, {"D": dD})``; dD sums over all tokens and samples.
    """
    check_cache(cache, "ista_forward", keys=("X", "D", "active", "eta"))
    X, D, active, eta = cache["X"], cache["D"], cache["active"], cache["eta"]
    check_cotangent(dY, X.shape, X)
    xp = namespace(dY, D)
    dP = xp.where(active, dY, xp.zeros_like(dY))
    V = dP @ xp.matrix_transpose(D)  # P̄ Dᵀ
    dX = dP + eta * (V - V @ D)
    d = X.shape[-1]
    G = xp.matrix_transpose(xp.reshape(X, (-1, d))) @ xp.reshape(dP, (-1, d))
    dD = eta * (G - D @ (G + xp.matrix_transpose(G)))
    return dX, {"D": dD}


def lasso_objective(A, X, D, lam):
    r"""Non-negative LASSO objective that ISTA steps on, per sample (rows):
    :math:`\lambda\lVert A\rVert_1 + \tfrac12\lVert X - AD^\top\rVert_F^2`
    (+∞ is not returned for negative A; the caller keeps A >= 0)."""
    check_array(X, "X", min_ndim=1)
    check_array(A, "A")
    if tuple(A.shape) != tuple(X.shape):
        raise ValueError(f"A must have the shape of X {tuple(X.shape)}, got {tuple(A.shape)}")
    d = X.shape[-1]
    check_array(D, "D", ndim=2, shape=(d, d))
    check_same_kind(A=A, X=X, D=D)
    lam = check_positive(lam, "lam", allow_zero=True)
    xp = namespace(A, X, D)
    R = X - A @ xp.matrix_transpose(D)
    return lam * xp.sum(xp.sum(xp.abs(A), axis=-1), axis=-1) + 0.5 * xp.sum(xp.sum(R * R, axis=-1), axis=-1)
