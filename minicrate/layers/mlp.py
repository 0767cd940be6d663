r"""The transformer's MLP, the step CRATE replaces with ISTA.

Rows are tokens: ``X`` is ``(..., N, d)``.  Two linear maps with the exact GELU
(:mod:`minicrate.ops.gelu`) between them, as timm's ``Mlp``:

.. math::
    A = XW_1^\top + b_1,\qquad H = \operatorname{GELU}(A) = A \odot \Phi(A),\qquad
    \operatorname{MLP}(X) = HW_2^\top + b_2,

with ``W1`` ``(h, d)`` and ``W2`` ``(d, h)`` (``h``, the hidden width, is
``mlp_ratio · d``; 4·d in ViT).  Against ISTA (:mod:`minicrate.layers.ista`):
ISTA has one square dictionary used three times (``D``, ``Dᵀ``, ``DᵀD``), no
bias, a ReLU with threshold ηλ and its warm start as an identity path; the MLP
has two free matrices of any hidden width, biases and a smooth activation, and
needs the residual connection around it.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_same_kind
from minicrate.ops.gelu import gelu_backward, normal_cdf


def _check_mlp_args(X, W1, b1, W2, b2):
    check_array(X, "X", min_ndim=1)
    check_array(W1, "W1", ndim=2)
    check_array(W2, "W2", ndim=2)
    for name, b in (("b1", b1), ("b2", b2)):
        if b is not None:
            check_array(b, name, ndim=1)
    check_same_kind(X=X, W1=W1, b1=b1, W2=W2, b2=b2)
    d = X.shape[-1]
    if W1.shape[1] != d:
        raise ValueError(f"W1 must have shape (h, d) with d = {d} (X's last axis, X of shape "
                         f"{tuple(X.shape)}), got {tuple(W1.shape)}")
    h = W1.shape[0]
    if tuple(W2.shape) != (d, h):
        raise ValueError(f"W2 must have shape (d, h) = ({d}, {h}) for W1 of shape {tuple(W1.shape)}, "
                         f"got {tuple(W2.shape)}")
    if b1 is not None and tuple(b1.shape) != (h,):
        raise ValueError(f"b1 must have shape (h,) = ({h},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (d,):
        raise ValueError(f"b2 must have shape (d,) = ({d},), got {tuple(b2.shape)}")


def mlp_forward(X, W1, b1, W2, b2):
    r"""The MLP :math:`\operatorname{GELU}(XW_1^\top + b_1)W_2^\top + b_2` of every token.

    Args:
        X: tokens (LN₂ of the attention output in a pre-norm block), ``(..., d)``.
        W1: first map ``(h, d)``; b1: its bias ``(h,)`` or ``None``.
        W2: second map ``(d, h)``; b2: its bias ``(d,)`` or ``None``.

    Returns:
        ``(Y, cache)``: Y of X's shape; ``cache["H"]`` is the hidden activation with one row
        per token, ``(M, h)`` (``cache["hidden_shape"]`` is ``(..., h)``).
    """
    _check_mlp_args(X, W1, b1, W2, b2)
    xp = namespace(X, W1)
    d, h = X.shape[-1], W1.shape[0]
    X2 = xp.reshape(X, (-1, d))  # every token a row: one matrix product per map
    A = X2 @ xp.matrix_transpose(W1)
    if b1 is not None:
        A = A + b1
    cdf = normal_cdf(A)
    H = A * cdf
    Y = H @ xp.matrix_transpose(W2)
    if b2 is not None:
        Y = Y + b2
    cache = {"X": X, "W1": W1, "W2": W2, "A": A, "cdf": cdf, "H": H, "has_bias": (b1 is not None, b2 is not None)}
    cache["hidden_shape"] = (*X.shape[:-1], h)
    return xp.reshape(Y, X.shape), cache


def mlp_backward(dY, cache):
    r"""Backward of :func:`mlp_forward`.

    .. math::
        \bar H = \bar YW_2,\quad \bar W_2 = \textstyle\sum\bar Y^\top H,\quad
        \bar A = \bar H \odot (\Phi(A) + A\,\varphi(A)),\quad
        \bar W_1 = \textstyle\sum\bar A^\top X,\quad \bar X = \bar AW_1

    (:func:`minicrate.ops.gelu.gelu_backward`; the biases' gradients are the column sums).

    Returns:
        ``(dX, grads)`` with ``"W1"``, ``"W2"`` and, when present in the forward, ``"b1"``, ``"b2"``.
    """
    check_cache(cache, "mlp_forward", keys=("X", "W1", "W2", "A", "cdf", "H", "has_bias"))
    X, W1, W2 = cache["X"], cache["W1"], cache["W2"]
    check_cotangent(dY, X.shape, X)
    xp = namespace(dY, W1)
    d = X.shape[-1]
    dY2 = xp.reshape(dY, (-1, d))
    has_b1, has_b2 = cache["has_bias"]
    grads = {"W2": xp.matrix_transpose(dY2) @ cache["H"]}
    if has_b2:
        grads["b2"] = xp.sum(dY2, axis=0)
    dA = gelu_backward(dY2 @ W2, cache["A"], cdf=cache["cdf"])
    grads["W1"] = xp.matrix_transpose(dA) @ xp.reshape(X, (-1, d))
    if has_b1:
        grads["b1"] = xp.sum(dA, axis=0)
    dX = xp.reshape(dA @ W1, X.shape)
    return dX, {k: grads[k] for k in ("W1", "b1", "W2", "b2") if k in grads}
