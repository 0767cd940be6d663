r"""Standard multi-head self-attention (ViT, GPT, BERT), the transformer's mixing step.

Rows are tokens: ``X`` is ``(..., N, d)``.  One linear map makes queries, keys
and values, in the layout of timm's ``Attention`` (``W_qkv`` ``(3·K·p, d)``, its
rows stacked q; k; v, each block split into K heads of p rows):

.. math::
    [Q, K, V] = X W_{qkv}^\top + b_{qkv},\qquad
    S_k = s\,Q_kK_k^\top,\qquad A_k = \operatorname{softmax}_{\text{row}}(S_k),\qquad
    O_k = A_kV_k,

    \operatorname{Attn}(X) = [O_1,\dots,O_K]\,W_{\text{out}}^\top + b_{\text{out}},

with :math:`s = p^{-1/2}` and, for language models, the causal mask (token i
attends to j <= i).  Against CRATE's MSSA (:mod:`minicrate.layers.mssa`), the only
difference inside the block is that query, key and value are three *different*
projections (MSSA uses one, :math:`Q_k = K_k = V_k = XU_k`), and they may carry a
bias.  So the score gradient splits into two terms,
:math:`\bar Q_k = s\bar S_kK_k` and :math:`\bar K_k = s\bar S_k^\top Q_k`, where
MSSA adds them onto one tensor.

``W_out=None`` leaves out the output projection (``Attn(X) = [O_1 … O_K]``, so
``K·p`` must equal ``d``): the released CRATE code does this when
``heads == 1`` and ``p == d``.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_cotangent,
    check_int,
    check_positive,
    check_same_kind,
)
from minicrate.ops.functional import softmax, softmax_backward
from minicrate.ops.heads import causal_mask, heads_to_tokens, tokens_to_heads


def _check_attention_args(X, W_qkv, b_qkv, W_out, b_out, heads, scale):
    check_array(X, "X", min_ndim=2)
    heads = check_int(heads, "heads", minimum=1)
    check_array(W_qkv, "W_qkv", ndim=2)
    for name, b in (("b_qkv", b_qkv), ("b_out", b_out)):
        if b is not None:
            check_array(b, name, ndim=1)
    if W_out is not None:
        check_array(W_out, "W_out", ndim=2)
    check_same_kind(X=X, W_qkv=W_qkv, b_qkv=b_qkv, W_out=W_out, b_out=b_out)
    d = X.shape[-1]
    rows = W_qkv.shape[0]
    if W_qkv.shape[1] != d or rows % (3 * heads):
        raise ValueError(
            f"W_qkv must have shape (3·heads·p, d) = (3·{heads}·p, {d}) for X of shape {tuple(X.shape)} "
            f"and heads = {heads}, got {tuple(W_qkv.shape)}"
        )
    inner = rows // 3
    if b_qkv is not None and tuple(b_qkv.shape) != (rows,):
        raise ValueError(f"b_qkv must have shape (3·heads·p,) = ({rows},), got {tuple(b_qkv.shape)}")
    if W_out is None:
        if b_out is not None:
            raise ValueError("b_out must be None when W_out is None (no output projection)")
        if inner != d:
            raise ValueError(
                f"W_out=None (no output projection) needs heads·p = d = {d}, got heads·p = {inner} "
                f"(W_qkv of shape {tuple(W_qkv.shape)})"
            )
    elif tuple(W_out.shape) != (d, inner):
        raise ValueError(
            f"W_out must have shape (d, heads·p) = ({d}, {inner}) for W_qkv of shape "
            f"{tuple(W_qkv.shape)}, got {tuple(W_out.shape)}"
        )
    if b_out is not None and tuple(b_out.shape) != (d,):
        raise ValueError(f"b_out must have shape (d,) = ({d},), got {tuple(b_out.shape)}")
    p = inner // heads
    return heads, p, 1.0 / math.sqrt(p) if scale is None else check_positive(scale, "scale")


def _rows(X):
    """(..., n) -> (M, n): every token a row, so each token map is one matrix product."""
    return namespace(X).reshape(X, (-1, X.shape[-1]))


def attention_forward(X, W_qkv, b_qkv, W_out, b_out, *, heads, causal=False, scale=None):
    r"""Multi-head self-attention of tokens ``X`` (timm layout).

    Args:
        X: tokens (LN₁ of the layer input in a pre-norm block), ``(..., N, d)``.
        W_qkv: query, key and value maps stacked, ``(3·K·p, d)``.
        b_qkv: their bias ``(3·K·p,)`` or ``None``.
        W_out: output map ``(d, K·p)``, or ``None`` for none (needs ``K·p = d``).
        b_out: output bias ``(d,)`` or ``None``.
        heads: K.
        causal: mask future tokens (token i attends to j <= i).
        scale: softmax temperature s; ``None`` means ``1/√p``.

    Returns:
        ``(Y, cache)``: Y ``(..., N, d)``; ``cache["A"]`` is the attention
        ``(..., K, N, N)`` (rows sum to one).
    """
    K, p, scale = _check_attention_args(X, W_qkv, b_qkv, W_out, b_out, heads, scale)
    xp = namespace(X, W_qkv)
    lead, N, inner = X.shape[:-2], X.shape[-2], K * p
    qkv = _rows(X) @ xp.matrix_transpose(W_qkv)
    if b_qkv is not None:
        qkv = qkv + b_qkv
    qkv = xp.reshape(qkv, (*lead, N, 3 * inner))
    Q, Kt, V = (tokens_to_heads(qkv[..., i * inner:(i + 1) * inner], K) for i in range(3))  # (..., K, N, p)
    S = scale * (Q @ xp.matrix_transpose(Kt))
    if causal:
        S = xp.where(causal_mask(N, X), S, xp.asarray(-xp.inf, dtype=S.dtype, device=device_of(S)))
    A = softmax(S, axis=-1)
    H = heads_to_tokens(A @ V)  # (..., N, K·p)
    if W_out is None:
        Y = H
    else:
        Y = xp.reshape(_rows(H) @ xp.matrix_transpose(W_out), (*lead, N, X.shape[-1]))
        if b_out is not None:
            Y = Y + b_out
    cache = {"X": X, "W_qkv": W_qkv, "W_out": W_out, "has_bias": (b_qkv is not None, b_out is not None),
             "Q": Q, "K": Kt, "V": V, "A": A, "H": H, "scale": scale, "heads": K}
    return Y, cache


def attention_backward(dY, cache):
    r"""Backward of :func:`attention_forward` (row convention).

    .. math::
        \bar H = \bar Y W_{\text{out}},\quad \bar W_{\text{out}} = \textstyle\sum \bar Y^\top H,\quad
        \bar A_k = \bar O_k V_k^\top,\quad \bar V_k = A_k^\top\bar O_k,

        \bar S_k = A_k \odot (\bar A_k - \operatorname{rowsum}(A_k\odot\bar A_k)),\quad
        \bar Q_k = s\,\bar S_kK_k,\quad \bar K_k = s\,\bar S_k^\top Q_k,

        \bar X = [\bar Q, \bar K, \bar V]\,W_{qkv},\quad
        \bar W_{qkv} = \textstyle\sum [\bar Q, \bar K, \bar V]^\top X

    (sums over tokens and samples; the biases' gradients are the column sums).

    Returns:
        ``(dX, grads)``; ``grads`` has ``"W_qkv"`` and, when present in the forward,
        ``"b_qkv"``, ``"W_out"`` and ``"b_out"``.
    """
    check_cache(cache, "attention_forward", keys=("X", "W_qkv", "W_out", "Q", "K", "V", "A", "H", "scale"))
    X, W_qkv, W_out, A, H = (cache[k] for k in ("X", "W_qkv", "W_out", "A", "H"))
    check_cotangent(dY, X.shape, X)
    xp = namespace(dY, W_qkv)
    has_b_qkv, has_b_out = cache["has_bias"]
    K, s = cache["heads"], cache["scale"]
    grads = {}
    if W_out is None:
        dH = dY
    else:
        dY2 = _rows(dY)
        grads["W_out"] = xp.matrix_transpose(dY2) @ _rows(H)
        if has_b_out:
            grads["b_out"] = xp.sum(dY2, axis=0)
        dH = xp.reshape(dY2 @ W_out, H.shape)
    dO = tokens_to_heads(dH, K)  # (..., K, N, p)
    dA = dO @ xp.matrix_transpose(cache["V"])
    dV = xp.matrix_transpose(A) @ dO
    dS = softmax_backward(dA, A, axis=-1)
    dQ = s * (dS @ cache["K"])
    dK = s * (xp.matrix_transpose(dS) @ cache["Q"])
    dqkv = _rows(xp.concat([heads_to_tokens(dQ), heads_to_tokens(dK), heads_to_tokens(dV)], axis=-1))
    grads["W_qkv"] = xp.matrix_transpose(dqkv) @ _rows(X)
    if has_b_qkv:
        grads["b_qkv"] = xp.sum(dqkv, axis=0)
    dX = xp.reshape(dqkv @ W_qkv, X.shape)
    return dX, {k: grads[k] for k in ("W_qkv", "b_qkv", "W_out", "b_out") if k in grads}
