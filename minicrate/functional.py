r"""Small building blocks: linear map, softmax, ReLU.

Linear layers store their weight as ``(out, in)`` like ``torch.nn.Linear``, so
``Y = X Wᵀ + b`` and official checkpoints map one to one.
"""

from __future__ import annotations

from .backend import namespace
from .validate import check_array, check_same_kind


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
    X, W, has_bias = cache
    xp = namespace(dY, W)
    dX = dY @ W
    dY2 = xp.reshape(dY, (-1, dY.shape[-1]))
    X2 = xp.reshape(X, (-1, X.shape[-1]))
    grads = {"W": xp.matrix_transpose(dY2) @ X2}
    if has_bias:
        grads["b"] = xp.sum(dY2, axis=0)
    return dX, grads


def softmax(S, axis=-1):
    r"""Numerically stable softmax :math:`e^{s_i - \max s} / \sum_j e^{s_j - \max s}`.

    Subtracting the maximum changes nothing mathematically but keeps
    ``exp`` from overflowing (logits of ±1e4 are fine).  Rows that are
    entirely ``-inf`` (fully masked) are not supported.
    """
    xp = namespace(S)
    shifted = S - xp.max(S, axis=axis, keepdims=True)
    E = xp.exp(shifted)
    return E / xp.sum(E, axis=axis, keepdims=True)


def softmax_backward(dA, A, axis=-1):
    r"""Vector-Jacobian product of the softmax, spec §8.2:
    :math:`\bar S = A \odot (\bar A - \langle A, \bar A\rangle)`, the inner
    product taken along ``axis`` (each softmax row subtracts its own)."""
    xp = namespace(dA, A)
    return A * (dA - xp.sum(A * dA, axis=axis, keepdims=True))


def relu(X):
    """max(X, 0)."""
    xp = namespace(X)
    return xp.where(X > 0, X, xp.zeros_like(X))
