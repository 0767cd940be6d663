r"""Small building blocks: linear map, softmax, ReLU.

Linear layers store their weight as ``(out, in)`` like ``torch.nn.Linear``, so
``Y = X Wᵀ + b`` and official checkpoints map one to one.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_cotangent,
    check_int,
    check_same_kind,
    finite_checks_enabled,
)


def linear_forward(X, W, b=None):
    r"""Affine map on the last axis: :math:`Y = XW^\top + b`.

    Args:
        X: inputs, shape ``(..., n_in)``.
        W: weight, shape ``(n_out, n_in)``.
        b: bias ``(n_out,)`` or ``None``.

    Returns:
        ``(Y, cache)`` with Y of shape ``(..., n_out)``.
    """
    check_array(X, "X", min_ndim=1)
    check_array(W, "W", ndim=2)
    if b is not None:
        check_array(b, "b", ndim=1)
    check_same_kind(X=X, W=W, b=b)
    if X.shape[-1] != W.shape[1]:
        raise ValueError(
            f"X's last axis ({X.shape[-1]}) must equal W's second axis: X has shape "
            f"{tuple(X.shape)}, W has shape {tuple(W.shape)} (stored as (out, in))"
        )
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"b must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    xp = namespace(X, W)
    Y = X @ xp.matrix_transpose(W)
    if b is not None:
        Y = Y + b
    return Y, (X, W, b is not None)


def linear_backward(dY, cache):
    r"""Backward of :func:`linear_forward`.

    .. math:: \bar X = \bar Y W,\quad \bar W = \textstyle\sum \bar Y^\top X,
              \quad \bar b = \textstyle\sum \bar Y  (sums over all leading axes)

    Returns:
        ``(dX, {"W": dW, "b": db})`` (``"b"`` only when the forward had a bias).
    """
    X, W, has_bias = check_cache(cache, "linear_forward", length=3)
    check_cotangent(dY, (*X.shape[:-1], W.shape[0]), W)
    xp = namespace(dY, W)
    dX = dY @ W
    dY2 = xp.reshape(dY, (-1, dY.shape[-1]))
    X2 = xp.reshape(X, (-1, X.shape[-1]))
    grads = {"W": xp.matrix_transpose(dY2) @ X2}
    if has_bias:
        grads["b"] = xp.sum(dY2, axis=0)
    return dX, grads


def _check_axis(axis, S):
    axis = check_int(axis, "axis")
    if not -S.ndim <= axis < S.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(S.shape)}")
    return axis


def softmax(S, axis=-1):
    r"""Numerically stable softmax :math:`e^{s_i - \max s} / \sum_j e^{s_j - \max s}`.

    Subtracting the maximum changes nothing mathematically but keeps
    ``exp`` from overflowing (logits of ±1e4 are fine).  ``-inf`` entries
    are masked out (weight 0); NaN, ``+inf`` and rows that are entirely
    ``-inf`` (nothing to normalise) raise ``ValueError``.
    """
    check_array(S, "S", min_ndim=1, finite=False)
    axis = _check_axis(axis, S)
    xp = namespace(S)
    row_max = xp.max(S, axis=axis, keepdims=True)  # NaN, +inf or a fully masked row show here
    if finite_checks_enabled() and not bool(xp.all(xp.isfinite(row_max))):
        raise ValueError(
            f"S ({tuple(S.shape)}) has a row along axis {axis} containing NaN or +inf, or entirely "
            "-inf (fully masked): its softmax is undefined"
        )
    shifted = S - row_max
    E = xp.exp(shifted)
    return E / xp.sum(E, axis=axis, keepdims=True)


def softmax_backward(dA, A, axis=-1):
    r"""Vector-Jacobian product of the softmax (book, *Backpropagation by hand*):
    :math:`\bar S = A \odot (\bar A - \langle A, \bar A\rangle)`, the inner
    product taken along ``axis`` (each softmax row subtracts its own)."""
    check_array(A, "A", min_ndim=1)
    check_array(dA, "dA")
    if tuple(dA.shape) != tuple(A.shape):
        raise ValueError(f"dA must have the shape of A {tuple(A.shape)}, got {tuple(dA.shape)}")
    check_same_kind(dA=dA, A=A)
    axis = _check_axis(axis, A)
    xp = namespace(dA, A)
    return A * (dA - xp.sum(A * dA, axis=axis, keepdims=True))


def relu(X):
    """max(X, 0)."""
    check_array(X, "X")
    xp = namespace(X)
    return xp.where(X > 0, X, xp.zeros_like(X))
