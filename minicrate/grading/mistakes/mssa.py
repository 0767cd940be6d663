r"""Wrong MSSA forwards and backwards, as changes of :mod:`minicrate.layers.mssa`'s own outputs.

Every builder here starts from the library's reference output and the cache of
:func:`minicrate.layers.mssa.mssa_forward` (official form: ``W_out`` given) and
adds only what the mistake changes:

* forward: a mistake in how the heads are formed changes the head outputs
  ``H`` ``(..., N, K·p)``; the output map is affine, so the wrong output is
  :math:`Y + (H' - H)W_{\text{out}}^\top` (:func:`output_with_heads`);
* backward: the classic slips of the shared query/key/value backward change
  the score or value path of :math:`\bar W_k`; :func:`projection_backward`
  carries a change of :math:`\bar W_k` to the changes of :math:`\bar Z` and
  :math:`\bar U` (the backward of :math:`W_k = ZU_k`, which is linear), and
  :func:`mssa_backward_variant` is :func:`~minicrate.layers.mssa.mssa_backward`
  plus that change.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.layers.mssa import mssa_backward
from minicrate.ops.functional import linear_forward, softmax_backward
from minicrate.ops.heads import heads_to_tokens, tokens_to_heads

SHARED_QK_HINT = (
    "the missing S̄ᵀ term in shared query/key attention: S = s·W_kW_kᵀ uses W_k twice (query "
    "*and* key), so dW_k = Aᵀ dO_k + s (S̄ + S̄ᵀ) W_k; with only S̄ (or only S̄ᵀ) you "
    "differentiated one of the two uses"
)
"""Hint of the "missing S̄ᵀ term" mistakes (MSSA, encoder and decoder layer backwards)."""

TRANSPOSE_TERMS = ("both", "missing", "only_transpose")
"""Values of ``transpose_term``: the right S̄ + S̄ᵀ, S̄ alone, S̄ᵀ alone."""


def _official(cache):
    if cache.get("W_out") is None:
        raise ValueError("the MSSA mistakes are built for the official form (W_out given), not the tied one")
    return namespace(cache["W"])


# --------------------------------------------------------------------------
# Forward: wrong head outputs


def output_with_heads(Y, cache, H):
    """The output ``Y`` of :func:`mssa_forward` with head outputs ``H`` ``(..., N, K·p)`` in place
    of the cache's: ``Y + (H − H_ref) W_outᵀ`` (the bias cancels in the difference)."""
    _official(cache)
    return Y + linear_forward(H - cache["H"], cache["W_out"])[0]


def column_softmax_heads(cache):
    """Head outputs with the softmax taken over the columns (axis −2).

    The scores ``S_k = s·W_kW_kᵀ`` are symmetric, so that softmax is ``A_kᵀ``
    and the heads are ``A_kᵀ W_k``.
    """
    xp = _official(cache)
    return heads_to_tokens(xp.matrix_transpose(cache["A"]) @ cache["W"])


def interleaved_heads(cache):
    """Head outputs concatenated by a plain reshape of ``(..., K, N, p)`` to ``(..., N, K·p)``,
    without moving the heads axis first: tokens and heads interleave."""
    xp = _official(cache)
    O = tokens_to_heads(cache["H"], cache["U"].shape[0])
    K, N, p = O.shape[-3:]
    return xp.reshape(O, (*O.shape[:-3], N, K * p))


# --------------------------------------------------------------------------
# Backward: wrong score and value paths of dW_k


def projection_backward(dW, cache):
    """Backward of ``W_k = Z U_k``: a change ``dW`` ``(..., K, N, p)`` of the head gradients
    gives the changes ``(dZ, dU)`` of ``Σ_k dW_k U_kᵀ`` ``(..., N, d)`` and ``Σ Zᵀ dW_k`` ``(K, d, p)``."""
    xp = namespace(dW)
    Z, U = cache["Z"], cache["U"]
    dZ = xp.sum(dW @ xp.matrix_transpose(U), axis=-3)
    per_sample = xp.matrix_transpose(xp.expand_dims(Z, axis=-3)) @ dW  # (..., K, d, p)
    return dZ, xp.sum(xp.reshape(per_sample, (-1, *U.shape)), axis=0)


def head_cotangents(dY, cache):
    """``(dO, dA)``: the gradients of the head outputs ``O_k`` ``(..., K, N, p)`` and of the
    attention ``A_k`` ``(..., K, N, N)`` for upstream ``dY`` (official form)."""
    xp = _official(cache)
    dO = tokens_to_heads(dY @ cache["W_out"], cache["U"].shape[0])
    return dO, dO @ xp.matrix_transpose(cache["W"])


def head_grad_change(dY, cache, *, transpose_term="both", softmax_axis=-1, scale_in_backward=True,
                     value_term=True):
    """The mistaken ``dW_k`` minus the right one, ``(..., K, N, p)`` (zero at the defaults).

    The right ``dW_k = A_kᵀ dO_k + s (S̄_k + S̄_kᵀ) W_k`` with ``S̄_k`` the row-softmax backward;
    the switches are those of :func:`mssa_backward_variant`.
    """
    if transpose_term not in TRANSPOSE_TERMS:
        raise ValueError(f"transpose_term must be one of {TRANSPOSE_TERMS}, got {transpose_term!r}")
    xp = _official(cache)
    W, A, s = cache["W"], cache["A"], cache["scale"]
    dO, dA = head_cotangents(dY, cache)
    dS = softmax_backward(dA, A, axis=-1)
    used = softmax_backward(dA, A, axis=softmax_axis)
    path = {
        "both": used + xp.matrix_transpose(used),
        "missing": used,
        "only_transpose": xp.matrix_transpose(used),
    }[transpose_term]
    change = (s if scale_in_backward else 1.0) * (path @ W) - s * ((dS + xp.matrix_transpose(dS)) @ W)
    if not value_term:
        change = change - xp.matrix_transpose(A) @ dO
    return change


def mssa_backward_variant(dY, cache, *, transpose_term="both", softmax_axis=-1, scale_in_backward=True,
                          value_term=True):
    """:func:`~minicrate.layers.mssa.mssa_backward` with one of the classic slips in ``dW_k``.

    Args:
        dY: upstream gradient ``(..., N, d)``.
        cache: of :func:`~minicrate.layers.mssa.mssa_forward`, official form.
        transpose_term: ``"both"`` (right: S̄ + S̄ᵀ), ``"missing"`` (S̄ only: one use of the
            shared query/key differentiated), ``"only_transpose"`` (S̄ᵀ only).
        softmax_axis: axis of the softmax backward (the forward's rows are ``-1``).
        scale_in_backward: keep the temperature ``s`` on the score path.
        value_term: keep the value path ``A_kᵀ dO_k``.

    Returns:
        ``(dZ, grads)`` as :func:`mssa_backward` does; only ``dZ`` and ``grads["U"]`` change,
        and at the defaults they are exactly the library's.
    """
    dZ, grads = mssa_backward(dY, cache)
    change = head_grad_change(dY, cache, transpose_term=transpose_term, softmax_axis=softmax_axis,
                              scale_in_backward=scale_in_backward, value_term=value_term)
    dZ_change, dU_change = projection_backward(change, cache)
    return dZ + dZ_change, {**grads, "U": grads["U"] + dU_change}
