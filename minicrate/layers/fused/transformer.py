r"""The pre-norm transformer block, fused for speed and memory, as the CRATE layer is.

Same mathematics as :func:`minicrate.layers.transformer.transformer_block_forward` /
:func:`~minicrate.layers.transformer.transformer_block_backward`, which stay the readable
reference; ``tests/test_transformer_block.py`` checks this file against them.  The
tricks are those of :mod:`minicrate.layers.fused.encoder` (its numbered notes), with the
kernels of :mod:`minicrate.layers.fused.kernels`:

1. every per-token map is one product on the ``(B·N, ·)`` rows, and both LayerNorms'
   affine parts are folded into the small weight matrices (``X₁W_qkvᵀ = X̂₁(γ₁ ⊙ W_qkvᵀ) +
   β₁W_qkvᵀ``), so the normalised tokens are never formed;
2. queries, keys and values are copied once into contiguous ``(B·K, N, p)`` blocks;
3. the attention is computed and kept *transposed*: the block makes ``Sᵀ = s·K Qᵀ``
   and takes its column softmax, ``Aᵀ``, whose reductions run along NumPy's contiguous
   axis (:func:`~minicrate.layers.fused.kernels.softmax_transposed`; the scores are not
   symmetric here, but the column softmax of ``Sᵀ`` is ``Aᵀ`` all the same, and the causal
   mask is transposed with it); the softmax backward is taken in the same layout;
4. the cache keeps the normalised inputs, the heads, ``Aᵀ``, the MLP's pre-activation and
   Φ of it; the head outputs ``A V`` and the GELU output are recomputed in backward.

Only what :func:`supports` accepts is fused: the learned output map (``W_out``), biases
present or not.
"""

from __future__ import annotations

import math

from minicrate.core.backend import namespace
from minicrate.core.validate import (
    check_array,
    check_cotangent,
    check_int,
    check_keys,
    check_positive,
    check_same_kind,
)
from minicrate.layers.fused.kernels import (
    affine,
    affine_t_matmul,
    column_sums,
    layernorm_rows_backward,
    normalise,
    softmax_transposed,
)
from minicrate.layers.transformer import TRANSFORMER_KEYS, transformer_layer_shapes
from minicrate.ops.gelu import gelu_backward, normal_cdf
from minicrate.ops.heads import heads_to_rows, rows_to_heads


def supports(params):
    """True when :func:`block_forward` implements a block with these parameters (it has ``W_out``)."""
    return "W_out" in params


class FastBlockCache(dict):
    """What :func:`block_backward` needs, plus the plain cache's read-outs on demand:
    ``"attn_input"`` (LN₁(Z), recomputed), ``"output"``, ``"attn"`` (``{"A": attention}``)."""

    def __missing__(self, key):
        xp = namespace(self["Xh1"])
        lead = self["lead"]
        if key == "attn_input":
            X1 = affine(self["Xh1"], self["params"]["ln1_gamma"], self["params"]["ln1_beta"])
            return xp.reshape(X1, (*lead, X1.shape[-1]))
        if key == "output":
            return self["Y"]
        if key == "attn":
            A = xp.matrix_transpose(self["At"])
            return {"A": xp.reshape(A, (*lead[:-1], self["heads"], *A.shape[-2:]))}
        raise KeyError(key)


def block_forward(Z, params, *, heads, causal=False, scale=None, ln_eps=1e-5):
    r"""One pre-norm transformer block, fused:
    :math:`Z^{\ell+1/2} = Z + \mathrm{Attn}(\mathrm{LN}_1(Z))`,
    :math:`Y = Z^{\ell+1/2} + \mathrm{MLP}(\mathrm{LN}_2(Z^{\ell+1/2}))`.

    Args and returns as :func:`minicrate.layers.transformer.transformer_block_forward`
    (``params`` must hold ``W_out``); the cache is a :class:`FastBlockCache`.
    """
    check_array(Z, "Z", min_ndim=2)
    check_positive(ln_eps, "ln_eps")
    K = check_int(heads, "heads", minimum=1)
    check_keys(params, ("ln1_gamma", "ln1_beta", "W_qkv", "W_out", "ln2_gamma", "ln2_beta", "W1", "W2"))
    *lead, N, d = Z.shape
    W_qkv, W_out, W1, W2 = params["W_qkv"], params["W_out"], params["W1"], params["W2"]
    for k in ("W_qkv", "W1"):  # their shapes give the sizes the others are checked against
        check_array(params[k], f"params['{k}']", ndim=2)
    inner, h = W_qkv.shape[0] // 3, W1.shape[0]
    if W_qkv.shape[0] % (3 * K) or W_qkv.ndim != 2:
        raise ValueError(f"params['W_qkv'] must have shape (3·heads·p, d) with heads = {K}, got "
                         f"{tuple(W_qkv.shape)}")
    p = inner // K
    for k, shape in transformer_layer_shapes(d, K, p, h).items():
        if k in params:
            check_array(params[k], f"params['{k}']", shape=shape, ndim=len(shape))
    check_same_kind(Z=Z, **{k: params[k] for k in TRANSFORMER_KEYS if k in params})
    scale = 1.0 / math.sqrt(p) if scale is None else check_positive(scale, "scale")
    xp = namespace(Z, W_qkv)
    Z2 = xp.reshape(Z, (-1, d))
    Bf = Z2.shape[0] // N
    b_qkv, b_out, b1, b2 = (params.get(k) for k in ("b_qkv", "b_out", "b1", "b2"))
    g1, be1, g2, be2 = (params[k] for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta"))

    # attention on X1 = LN1(Z): qkv = X̂₁(γ₁ ⊙ W_qkvᵀ) + (β₁W_qkvᵀ + b_qkv)
    Xh1, mu1, inv1 = normalise(xp, Z2, ln_eps)
    Wt = xp.matrix_transpose(W_qkv)
    qkv = Xh1 @ (xp.expand_dims(g1, axis=-1) * Wt)
    qkv += be1 @ Wt if b_qkv is None else be1 @ Wt + b_qkv
    Qh, Kh, Vh = (rows_to_heads(qkv[:, i * inner:(i + 1) * inner], Bf, N, K, p) for i in range(3))
    del qkv
    St = Kh @ xp.matrix_transpose(Qh)  # Sᵀ: St[j, i] = k_j · q_i
    St *= scale
    At = softmax_transposed(xp, St, causal)  # Aᵀ, (Bf·K, N, N)
    H = heads_to_rows(xp.matrix_transpose(At) @ Vh, Bf, N, K, p)
    Zh = H @ xp.matrix_transpose(W_out)
    del H
    if b_out is not None:
        Zh += b_out
    Zh += Z2  # Z^{l+1/2}

    # MLP on X2 = LN2(Z^{l+1/2}): A = X̂₂(γ₂ ⊙ W1ᵀ) + (β₂W1ᵀ + b1), H = A Φ(A)
    Xh2, _, inv2 = normalise(xp, Zh, ln_eps)
    W1t = xp.matrix_transpose(W1)
    Apre = Xh2 @ (xp.expand_dims(g2, axis=-1) * W1t)
    Apre += be2 @ W1t if b1 is None else be2 @ W1t + b1
    cdf = normal_cdf(Apre)
    Y = (Apre * cdf) @ xp.matrix_transpose(W2)
    if b2 is not None:
        Y += b2
    Y += Zh
    Y = xp.reshape(Y, Z.shape)
    cache = FastBlockCache(Xh1=Xh1, inv1=inv1, Qh=Qh, Kh=Kh, Vh=Vh, At=At, Xh2=Xh2, inv2=inv2, Apre=Apre,
                           cdf=cdf, Y=Y, params=params, scale=scale, heads=K, lead=(*lead, N),
                           dims=(Bf, N, K, p, d), has_bias=tuple(k in params for k in ("b_qkv", "b_out", "b1", "b2")))
    return Y, cache


def _norm_linear_backward(xp, dH, W, Xh, inv, params, grads, ln, weight, bias):
    """Backward of ``H = LN(X) Wᵀ (+ b)`` on flattened rows, with ``LN(X) = γ ⊙ X̂ + β`` never
    formed (X̂ and the inverse deviations ``inv`` kept): fills ``grads[weight]``, ``grads[bias]``
    (when ``bias`` names one) and the LayerNorm's ``{ln}_gamma``/``{ln}_beta``; returns X̄."""
    gamma, beta = params[f"{ln}_gamma"], params[f"{ln}_beta"]
    grads[weight] = xp.matrix_transpose(affine_t_matmul(xp, Xh, gamma, beta, dH))
    if bias is not None:
        grads[bias] = column_sums(xp, dH)
    dX, grads[f"{ln}_gamma"], grads[f"{ln}_beta"] = layernorm_rows_backward(xp, dH @ W, Xh, inv, gamma)
    return dX


def block_backward(dY, cache):
    r"""Backward of :func:`block_forward` (the formulas of
    :func:`minicrate.layers.transformer.transformer_block_backward`, in the transposed
    attention layout: :math:`\bar A^\top = V\bar O^\top`,
    :math:`\bar S^\top = A^\top \odot (\bar A^\top - \mathrm{colsum}(A^\top\odot\bar A^\top))`,
    :math:`\bar Q = s\,(\bar S^\top)^\top K`, :math:`\bar K = s\,\bar S^\top Q`, :math:`\bar V = A^\top\bar O`).

    Returns:
        ``(dZ, grads)``, grads keyed like the block's params.
    """
    if not isinstance(cache, FastBlockCache):
        raise TypeError(f"cache must be the FastBlockCache from block_forward, got {type(cache).__name__}")
    check_cotangent(dY, cache["Y"].shape, cache["Y"])
    params = cache["params"]
    Bf, N, K, p, d = cache["dims"]
    has_b_qkv, has_b_out, has_b1, has_b2 = cache["has_bias"]
    W_qkv, W_out, W1, W2 = params["W_qkv"], params["W_out"], params["W1"], params["W2"]
    Qh, Kh, Vh, At, Apre, cdf = (cache[k] for k in ("Qh", "Kh", "Vh", "At", "Apre", "cdf"))
    xp = namespace(dY, W_qkv)
    grads = {}
    dY2 = xp.reshape(dY, (-1, d))

    # MLP
    grads["W2"] = xp.matrix_transpose(dY2) @ (Apre * cdf)
    if has_b2:
        grads["b2"] = column_sums(xp, dY2)
    dA = gelu_backward(dY2 @ W2, Apre, cdf=cdf)
    dZh = _norm_linear_backward(xp, dA, W1, cache["Xh2"], cache["inv2"], params, grads,
                                "ln2", "W1", "b1" if has_b1 else None)
    del dA
    dZh += dY2  # the MLP's residual

    # attention
    H = heads_to_rows(xp.matrix_transpose(At) @ Vh, Bf, N, K, p)
    grads["W_out"] = xp.matrix_transpose(dZh) @ H
    del H
    if has_b_out:
        grads["b_out"] = column_sums(xp, dZh)
    dO = rows_to_heads(dZh @ W_out, Bf, N, K, p)
    dV = At @ dO  # Aᵀ Ō
    dSt = Vh @ xp.matrix_transpose(dO)  # Āᵀ = V Ōᵀ
    del dO
    dSt -= xp.expand_dims(column_sums(xp, At * dSt), axis=-2)  # Āᵀ − rowsum(A ⊙ Ā), a row broadcast
    dSt *= At
    dSt *= cache["scale"]  # s S̄ᵀ
    dQ = xp.matrix_transpose(dSt) @ Kh
    dK = dSt @ Qh
    del dSt
    dqkv = xp.concat([heads_to_rows(g, Bf, N, K, p) for g in (dQ, dK, dV)], axis=-1)  # (Bf·N, 3Kp)
    del dQ, dK, dV
    dZ = _norm_linear_backward(xp, dqkv, W_qkv, cache["Xh1"], cache["inv1"], params, grads,
                               "ln1", "W_qkv", "b_qkv" if has_b_qkv else None)
    dZ += dZh  # the attention's residual
    grads = {k: grads[k] if k in grads else xp.zeros_like(v) for k, v in params.items()}
    return xp.reshape(dZ, dY.shape), grads
