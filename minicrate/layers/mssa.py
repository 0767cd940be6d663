r"""Multi-head Subspace Self-Attention (MSSA), the compression step.

Rows are tokens: ``Z`` is ``(..., N, d)``.  For each head k the *same*
projection :math:`W_k = ZU_k` (N×p) serves as query, key and value:

.. math::
    S_k = s\,W_kW_k^\top,\qquad A_k = \operatorname{softmax}_{\text{row}}(S_k),
    \qquad O_k = A_kW_k,

    \operatorname{MSSA}(Z) = [O_1,\dots,O_K]\,W_{\text{out}}^\top + b_{\text{out}}.

Two forms (the paper's derivation and the released code differ):

* **official** (``model/crate.py``): a separate learned ``W_out`` ``(d, K·p)``
  with bias and temperature ``s = 1/√p``;
* **paper** (``W_out=None``): the output is tied to the bases,
  :math:`\sum_k O_k U_k^\top` times ``tied_scale`` (the paper's β makes it the
  paper's MSSA), no bias; the paper has ``s = 1``.

:func:`mssa_step` is the paper's whole compression step
:math:`(1-\kappa\beta)Z + \kappa\beta\,\operatorname{MSSA}(Z\mid U)`.

In the column notation of the paper :math:`W_k^{\text{paper}} = U_k^\top Z_{\text{paper}}`
and the column-softmax equals our row-softmax because :math:`S_k` is symmetric.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_cotangent,
    check_heads,
    check_positive,
    check_real,
    check_same_kind,
)
from minicrate.ops.functional import softmax, softmax_backward
from minicrate.ops.heads import bases_as_matrix, causal_mask, heads_to_tokens, tokens_to_heads


def _check_mssa_args(Z, U, W_out, b_out, scale):
    check_array(Z, "Z", min_ndim=2)
    K, p = check_heads(U, Z.shape[-1])
    if W_out is not None:
        check_array(W_out, "W_out", ndim=2)
    if b_out is not None:
        check_array(b_out, "b_out", ndim=1)
    check_same_kind(Z=Z, U=U, W_out=W_out, b_out=b_out)
    d = Z.shape[-1]
    if W_out is not None:
        if tuple(W_out.shape) != (d, K * p):
            raise ValueError(
                f"W_out must have shape (d, K*p) = ({d}, {K * p}) for U of shape "
                f"{tuple(U.shape)}, got {tuple(W_out.shape)}"
            )
    if b_out is not None:
        if W_out is None:
            raise ValueError("b_out must be None when W_out is None (the tied paper form has no bias)")
        check_array(b_out, "b_out", ndim=1, shape=(d,))
    if scale is None:
        return 1.0 / math.sqrt(p)
    return check_positive(scale, "scale")


def mssa_forward(Z, U, W_out, b_out, *, scale=None, causal=False, tied_scale=1.0):
    r"""MSSA of tokens ``Z``, in the released code's form or the paper's tied form.

    Args:
        Z: tokens (already normalised in the official layer), ``(..., N, d)``.
        U: subspace bases shared by query, key and value, ``(K, d, p)``.
        W_out: output map ``(d, K·p)``, or ``None`` for the tied paper form.
        b_out: output bias ``(d,)`` or ``None``.
        scale: softmax temperature s; ``None`` means ``1/√p`` (official).
        causal: mask future tokens (token i attends to j <= i), for language models.
        tied_scale: factor c of the tied output ``c·[U_1…U_K]`` (paper form only).

    Returns:
        ``(Y, cache)``: Y ``(..., N, d)``; ``cache["A"]`` is the attention
        ``(..., K, N, N)`` (rows sum to one).
    """
    scale = _check_mssa_args(Z, U, W_out, b_out, scale)
    tied_scale = check_real(tied_scale, "tied_scale")
    xp = namespace(Z, U)
    W = xp.expand_dims(Z, axis=-3) @ U  # (..., K, N, p)
    S = scale * (W @ xp.matrix_transpose(W))  # (..., K, N, N)
    N = Z.shape[-2]
    if causal:
        neg = xp.asarray(-xp.inf, dtype=S.dtype, device=device_of(S))
        S = xp.where(causal_mask(N, Z), S, neg)
    A = softmax(S, axis=-1)
    O = A @ W  # (..., K, N, p)
    H = heads_to_tokens(O)  # (..., N, K·p)
    if W_out is None:
        Y = tied_scale * (H @ xp.matrix_transpose(bases_as_matrix(U)))
    else:
        Y = H @ xp.matrix_transpose(W_out)
        if b_out is not None:
            Y = Y + b_out
    cache = {"Z": Z, "U": U, "W_out": W_out, "has_bias": b_out is not None, "W": W, "A": A,
             "H": H, "scale": scale, "tied_scale": tied_scale}
    return Y, cache



def mssa_step(Z, U, eps, kappa):
    r"""The paper's compression step: one MSSA approximation of :math:`Z - \kappa\nabla_Z R^c`.

    .. math::
        Z^{+} = (1 - \kappa\beta)\,Z + \kappa\beta\,\operatorname{MSSA}(Z \mid U),
        \qquad \beta = \frac{p}{N\epsilon^2},

        \operatorname{MSSA}(Z \mid U) = \beta \sum_{k=1}^K
        \operatorname{softmax}_{\text{row}}\!\big(W_kW_k^\top\big)\,W_k U_k^\top,
        \qquad W_k = ZU_k,

    with temperature 1 and tokens as rows.  This is the update Yu et al. derive from
    :math:`\nabla_Z R^c \approx \beta Z - \beta\operatorname{MSSA}(Z)` (first-order
    Neumann series, subspaces spanning :math:`\mathbb{R}^d`, softmax in place of the
    Gram matrix); β appears once inside MSSA and once in the step's coefficient κβ.
    It agrees with :math:`Z - \kappa\nabla_Z R^c` up to terms of order κβ².

    Args:
        Z: tokens ``(..., N, d)``.
        U: subspace bases ``(K, d, p)`` (orthonormal, spanning ``R^d``, in the theory).
        eps: quantisation precision ε > 0 of the coding rate.
        kappa: step size κ >= 0.

    Returns:
        the tokens after the step, Z's shape ``(..., N, d)``.
    """
    _check_mssa_args(Z, U, None, None, 1.0)
    eps = check_positive(eps, "eps")
    kappa = check_positive(kappa, "kappa", allow_zero=True)
    beta = U.shape[2] / (Z.shape[-2] * eps**2)
    M, _ = mssa_forward(Z, U, None, None, scale=1.0, tied_scale=beta)  # MSSA(Z | U), β inside
    return (1.0 - kappa * beta) * Z + (kappa * beta) * M

def _sum_to_2d(X):
    """Sum over every leading axis: (..., m, n) -> (m, n)."""
    xp = namespace(X)
    return xp.sum(xp.reshape(X, (-1, *X.shape[-2:])), axis=0)


def mssa_backward(dY, cache):
    r"""Backward of :func:`mssa_forward` (row convention).

    .. math::
        \bar H = \bar Y W_{\text{out}},\quad \bar A_k = \bar O_k W_k^\top,\quad
        \bar S_k = A_k \odot (\bar A_k - \operatorname{rowsum}(A_k\odot\bar A_k)),

        \bar W_k = A_k^\top \bar O_k + s(\bar S_k + \bar S_k^\top) W_k,\quad
        \bar U_k = Z^\top \bar W_k,\quad \bar Z = \textstyle\sum_k \bar W_k U_k^\top

    The :math:`\bar S_k^\top` term is there because query and key are the
    same tensor :math:`W_k`; dropping it is the classic shared-QKV bug.

    Returns:
        ``(dZ, grads)``; ``grads`` has ``"U"`` and, in the official form,
        ``"W_out"`` and ``"b_out"`` (when a bias was given).  In the tied
        form ``"U"`` includes the output path :math:`c\,\bar Y^\top O_k`.
    """
    check_cache(cache, "mssa_forward", keys=("Z", "U", "W_out", "W", "A", "H"))
    Z, U, W_out, W, A, H = (cache[k] for k in ("Z", "U", "W_out", "W", "A", "H"))
    check_cotangent(dY, Z.shape, Z)
    xp = namespace(dY, U)
    K = U.shape[0]
    grads = {}
    if W_out is None:
        c = cache["tied_scale"]
        dH = c * (dY @ bases_as_matrix(U))
        # Output path of the tied map: Y = c Σ_k O_k U_kᵀ  =>  dU_k += c Σ dYᵀ O_k.
        dU_out = c * _sum_to_2d(xp.matrix_transpose(dY) @ H)  # (d, K·p)
        dU = xp.permute_dims(xp.reshape(dU_out, (U.shape[1], K, U.shape[2])), (1, 0, 2))
    else:
        dH = dY @ W_out
        grads["W_out"] = _sum_to_2d(xp.matrix_transpose(dY) @ H)
        if cache["has_bias"]:
            grads["b_out"] = xp.sum(xp.reshape(dY, (-1, dY.shape[-1])), axis=0)
        dU = None
    dO = tokens_to_heads(dH, K)  # (..., K, N, p)
    dA = dO @ xp.matrix_transpose(W)
    dS = softmax_backward(dA, A, axis=-1)
    dW = xp.matrix_transpose(A) @ dO + cache["scale"] * ((dS + xp.matrix_transpose(dS)) @ W)
    dZ = xp.sum(dW @ xp.matrix_transpose(U), axis=-3)
    per_sample = xp.matrix_transpose(xp.expand_dims(Z, axis=-3)) @ dW  # (..., K, d, p)
    dU_in = xp.sum(xp.reshape(per_sample, (-1, *U.shape)), axis=0)
    grads["U"] = dU_in if dU is None else dU_in + dU
    return dZ, grads
