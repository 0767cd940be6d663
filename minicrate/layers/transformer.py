r"""One pre-norm transformer block (ViT, GPT-2, BERT as timm writes them) and its backward.

.. math:: Z^{\ell+1/2} = Z^\ell + \operatorname{Attn}(\operatorname{LN}_1(Z^\ell)),
          \qquad Z^{\ell+1} = Z^{\ell+1/2} + \operatorname{MLP}(\operatorname{LN}_2(Z^{\ell+1/2}))

Next to the CRATE layer (:mod:`minicrate.layers.encoder`) it differs in two places:
the attention has separate query, key and value maps with biases
(:mod:`minicrate.layers.attention`) where MSSA has one shared map ``U``, and the
MLP (:mod:`minicrate.layers.mlp`) takes ISTA's place -- *with* a residual
connection around it, where ISTA has none.

Layer parameters (a dict), with p the head width and h the MLP's hidden width:

=================  ===============  ========================================
key                shape            role
=================  ===============  ========================================
``ln1_gamma/beta`` ``(d,)``         LayerNorm before attention
``W_qkv, b_qkv``   ``(3Kp, d)``,    queries, keys, values (rows q; k; v)
                   ``(3Kp,)``
``W_out, b_out``   ``(d, Kp)``,     attention output (absent: none, ``Kp = d``)
                   ``(d,)``
``ln2_gamma/beta`` ``(d,)``         LayerNorm before the MLP
``W1, b1``         ``(h, d), (h,)`` MLP, first map
``W2, b2``         ``(d, h), (d,)`` MLP, second map
=================  ===============  ========================================

The biases are optional (a missing key is no bias).  Per layer that is
``4dKp + 3Kp + d`` (attention) ``+ 2dh + h + d`` (MLP) ``+ 4d`` scalars; with
``Kp = d`` and ``h = 4d`` the familiar ``12d² + 13d``, against CRATE's ``3d² + 5d``.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_int, check_keys, check_positive
from minicrate.layers.attention import attention_backward, attention_forward
from minicrate.layers.mlp import mlp_backward, mlp_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

TRANSFORMER_KEYS = ("ln1_gamma", "ln1_beta", "W_qkv", "b_qkv", "W_out", "b_out",
                    "ln2_gamma", "ln2_beta", "W1", "b1", "W2", "b2")


def transformer_layer_shapes(d, heads, head_dim, hidden, *, project_out=True):
    """The shape of every parameter of one block, by key (``project_out=False``: no ``W_out, b_out``)."""
    if not isinstance(project_out, bool):
        raise TypeError(f"project_out must be True or False, got {project_out!r}")
    d, K, p, h = (check_int(v, n, minimum=1) for v, n in ((d, "d"), (heads, "heads"), (head_dim, "head_dim"),
                                                           (hidden, "hidden")))
    shapes = {"ln1_gamma": (d,), "ln1_beta": (d,), "W_qkv": (3 * K * p, d), "b_qkv": (3 * K * p,)}
    if project_out:
        shapes.update(W_out=(d, K * p), b_out=(d,))
    elif K * p != d:
        raise ValueError(f"project_out=False (no attention output map) needs heads·head_dim = d = {d}, "
                         f"got {K}·{p} = {K * p}")
    shapes.update({"ln2_gamma": (d,), "ln2_beta": (d,), "W1": (h, d), "b1": (h,), "W2": (d, h), "b2": (d,)})
    return shapes


def value_bases(W_qkv, heads):
    r"""Each head's value map as a basis ``(K, d, p)``: :math:`V_k = XU_k` with
    :math:`U_k` the transpose of the k-th block of p rows of the value part of ``W_qkv``.

    The layer-wise measurement (:mod:`minicrate.measure.layerwise`) projects the
    attention's input on these where it projects a CRATE layer's input on ``U``:
    a head's output :math:`A_kV_k` lies in the span of its values, as MSSA's
    :math:`A_kXU_k` lies in that of :math:`XU_k`.
    """
    check_array(W_qkv, "W_qkv", ndim=2)
    K = check_int(heads, "heads", minimum=1)
    rows, d = W_qkv.shape
    if rows % (3 * K):
        raise ValueError(f"W_qkv must have shape (3·heads·p, d) with heads = {K}, got {tuple(W_qkv.shape)}")
    xp = namespace(W_qkv)
    inner = rows // 3
    return xp.permute_dims(xp.reshape(W_qkv[2 * inner:, :], (K, inner // K, d)), (0, 2, 1))


def transformer_block_forward(Z, params, *, heads, causal=False, scale=None, ln_eps=1e-5):
    """Forward of one pre-norm transformer block.

    Args:
        Z: tokens ``(..., N, d)``.
        params: the block's parameters (see the module docstring).
        heads: K, the number of attention heads (``W_qkv`` has ``3·K·p`` rows).
        causal: mask future tokens; scale: softmax temperature (``None``: 1/√p).
        ln_eps: LayerNorm ε.

    Returns:
        ``(Y, cache)``: Y = Z^{ℓ+1} of Z's shape; ``cache["attn_input"]`` is LN₁(Z)
        (where the layer-wise R^c is measured), ``cache["attn"]["A"]`` the attention.
    """
    check_array(Z, "Z", min_ndim=2)
    check_positive(ln_eps, "ln_eps")
    check_keys(params, ("ln1_gamma", "ln1_beta", "W_qkv", "ln2_gamma", "ln2_beta", "W1", "W2"))
    X1, ln1 = layernorm_forward(Z, params["ln1_gamma"], params["ln1_beta"], eps=ln_eps)
    M, attn = attention_forward(X1, params["W_qkv"], params.get("b_qkv"), params.get("W_out"),
                                params.get("b_out"), heads=heads, causal=causal, scale=scale)
    Z_half = Z + M
    X2, ln2 = layernorm_forward(Z_half, params["ln2_gamma"], params["ln2_beta"], eps=ln_eps)
    F, mlp = mlp_forward(X2, params["W1"], params.get("b1"), params["W2"], params.get("b2"))
    Y = Z_half + F
    cache = {"ln1": ln1, "attn": attn, "ln2": ln2, "mlp": mlp, "attn_input": X1, "output": Y,
             "params": params, "heads": attn["heads"]}
    return Y, cache


def transformer_block_backward(dY, cache):
    r"""Backward of :func:`transformer_block_forward`: both residuals pass the gradient
    straight through and add the branch's,
    :math:`\bar Z^{\ell+1/2} = \bar Z^{\ell+1} + \mathrm{LN}_2^\top(\mathrm{MLP}^\top(\bar Z^{\ell+1}))`,
    :math:`\bar Z^\ell = \bar Z^{\ell+1/2} + \mathrm{LN}_1^\top(\mathrm{Attn}^\top(\bar Z^{\ell+1/2}))`.

    Returns:
        ``(dZ, grads)`` with grads keyed like the block's params.
    """
    check_cache(cache, "transformer_block_forward", keys=("ln1", "attn", "ln2", "mlp", "params"))
    check_cotangent(dY, cache["output"].shape, cache["output"])
    params = cache["params"]
    xp = namespace(dY)
    dX2, grads = mlp_backward(dY, cache["mlp"])
    dZ_half, g = layernorm_backward(dX2, cache["ln2"])
    grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    dZ_half = dZ_half + dY
    dX1, g = attention_backward(dZ_half, cache["attn"])
    grads.update(g)
    dZ, g = layernorm_backward(dX1, cache["ln1"])
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return dZ + dZ_half, {k: grads[k] if k in grads else xp.zeros_like(v) for k, v in params.items()}
