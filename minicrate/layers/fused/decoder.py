"""The decoder layer (:mod:`minicrate.layers.decoder`), fused for training speed
(released form: learned W_out, LayerNorms).

Fused the way :mod:`minicrate.layers.fused.encoder` fuses the encoder layer, with the
same kernels (:mod:`minicrate.layers.fused.kernels`); ``tests/test_decoder.py`` checks
it against the plain layer.
"""

from __future__ import annotations

import math

from minicrate.core.backend import namespace
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_cotangent,
    check_heads,
    check_positive,
    check_same_kind,
)
from minicrate.layers.fused.kernels import (
    affine,
    column_sums,
    layernorm_rows_backward,
    normalise,
    softmax_transposed,
)
from minicrate.ops.heads import bases_as_matrix, heads_to_rows, rows_to_heads


def fast_supports(*, tie_out=False, use_layernorm=True, project_out=True, **_):
    """True when :func:`fast_decoder_layer_forward` implements these switches
    (the released form: learned W_out, LayerNorms)."""
    return not tie_out and use_layernorm and project_out


def fast_decoder_layer_forward(Z, params, *, scale=None, causal=False, ln_eps=1e-5, **unused):
    r""":func:`decoder_layer_forward` in the released form, fused the way
    :mod:`minicrate.layers.fused.encoder` fuses the encoder layer: every per-token map is one
    product on the flattened ``(B·N, d)`` rows, the heads are one contiguous
    ``(B·K, N, p)`` block, the (symmetric-score) attention is stored transposed
    and cheap intermediates are recomputed in backward.  Same mathematics;
    ``tests/test_decoder.py`` checks it against the plain layer.

    Returns:
        ``(Y, cache)``, Y of Z's shape.
    """
    if not fast_supports(**unused):
        raise ValueError(f"the fused decoder layer implements the released form only, got {unused}")
    check_array(Z, "Z", min_ndim=2)
    E, U, W_out, b_out = params["E"], params["U"], params["W_out"], params.get("b_out")
    *_, N, d = Z.shape
    K, p = check_heads(U, d)
    check_same_kind(Z=Z, E=E, U=U, W_out=W_out, b_out=b_out)
    check_array(E, "E", shape=(d, d), ndim=2)
    check_array(W_out, "W_out", shape=(d, K * p), ndim=2)
    scale = 1.0 / math.sqrt(p) if scale is None else check_positive(scale, "scale")
    xp = namespace(Z, U)
    Z2 = xp.reshape(Z, (-1, d))
    Bf = Z2.shape[0] // N
    Xh1, _, inv1 = normalise(xp, Z2, ln_eps)
    Zh = affine(Xh1, params["ln1_gamma"], params["ln1_beta"]) @ xp.matrix_transpose(E)  # Z^{l+1/2}
    Xh2, _, inv2 = normalise(xp, Zh, ln_eps)
    X2 = affine(Xh2, params["ln2_gamma"], params["ln2_beta"])
    Wh = rows_to_heads(X2 @ bases_as_matrix(U), Bf, N, K, p)
    del X2
    S = Wh @ xp.matrix_transpose(Wh)
    S *= scale
    At = softmax_transposed(xp, S, causal)
    H = heads_to_rows(xp.matrix_transpose(At) @ Wh, Bf, N, K, p)
    M = H @ xp.matrix_transpose(W_out)
    del H
    if b_out is not None:
        M += b_out
    Y = Zh - M
    cache = {"Xh1": Xh1, "inv1": inv1, "Xh2": Xh2, "inv2": inv2, "Wh": Wh, "At": At, "params": params,
             "scale": scale, "dims": (Bf, N, K, p, d), "has_bias": b_out is not None, "shape": Z.shape}
    return xp.reshape(Y, Z.shape), cache


def fast_decoder_layer_backward(dY, cache):
    """Backward of :func:`fast_decoder_layer_forward` (the steps of
    :func:`decoder_layer_backward`) -> ``(dZ, grads)`` keyed like the params."""
    check_cache(cache, "fast_decoder_layer_forward", keys=("Xh1", "inv1", "Xh2", "inv2", "Wh", "At", "params"))
    check_cotangent(dY, cache["shape"], cache["Xh1"])
    params = cache["params"]
    Bf, N, K, p, d = cache["dims"]
    E, U, W_out = params["E"], params["U"], params["W_out"]
    Wh, At, Xh1, Xh2, scale = cache["Wh"], cache["At"], cache["Xh1"], cache["Xh2"], cache["scale"]
    xp = namespace(dY, U)
    grads = {}
    dY2 = xp.reshape(dY, (-1, d))
    dM = -dY2  # the MSSA branch is subtracted
    A = xp.matrix_transpose(At)
    H = heads_to_rows(A @ Wh, Bf, N, K, p)
    grads["W_out"] = xp.matrix_transpose(dM) @ H
    del H
    if cache["has_bias"]:
        grads["b_out"] = column_sums(xp, dM)
    dO = rows_to_heads(dM @ W_out, Bf, N, K, p)
    dAt = Wh @ xp.matrix_transpose(dO)
    dAt -= xp.expand_dims(column_sums(xp, At * dAt), axis=-2)
    dAt *= At  # S̄ᵀ
    dSym = dAt + xp.matrix_transpose(dAt)
    del dAt
    dSym *= scale
    dWh = At @ dO
    del dO
    dWh += dSym @ Wh
    del dSym
    dWf = heads_to_rows(dWh, Bf, N, K, p)
    del dWh
    X2 = affine(Xh2, params["ln2_gamma"], params["ln2_beta"])
    grads["U"] = xp.permute_dims(xp.reshape(xp.matrix_transpose(X2) @ dWf, (d, K, p)), (1, 0, 2))
    del X2
    dX2 = dWf @ xp.matrix_transpose(bases_as_matrix(U))
    del dWf
    dZh, grads["ln2_gamma"], grads["ln2_beta"] = layernorm_rows_backward(xp, dX2, Xh2, cache["inv2"],
                                                                     params["ln2_gamma"])
    dZh += dY2  # the skip around MSSA
    X1 = affine(Xh1, params["ln1_gamma"], params["ln1_beta"])
    grads["E"] = xp.matrix_transpose(dZh) @ X1
    del X1
    dX1 = dZh @ E
    dZ, grads["ln1_gamma"], grads["ln1_beta"] = layernorm_rows_backward(xp, dX1, Xh1, cache["inv1"],
                                                                    params["ln1_gamma"])
    grads = {k: grads[k] if k in grads else xp.zeros_like(v) for k, v in params.items()}
    return xp.reshape(dZ, cache["shape"]), grads
