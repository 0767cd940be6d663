r"""The encoder layer, fused for speed and memory (official form; issue 8).

Same mathematics as :func:`minicrate.layers.encoder.encoder_layer_forward` /
:func:`~minicrate.layers.encoder.encoder_layer_backward` (the official
``model/crate.py`` layer and the backward of the book's *Backpropagation by
hand*), which stay the readable reference; ``tests/test_fastpaths.py``
checks this file against them.  What is different, and why:

1. **Big products on flattened tokens.**  Every per-token map is one matrix
   product on the ``(B·N, d)`` rows: ``w = X U`` with ``U`` as the
   ``(d, K·p)`` matrix ``[U_1 … U_K]`` (not ``B·K`` small products), the
   output map, ISTA's two products, and every parameter gradient (one
   ``Xᵀ Ȳ`` product instead of a per-sample stack summed afterwards).
2. **Contiguous per-head layout.**  ``w`` is copied once into ``(B·K, N, p)``
   so the per-head products run on contiguous blocks.
3. **ISTA in one product.**  Before the ReLU the step is linear in ``X``:
   ``η(XD − XDᵀD) = XE`` with the ``d×d`` matrix ``E = η(D − DᵀD)``, formed
   once per call (``2d³`` flops, against ``2·B·N·d²`` for one product with the
   tokens).  So ``P = X + XE − ηλ`` (the official code takes three token
   products, the plain :mod:`minicrate.layers.ista` two), and backward takes two:
   ``X̄ = P̄ + P̄Eᵀ`` and ``G = XᵀP̄``, from which ``D̄ = η(G − D(G + Gᵀ))``.
   ``X`` is added outside the product on purpose: through ``X(I + E)`` it
   would pick up the product's rounding, and in float32 more ReLU inputs near
   zero would change sign (measured: embedding gradients 1.3e-3 from float64
   instead of about 5e-4, torch's figure).
4. **One product for the shared query/key.**  ``S = s w wᵀ`` is symmetric, so
   the score gradient enters once as ``s(S̄ + S̄ᵀ) w``.
5. **The attention is stored transposed.**  Because ``S`` is symmetric, the
   maximum and the sum of each *row* are those of each *column*, and the
   column reductions and broadcasts run along NumPy's fast (contiguous) axis.
   We keep ``Aᵀ`` (``At``) and use ``A = Atᵀ`` in the products.  (With the
   causal mask the masked ``S`` is not symmetric, but ``Aᵀ`` is still the
   column-softmax of ``S`` masked by the transposed mask.)
6. **The cache holds only what backward needs**: the layer input ``Z`` (also
   the previous layer's output, so shared), LayerNorm statistics, ``w``, the
   attention, the normalised ISTA input, ISTA's ``E`` and the output ``Y``
   (whose sign is ReLU's mask).  The head outputs ``O = Aw`` are recomputed in backward (one
   per-head product), and the LayerNorm outputs are never formed again: their
   affine maps are folded into small matrices, e.g.
   ``X₁U = X̂₁(γ₁ ⊙ U) + β₁U`` and ``X₁ᵀ w̄ = γ₁ ⊙ (X̂₁ᵀ w̄) + β₁(1ᵀw̄)``.  On
   config (b) this keeps 4 of torch's ~10 saved tensors per layer.
7. **Fewer passes over memory**: scalars such as ``−η`` go into the small
   ``d×d`` matrix before the product; row means and column sums are
   matrix–vector products (one BLAS pass; NumPy's reductions along short axes
   walk them one by one); softmax shifts each N×N block by its maximum, one
   reduction, instead of each row by its own (see :func:`softmax_transposed`);
   ReLU and its mask are a multiply by ``(P > 0)`` (NumPy's ``where`` on a
   random mask is about 7× slower, branch mispredictions).
8. **In place where safe**: only on arrays this module just created, never on
   inputs, parameters or cached arrays (so backward can run twice).

Where the time goes and what these buy is measured by ``benchmarks/bench_speed.py``
and ``benchmarks/profile_lines.py``.

Tokens are rows (``Z_paper = Zᵀ``).  Only the official form is fused
(learned ``W_out``, pre-LayerNorm); :func:`supports` says when a layer can use it.
"""

from __future__ import annotations

import math

from minicrate.core.backend import namespace
from minicrate.core.validate import (
    check_array,
    check_cotangent,
    check_heads,
    check_keys,
    check_positive,
    check_same_kind,
)
from minicrate.layers.fused.kernels import (
    affine,
    affine_t_matmul,
    column_sums,
    ista_matrix,
    layernorm_rows_backward,
    normalise,
    softmax_transposed,
)
from minicrate.ops.heads import bases_as_matrix, heads_to_rows, rows_to_heads

FAST_KEYS = ("ln1_gamma", "ln1_beta", "U", "W_out", "b_out", "ln2_gamma", "ln2_beta", "D")


def supports(*, tie_out=False, use_layernorm=True, project_out=True, **_):
    """True when :func:`layer_forward` implements the layer with these switches."""
    return not tie_out and use_layernorm and project_out


# --- the layer ------------------------------------------------------------------------------

class FastLayerCache(dict):
    """What :func:`layer_backward` needs, plus the white-box read-outs of the plain
    cache on demand: ``"mssa_input"`` (LN₁(Z), recomputed), ``"ista_output"``
    (the output Y), ``"mssa"`` (``{"A": attention}``) and ``"params"``."""

    def __missing__(self, key):
        xp = namespace(self["Z"])
        if key == "mssa_input":
            Z2 = xp.reshape(self["Z"], (-1, self["Z"].shape[-1]))
            X1 = affine((Z2 - self["mu1"]) * self["inv1"], self["params"]["ln1_gamma"],
                         self["params"]["ln1_beta"])
            return xp.reshape(X1, self["Z"].shape)
        if key == "ista_output":
            return self["Y"]
        if key == "mssa":
            At = self["At"]
            A = xp.matrix_transpose(At)
            return {"A": xp.reshape(A, (*self["Z"].shape[:-2], self["K"], *A.shape[-2:]))}
        raise KeyError(key)


def layer_forward(Z, params, *, scale=None, eta=0.1, lam=0.1, causal=False, ln_eps=1e-5, keep_cache=True,
                  **unused):
    r"""One official-form CRATE layer, fused (``model/crate.py``, class ``Transformer``):
    :math:`Z^{\ell+1/2} = Z + \mathrm{MSSA}(\mathrm{LN}_1(Z))`,
    :math:`Y = \mathrm{ReLU}(X + \eta(X - XD^\top)D - \eta\lambda)`,
    :math:`X = \mathrm{LN}_2(Z^{\ell+1/2})`.

    Args:
        Z: tokens ``(..., N, d)``.
        params: ``ln1_gamma, ln1_beta`` ``(d,)``, ``U`` ``(K, d, p)``, ``W_out``
            ``(d, K·p)``, ``b_out`` ``(d,)`` (optional), ``ln2_gamma, ln2_beta``, ``D`` ``(d, d)``.
        scale: softmax temperature (``None`` → 1/√p); causal: mask future tokens;
        eta, lam: ISTA step and threshold weight; ln_eps: LayerNorm ε.
        keep_cache: ``False`` for inference: nothing is kept for backward, every
            intermediate is freed as soon as it is used, and the cache is ``None``.
        unused: the plain layer's other switches; they must have their official values
            (``tie_out=False, use_layernorm=True``).

    Returns:
        ``(Y, cache)`` with Y of Z's shape; ``cache`` is a :class:`FastLayerCache` (``None``
        without ``keep_cache``).
    """
    if not supports(**unused):
        raise ValueError(f"the fused layer implements the official form only, got {unused}")
    check_array(Z, "Z", min_ndim=2)
    check_keys(params, ("ln1_gamma", "ln1_beta", "U", "W_out", "ln2_gamma", "ln2_beta", "D"))
    U, W_out, D = params["U"], params["W_out"], params["D"]
    b_out = params.get("b_out")
    *lead, N, d = Z.shape
    K, p = check_heads(U, d)
    norms = {k: params[k] for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")}
    check_same_kind(Z=Z, U=U, W_out=W_out, D=D, b_out=b_out, **norms)
    for k, v in norms.items():
        check_array(v, k, shape=(d,), ndim=1)
    check_array(W_out, "W_out", shape=(d, K * p), ndim=2)
    check_array(D, "D", shape=(d, d), ndim=2)
    if b_out is not None:
        check_array(b_out, "b_out", shape=(d,), ndim=1)
    scale = 1.0 / math.sqrt(p) if scale is None else check_positive(scale, "scale")
    xp = namespace(Z, U)
    Z2 = xp.reshape(Z, (-1, d))
    Bf = Z2.shape[0] // N

    # MSSA on X1 = LN1(Z): one product for w, per-head scores and outputs, one output map.
    Xh1, mu1, inv1 = normalise(xp, Z2, ln_eps)
    Ub = bases_as_matrix(U)  # (d, K·p)
    # w = (X̂ γ + β) U = X̂ (γ ⊙ U) + β U: LN₁'s affine folded into the small matrix.
    w = Xh1 @ (xp.expand_dims(params["ln1_gamma"], axis=-1) * Ub)
    w += params["ln1_beta"] @ Ub
    del Xh1
    Wh = rows_to_heads(w, Bf, N, K, p)  # (Bf·K, N, p)
    del w
    S = Wh @ xp.matrix_transpose(Wh)
    S *= scale
    At = softmax_transposed(xp, S, causal)  # Aᵀ, (Bf·K, N, N)
    H = heads_to_rows(xp.matrix_transpose(At) @ Wh, Bf, N, K, p)  # (Bf·N, K·p)
    if not keep_cache:
        del Wh, At
    Zh = H @ xp.matrix_transpose(W_out)
    del H
    if b_out is not None:
        Zh += b_out
    Zh += Z2  # Z^{l+1/2}

    # ISTA on X2 = LN2(Z^{l+1/2}): before the ReLU it is linear in X2, X2 plus one product
    # with E = η(D − DᵀD).  X2 itself is added outside the product, so it is exact
    # (through the product it would pick up rounding and flip more ReLU signs in float32).
    Xh2, _, inv2 = normalise(xp, Zh, ln_eps)
    del Zh
    E = ista_matrix(xp, D, eta)
    if keep_cache:
        X2 = affine(Xh2, params["ln2_gamma"], params["ln2_beta"])
    else:  # backward will not need X̂2: form X2 in its place
        X2 = Xh2
        X2 *= params["ln2_gamma"]
        X2 += params["ln2_beta"]
        del Xh2
    P = X2 @ E
    P += X2
    del X2
    P -= eta * lam
    P *= xp.astype(P > 0, P.dtype)  # ReLU (a multiply by the 0/1 mask is fast and branch-free)
    Y = xp.reshape(P, Z.shape)
    del P
    if not keep_cache:
        return Y, None
    cache = FastLayerCache(Z=Z, mu1=mu1, inv1=inv1, Wh=Wh, At=At, Xh2=Xh2, inv2=inv2, Y=Y, E=E,
                           params=params, scale=scale, eta=eta, K=K, dims=(Bf, N, K, p, d),
                           has_bias=b_out is not None)
    return Y, cache


def layer_backward(dY, cache):
    r"""Backward of :func:`layer_forward` (tokens as rows).

    ISTA: :math:`\bar P = \bar Y\odot 1[Y>0]`, :math:`V = \bar PD^\top`,
    :math:`\bar X = \bar P + \eta(V - VD)`, :math:`\bar D = \eta[G - D(G+G^\top)]`,
    :math:`G = X^\top\bar P`.
    MSSA: :math:`\bar A = \bar O w^\top`,
    :math:`\bar S = A\odot(\bar A - \mathrm{rowsum}(A\odot\bar A))`,
    :math:`\bar w = A^\top\bar O + s(\bar S + \bar S^\top)w`, :math:`\bar U = X_1^\top\bar w`,
    :math:`\bar X_1 = \bar w U^\top`; both LayerNorms as in
    :func:`~minicrate.ops.layernorm.layernorm_backward`; the skip adds
    :math:`\bar Z^{\ell+1/2}`.

    Returns:
        ``(dZ, grads)``, grads keyed like the layer's params (``b_out`` only if present).
    """
    if not isinstance(cache, FastLayerCache):
        raise TypeError(f"cache must be the FastLayerCache from layer_forward, got {type(cache).__name__}")
    check_cotangent(dY, cache["Z"].shape, cache["Z"])
    params = cache["params"]
    Bf, N, K, p, d = cache["dims"]
    U, W_out, D = params["U"], params["W_out"], params["D"]
    Z, Y, Wh, At, Xh2 = cache["Z"], cache["Y"], cache["Wh"], cache["At"], cache["Xh2"]
    eta, scale = cache["eta"], cache["scale"]
    xp = namespace(dY, D)
    grads = {}

    # ISTA, P = X2 + X2 E − ηλ: X̄2 = P̄ + P̄ Eᵀ, Ē = X2ᵀ P̄ = G, D̄ = η(G − D(G + Gᵀ)).
    Y2 = xp.reshape(Y, (-1, d))
    dP = xp.reshape(dY, (-1, d)) * xp.astype(Y2 > 0, dY.dtype)  # ReLU's mask: Y > 0 iff P > 0
    G = affine_t_matmul(xp, Xh2, params["ln2_gamma"], params["ln2_beta"], dP)  # X₂ᵀ P̄
    grads["D"] = eta * (G - D @ (G + xp.matrix_transpose(G)))
    dX2 = dP @ xp.matrix_transpose(cache["E"])
    dX2 += dP
    del dP
    dZh, grads["ln2_gamma"], grads["ln2_beta"] = layernorm_rows_backward(xp, dX2, Xh2, cache["inv2"],
                                                                     params["ln2_gamma"])
    del dX2

    # MSSA: output map, then the per-head attention, then w = X1 U.
    A = xp.matrix_transpose(At)
    H = heads_to_rows(A @ Wh, Bf, N, K, p)
    grads["W_out"] = xp.matrix_transpose(dZh) @ H
    del H
    if cache["has_bias"]:
        grads["b_out"] = column_sums(xp, dZh)
    dO = rows_to_heads(dZh @ W_out, Bf, N, K, p)  # (Bf·K, N, p)
    dAt = Wh @ xp.matrix_transpose(dO)  # Āᵀ
    dSt = At * dAt  # (A ⊙ Ā)ᵀ
    dAt -= xp.expand_dims(column_sums(xp, dSt), axis=-2)  # Āᵀ − rowsum(A ⊙ Ā), a row broadcast
    dAt *= At  # S̄ᵀ
    del dSt
    dSym = dAt + xp.matrix_transpose(dAt)  # S̄ + S̄ᵀ
    del dAt
    dSym *= scale
    dWh = At @ dO  # Aᵀ Ō
    del dO
    dWh += dSym @ Wh
    del dSym
    dWf = heads_to_rows(dWh, Bf, N, K, p)  # (Bf·N, K·p)
    del dWh
    Z2 = xp.reshape(Z, (-1, d))
    Xh1 = Z2 - cache["mu1"]
    Xh1 *= cache["inv1"]
    dU = affine_t_matmul(xp, Xh1, params["ln1_gamma"], params["ln1_beta"], dWf)  # X₁ᵀ w̄, (d, K·p)
    grads["U"] = xp.permute_dims(xp.reshape(dU, (d, K, p)), (1, 0, 2))
    dX1 = dWf @ xp.matrix_transpose(bases_as_matrix(U))
    del dWf
    dZ, grads["ln1_gamma"], grads["ln1_beta"] = layernorm_rows_backward(xp, dX1, Xh1, cache["inv1"],
                                                                    params["ln1_gamma"])
    del dX1
    dZ += dZh  # the skip
    grads = {k: grads[k] if k in grads else xp.zeros_like(v) for k, v in params.items()}
    return xp.reshape(dZ, dY.shape), grads
