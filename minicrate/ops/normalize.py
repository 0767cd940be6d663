r"""ℓ2 normalisation of rows and weight normalisation of a linear map, each with its backward.

Both appear in self-supervised heads (the book's chapter *Learning without labels*):
DINO and SimDINO put every feature on the unit sphere, and DINO's prototype layer is
weight-normalised (Salimans & Kingma 2016) so that each prototype is a unit vector.

ℓ2 normalisation of a row :math:`x` with :math:`n = \max(\lVert x\rVert, \epsilon)`:

.. math:: y = x / n,\qquad
          \bar x = \frac{1}{n}\big(\bar y - y\,\langle y, \bar y\rangle\big)\ \ (n > \epsilon),
          \qquad \bar x = \bar y/\epsilon\ \ (n = \epsilon)

(the Jacobian :math:`(I - yy^\top)/n` removes the radial part of the cotangent).

Weight normalisation of the rows of :math:`V` (one row per output unit, as
:func:`minicrate.ops.functional.linear_forward` stores ``W``), with gains ``g``:

.. math:: W_k = g_k\,\frac{V_k}{\lVert V_k\rVert},\qquad
          \bar g_k = \langle u_k, \bar W_k\rangle,\qquad
          \bar V_k = \frac{g_k}{\lVert V_k\rVert}\big(\bar W_k - u_k\langle u_k, \bar W_k\rangle\big)

with :math:`u_k = V_k/\lVert V_k\rVert`.  ``g=None`` fixes every gain at 1, DINO's default
(``norm_last_layer=True``: the paper reports that freezing g keeps training stable).
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_positive, check_same_kind


def l2_normalize_forward(X, *, eps=1e-12):
    """Each row of ``X`` ``(..., m)`` divided by its length (at least ``eps``).

    Returns:
        ``(Y, cache)``, Y of X's shape with unit rows.
    """
    check_array(X, "X", min_ndim=1)
    eps = check_positive(eps, "eps")
    xp = namespace(X)
    norm = xp.sqrt(xp.sum(X * X, axis=-1, keepdims=True))
    clipped = xp.maximum(norm, xp.asarray(eps, dtype=X.dtype))
    Y = X / clipped
    return Y, {"Y": Y, "norm": clipped, "active": norm > eps}


def l2_normalize_backward(dY, cache):
    """Backward of :func:`l2_normalize_forward`: ``dX`` of ``dY``'s shape."""
    check_cache(cache, "l2_normalize_forward", keys=("Y", "norm", "active"))
    Y, norm, active = cache["Y"], cache["norm"], cache["active"]
    check_cotangent(dY, tuple(Y.shape), Y, name="dY")
    xp = namespace(dY)
    radial = Y * xp.sum(Y * dY, axis=-1, keepdims=True)
    return xp.where(active, dY - radial, dY) / norm


def weight_norm_forward(V, g=None):
    """Rows of ``V`` ``(K, m)`` rescaled to length ``g`` ``(K,)`` (``None``: length 1).

    Returns:
        ``(W, cache)``, W ``(K, m)``.
    """
    check_array(V, "V", ndim=2)
    if g is not None:
        check_array(g, "g", shape=(V.shape[0],), ndim=1)
        check_same_kind(V=V, g=g)
    xp = namespace(V)
    norm = xp.sqrt(xp.sum(V * V, axis=-1, keepdims=True))
    if not bool(xp.all(norm > 0)):
        raise ValueError("weight_norm_forward: every row of V must be non-zero (a zero row has no direction)")
    U = V / norm
    W = U if g is None else xp.reshape(g, (-1, 1)) * U
    return W, {"U": U, "norm": norm, "g": g}


def weight_norm_backward(dW, cache):
    """Backward of :func:`weight_norm_forward`.

    Returns:
        ``(dV, grads)``: dV ``(K, m)``; grads ``{"g": (K,)}``, or ``{}`` when the gains are fixed.
    """
    check_cache(cache, "weight_norm_forward", keys=("U", "norm", "g"))
    U, norm, g = cache["U"], cache["norm"], cache["g"]
    check_cotangent(dW, tuple(U.shape), U, name="dW")
    xp = namespace(dW)
    along = xp.sum(U * dW, axis=-1, keepdims=True)  # <u_k, dW_k>
    scale = 1.0 / norm if g is None else xp.reshape(g, (-1, 1)) / norm
    dV = scale * (dW - U * along)
    return dV, ({} if g is None else {"g": xp.reshape(along, (-1,))})
