r"""Lossy coding rates and their hand-derived gradients (the book's chapter *The lossy coding rate*).

Layout: tokens are **rows**.  ``Z`` has shape ``(..., N, d)``: N tokens of
width d, batched over any leading axes; each leading index is one sample
(one image) and gets its own rate.  The paper writes tokens as columns,
:math:`Z_{\text{paper}} = Z^\top`; every formula below is the paper's with
that transpose applied.  ``U`` has shape ``(K, d, p)``: K subspace bases
:math:`U_k \in \mathbb{R}^{d\times p}`.

Why the smaller Gram matrix: by Sylvester's identity
:math:`\log\det(I_N + cZZ^\top) = \log\det(I_d + cZ^\top Z)`, so each rate
factors whichever of the N×N or d×d matrices is smaller, and each gradient
applies the inverse of that matrix.

Why QR and not ``cholesky(I + c·ZᵀZ)``: forming the Gram matrix squares the
condition number.  Tokens on or near a union of low-dimensional subspaces
(CRATE's data model) make ``I + cZᵀZ`` have eigenvalues 1 and ~c·N at once;
with ε = 1e-3 and N = 4096 that is a ratio of ~1e7, the whole float32 range,
and the Cholesky of the rounded Gram matrix fails (LinAlgError) or loses every
digit of the eigenvalues near 1.  Instead :func:`_cholesky_via_qr` takes the
QR factorisation of the tall matrix ``[√c·Z; I]``: its triangular factor R is
the Cholesky factor of ``I + cZᵀZ`` *computed without forming it* (the
classical "Cholesky via QR" of least squares), and the bottom block of its
orthogonal factor is R⁻¹, so (I + cZᵀZ)⁻¹ = R⁻¹R⁻ᵀ comes without a solve.
In float32 the rates then agree with float64 to ~1e-6 relative for N = 4096
tokens and ε = 1e-3; the gradients are backward stable (see
``tests/test_numerics.py`` for the measured errors and the one ill-conditioned
case, tokens exactly on a subspace).
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import check_array, check_heads, check_positive, check_same_kind


def _eye_like(xp, n, like):
    return xp.eye(n, dtype=like.dtype, device=device_of(like))


def _cholesky_via_qr(W, c):
    r"""Cholesky factor R of the smaller of :math:`I + cW^\top W` and
    :math:`I + cWW^\top`, and its inverse, without forming the Gram matrix.

    Let ``V`` be ``W`` (..., n, m) if n >= m, else ``Wᵀ``, so V is tall
    (..., a, b) with b = min(n, m).  The reduced QR factorisation

    .. math:: \begin{bmatrix}\sqrt c\,V\\ I_b\end{bmatrix}
              = \begin{bmatrix}Q_1\\ Q_2\end{bmatrix} R

    has :math:`R^\top R = I_b + cV^\top V` (R is its Cholesky factor, up to
    row signs) and, reading the bottom block, :math:`Q_2 R = I`, i.e.
    :math:`Q_2 = R^{-1}`.

    Returns:
        ``(R, R_inv)``, both (..., b, b).
    """
    xp = namespace(W)
    n, m = W.shape[-2], W.shape[-1]
    V = xp.matrix_transpose(W) if n < m else W
    a, b = V.shape[-2], V.shape[-1]
    eye = xp.broadcast_to(_eye_like(xp, b, W), (*V.shape[:-2], b, b))
    Q, R = xp.linalg.qr(xp.concat([c**0.5 * V, eye], axis=-2))
    return R, Q[..., a:, :]


def half_logdet_gram(W, c):
    r"""½ log det(I + c WᵀW) for ``W`` (..., n, m), using the smaller Gram matrix.

    Equals ½ log det(I_n + c W Wᵀ) (Sylvester).  With the Cholesky factor R
    of the smaller matrix (:func:`_cholesky_via_qr`), ½ log det = Σᵢ log|Rᵢᵢ|.
    Returns shape ``(...)``.
    """
    xp = namespace(W)
    R, _ = _cholesky_via_qr(W, c)
    return xp.sum(xp.log(xp.abs(xp.linalg.diagonal(R))), axis=-1)


def _gram_solve(W, c):
    r"""(I_n + c W Wᵀ)⁻¹ W = W (I_m + c WᵀW)⁻¹ for ``W`` (..., n, m) (push-through
    identity), with the smaller matrix M and M⁻¹ = R⁻¹R⁻ᵀ, R⁻¹ read off the
    orthogonal factor by :func:`_cholesky_via_qr` (no solve, no ``inv``)."""
    xp = namespace(W)
    _, R_inv = _cholesky_via_qr(W, c)
    M_inv = R_inv @ xp.matrix_transpose(R_inv)
    return M_inv @ W if W.shape[-2] < W.shape[-1] else W @ M_inv


def _check_rate_args(Z, eps, U=None):
    check_array(Z, "Z", min_ndim=2)
    eps = check_positive(eps, "eps")
    if eps * eps * Z.shape[-2] == 0.0 or not math.isfinite(Z.shape[-1] / (Z.shape[-2] * eps * eps)):
        raise ValueError(f"eps = {eps!r} is too small: the rate's constant d/(N·ε²) overflows "
                         "(use eps >= 1e-100 or so)")
    if U is None:
        return eps, None, None
    check_same_kind(Z=Z, U=U)
    K, p = check_heads(U, Z.shape[-1])
    return eps, K, p


def coding_rate(Z, eps):
    r"""Coding rate (expansion term) of Ma et al. (2007).

    .. math:: R(Z) = \tfrac12 \log\det\big(I_d + \alpha Z^\top Z\big),
              \qquad \alpha = \frac{d}{N\epsilon^2}

    Args:
        Z: tokens, shape ``(..., N, d)``.
        eps: quantisation precision ε > 0.

    Returns:
        R per sample, shape ``(...)``.
    """
    eps, _, _ = _check_rate_args(Z, eps)
    N, d = Z.shape[-2], Z.shape[-1]
    return half_logdet_gram(Z, d / (N * eps**2))


def coding_rate_grad(Z, eps):
    r"""Gradient of :func:`coding_rate`, tokens as rows.

    .. math:: \frac{\partial R}{\partial Z} = \alpha\,(I_N + \alpha ZZ^\top)^{-1} Z
              = \alpha\, Z (I_d + \alpha Z^\top Z)^{-1}

    Returns:
        dR/dZ, shape ``(..., N, d)`` (each sample's R differentiated w.r.t.
        its own tokens).
    """
    eps, _, _ = _check_rate_args(Z, eps)
    N, d = Z.shape[-2], Z.shape[-1]
    alpha = d / (N * eps**2)
    return alpha * _gram_solve(Z, alpha)


def _head_projections(Z, U):
    """W_k = Z U_k for every head: (..., N, d) x (K, d, p) -> (..., K, N, p)."""
    xp = namespace(Z, U)
    return xp.expand_dims(Z, axis=-3) @ U


def compression_rate(Z, U, eps):
    r"""Compression term R^c over K subspaces (Yu et al. 2024).

    .. math:: R^c(Z \mid U_{[K]}) = \sum_{k=1}^K \tfrac12
              \log\det\big(I_p + \beta (ZU_k)^\top (ZU_k)\big),
              \qquad \beta = \frac{p}{N\epsilon^2}

    Args:
        Z: tokens, shape ``(..., N, d)``.
        U: subspace bases, shape ``(K, d, p)``.
        eps: quantisation precision ε > 0.

    Returns:
        R^c per sample, shape ``(...)``.
    """
    eps, K, p = _check_rate_args(Z, eps, U)
    xp = namespace(Z, U)
    N = Z.shape[-2]
    return xp.sum(half_logdet_gram(_head_projections(Z, U), p / (N * eps**2)), axis=-1)


def compression_rate_grad(Z, U, eps):
    r"""Gradients of :func:`compression_rate`, tokens as rows.

    With :math:`W_k = ZU_k` (N×p) and :math:`M_k = I_p + \beta W_k^\top W_k`:

    .. math:: \frac{\partial R^c}{\partial Z} = \beta \sum_k W_k M_k^{-1} U_k^\top,
              \qquad
              \frac{\partial R^c}{\partial U_k} = \beta\, Z^\top W_k M_k^{-1}

    Returns:
        ``(dZ, dU)``: dZ has Z's shape ``(..., N, d)``; dU has U's shape
        ``(K, d, p)`` and is the gradient of R^c *summed over the batch*.
    """
    eps, K, p = _check_rate_args(Z, eps, U)
    xp = namespace(Z, U)
    N, d = Z.shape[-2], Z.shape[-1]
    beta = p / (N * eps**2)
    G = beta * _gram_solve(_head_projections(Z, U), beta)  # (..., K, N, p)
    dZ = xp.sum(G @ xp.matrix_transpose(U), axis=-3)
    dU_per_sample = xp.matrix_transpose(xp.expand_dims(Z, axis=-3)) @ G  # (..., K, d, p)
    dU = xp.reshape(dU_per_sample, (-1, K, d, p))
    return dZ, xp.sum(dU, axis=0)


def rate_reduction(Z, U, eps):
    r"""Rate reduction ΔR = R(Z) − R^c(Z | U).  Shape ``(...)``."""
    return coding_rate(Z, eps) - compression_rate(Z, U, eps)


def sparse_rate_reduction(Z, U, eps, lam):
    r"""Sparse rate reduction with the ℓ0 norm relaxed to ℓ1.

    .. math:: R(Z) - R^c(Z \mid U_{[K]}) - \lambda \lVert Z \rVert_1

    The paper's objective counts non-zeros (‖Z‖₀), which has no useful
    gradient; like the paper we use its convex surrogate, the entrywise ℓ1
    norm.  Normalisation: ‖Z‖₁ is the plain sum of |z_ij| over one sample's
    N×d entries (no division by N or d), so λ is in nats per unit of ℓ1 mass.

    Returns:
        the objective per sample, shape ``(...)``.
    """
    lam = check_positive(lam, "lam", allow_zero=True)
    xp = namespace(Z, U)
    l1 = xp.sum(xp.sum(xp.abs(Z), axis=-1), axis=-1)
    return rate_reduction(Z, U, eps) - lam * l1


def measured_compression_rate(X, U, *, eps_sq=0.01, reduction="mean"):
    r"""R^c exactly as the paper's layer-wise figure measures it (``vis_utils/coding_rate.py``).

    The official hook takes the head projections :math:`W_k = XU_k` of the
    MSSA input (X = LN(Z^ℓ)), scales **each token's projection to unit ℓ2
    norm**, then computes per image and head
    :math:`\tfrac12\log\det(I_N + \frac{p}{N\cdot 0.01}\hat W_k\hat W_k^\top)`
    (0.01 plays the role of ε², so ε = 0.1), sums over heads and averages over
    images.  Normalising makes the number independent of token scale, which
    plain R^c is not.

    Args:
        X: MSSA inputs, shape ``(B, N, d)`` (or ``(N, d)`` for one image).
        U: bases, shape ``(K, d, p)``.
        eps_sq: the constant that plays ε² (0.01 in the official code).
        reduction: ``"mean"`` (a 0-d array, the figure's value) or ``"none"``
            (one value per image, whose std gives the figure's error bars).
    """
    check_array(X, "X", min_ndim=2)
    check_same_kind(X=X, U=U)
    K, p = check_heads(U, X.shape[-1])
    eps_sq = check_positive(eps_sq, "eps_sq")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    xp = namespace(X, U)
    W = _head_projections(X, U)
    norms = xp.linalg.vector_norm(W, axis=-1, keepdims=True)
    W_hat = W / xp.maximum(norms, xp.asarray(1e-12, dtype=W.dtype, device=device_of(W)))
    N = X.shape[-2]
    per_image = xp.sum(half_logdet_gram(W_hat, p / (N * eps_sq)), axis=-1)
    return xp.mean(per_image) if reduction == "mean" else per_image


def nonzero_fraction(Z, *, reduction="mean"):
    r"""Fraction of exactly non-zero entries, ‖Z‖₀ / (N·d), as the paper's figure plots it.

    Args:
        Z: ISTA outputs, shape ``(..., N, d)``.
        reduction: ``"mean"`` over images, or ``"none"`` (shape ``(...)``).
    """
    check_array(Z, "Z", min_ndim=2)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    xp = namespace(Z)
    nz = xp.astype(Z != 0, Z.dtype)
    per_image = xp.mean(xp.mean(nz, axis=-1), axis=-1)
    return xp.mean(per_image) if reduction == "mean" else per_image
