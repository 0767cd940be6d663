"""The shared kernels of the fused layers (:mod:`minicrate.layers.fused.encoder`,
:mod:`minicrate.layers.fused.decoder`): LayerNorm on rows with its affine part folded
away, column sums as matrix-vector products, ISTA's d×d matrix and the transposed
softmax of symmetric scores.  Why each is written the way it is: the numbered notes
in :mod:`minicrate.layers.fused.encoder`.  The head reshapes are
:mod:`minicrate.ops.heads`.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, on_host
from minicrate.ops.heads import causal_mask


def normalise(xp, X, eps):
    r"""LayerNorm without the affine part on rows ``X`` (M, d): returns
    ``(X̂, mu, inv_std)`` with ``X̂ = (X − μ)·inv_std`` a new array and
    ``mu, inv_std`` of shape (M, 1)."""
    d = X.shape[-1]
    # Row means as a matrix-vector product: one BLAS pass, faster than a reduction
    # along the short last axis.
    mu = xp.expand_dims(X @ xp.ones((d,), dtype=X.dtype, device=device_of(X)), axis=-1) / d
    Xh = X - mu
    var = xp.vecdot(Xh, Xh, axis=-1) / d
    inv = 1.0 / xp.sqrt(xp.expand_dims(var, axis=-1) + eps)
    Xh *= inv
    return Xh, mu, inv


def column_sums(xp, X):
    r"""Sums over the rows of ``X`` (..., M, n) -> (..., n), as ``1ᵀX``.

    A vector–matrix product is one BLAS pass; ``xp.sum(X, axis=-2)`` walks the
    short rows one by one (on config (a), 64-wide rows: 27 µs against 5 µs, and
    17×17 attention blocks: 116 µs against 38 µs)."""
    return xp.ones((X.shape[-2],), dtype=X.dtype, device=device_of(X)) @ X


def affine(Xh, gamma, beta):
    """γ ⊙ X̂ + β as a new array."""
    Y = Xh * gamma
    Y += beta
    return Y


def affine_t_matmul(xp, Xh, gamma, beta, G):
    r"""(X̂γ + β)ᵀ G = γ ⊙ (X̂ᵀ G) + β (1ᵀ G) for rows X̂ (M, d), G (M, n): the
    LayerNorm output is never formed again."""
    return (xp.expand_dims(gamma, axis=-1) * (xp.matrix_transpose(Xh) @ G)
            + xp.expand_dims(beta, axis=-1) * column_sums(xp, G))


def ista_matrix(xp, D, eta):
    r"""E = η(D − DᵀD) (d, d): one ISTA step before the ReLU is ``X + X E − ηλ``
    (rows are tokens), since η(XD − XDᵀD) = X·η(D − DᵀD).  Forming E costs 2d³
    flops, against 2·B·N·d² for each product with the tokens that it replaces."""
    E = D - xp.matrix_transpose(D) @ D
    E *= eta
    return E


def layernorm_rows_backward(xp, dY, Xh, inv, gamma):
    r"""Backward of LayerNorm on rows; returns ``(dX, dgamma, dbeta)``.

    dX = inv·(ĝ − mean(ĝ) − X̂·mean(ĝ⊙X̂)) with ĝ = γ⊙Ȳ; ``dY`` is not modified.
    The row means are matrix-vector products with γ: mean(ĝ) = Ȳγ/d and
    mean(ĝ⊙X̂) = (Ȳ⊙X̂)γ/d, the product Ȳ⊙X̂ being the one γ̄ sums."""
    d = dY.shape[-1]
    P = dY * Xh
    dgamma = column_sums(xp, P)
    m2 = xp.expand_dims(P @ gamma, axis=-1) / d  # mean(ĝ ⊙ X̂)
    del P
    dbeta = column_sums(xp, dY)
    m1 = xp.expand_dims(dY @ gamma, axis=-1) / d  # mean(ĝ)
    g = dY * gamma
    g -= m1
    g -= Xh * m2
    g *= inv
    return g, dgamma, dbeta


def softmax_transposed(xp, S, causal):
    r"""``At = softmax_row(S)ᵀ`` for symmetric scores ``S`` (..., N, N) (consumed).

    Column ``i`` of ``At`` is row ``i`` of the attention: its sum is taken over
    axis −2 (for symmetric S the column max is the row max).  With ``causal``,
    row ``i`` may attend to ``j <= i``, i.e. ``At[j, i]`` is kept for ``j <= i``
    (upper triangle).

    The shift.  Softmax is unchanged by subtracting any constant from a row;
    the row maximum is the usual choice because then no term exceeds 1 (no
    overflow) and the largest is exactly 1 (no underflow of the whole row).
    Any shift at least the row maximum keeps the first property, so we take
    the maximum of each whole N×N block: one reduction over a contiguous
    block instead of N short ones (17×17 blocks: 17 µs against 160).  The
    second property can then fail for a row far below its block's maximum, so
    the row sums are checked; if one is below √tiny (about 1e-19 in float32,
    where the row's largest term could start to lose precision), the call is
    redone with row maxima (:func:`softmax_transposed_rowmax`).  Accuracy: a
    row whose maximum lies Δ below its block's has its terms rounded at
    arguments of size about Δ, a relative error of about Δ·u (u the unit
    roundoff) instead of u; the check bounds Δ by ln N plus about 44 in float32
    (354 in float64).

    Row maxima are used directly on a GPU, where the check would stall the
    device and short reductions are cheap, and with ``causal``: a block's
    maximum can come from a later row, and through rounding a later token
    would then change an earlier output in the last bit."""
    N = S.shape[-1]
    if causal:
        return softmax_transposed_rowmax(xp, causal_mask_transposed(xp, S))
    if not on_host(S):
        return softmax_transposed_rowmax(xp, S)
    lead = S.shape[:-2]
    block_max = xp.max(xp.reshape(S, (*lead, N * N)), axis=-1)
    shift = xp.reshape(block_max, (*lead, 1, 1))
    At = xp.exp(S - shift)
    sums = column_sums(xp, At)  # (..., N): the rows of A
    if float(xp.min(sums)) < math.sqrt(xp.finfo(S.dtype).smallest_normal):
        return softmax_transposed_rowmax(xp, S)  # from the unshifted S: S − shift lost digits
    del S
    At /= xp.expand_dims(sums, axis=-2)
    return At


def causal_mask_transposed(xp, S):
    """S with −inf where row i would see j > i (At's lower triangle: the transposed
    :func:`minicrate.ops.heads.causal_mask`)."""
    keep = xp.matrix_transpose(causal_mask(S.shape[-1], S))
    return xp.where(keep, S, xp.asarray(-xp.inf, dtype=S.dtype, device=device_of(S)))


def softmax_transposed_rowmax(xp, S):
    """:func:`softmax_transposed` with the textbook shift, each row's own maximum
    (already masked ``S``; not consumed)."""
    At = xp.exp(S - xp.max(S, axis=-2, keepdims=True))
    At /= xp.expand_dims(column_sums(xp, At), axis=-2)
    return At
