"""Moving between tokens and attention heads (the K heads of MSSA), written once.

Multi-head attention keeps its per-head vectors either side by side as the features
of a token (``(..., N, K·p)``) or as one block per head (``(..., K, N, p)``).  The
plain layers (:mod:`minicrate.layers.mssa`) use the batched forms, the fused fast
paths (:mod:`minicrate.layers.fused`) the flattened ``(B·N, K·p)`` rows and
contiguous ``(B·K, N, p)`` blocks; both are the same permutation of the data (no
arithmetic).
"""

from __future__ import annotations

from minicrate.core.backend import device_of, namespace


def heads_to_tokens(O):
    """(..., K, N, p) -> (..., N, K·p): concatenate the heads along features."""
    xp = namespace(O)
    K, N, p = O.shape[-3:]
    moved = xp.permute_dims(O, (*range(O.ndim - 3), O.ndim - 2, O.ndim - 3, O.ndim - 1))
    return xp.reshape(moved, (*O.shape[:-3], N, K * p))


def tokens_to_heads(H, K):
    """(..., N, K·p) -> (..., K, N, p): the inverse of :func:`heads_to_tokens`."""
    xp = namespace(H)
    N, Kp = H.shape[-2:]
    split = xp.reshape(H, (*H.shape[:-2], N, K, Kp // K))
    return xp.permute_dims(split, (*range(split.ndim - 3), split.ndim - 2, split.ndim - 3, split.ndim - 1))


def bases_as_matrix(U):
    """U (K, d, p) -> [U_1 … U_K] of shape (d, K·p): the paper's tied output map."""
    xp = namespace(U)
    K, d, p = U.shape
    return xp.reshape(xp.permute_dims(U, (1, 0, 2)), (d, K * p))


def causal_mask(N, like):
    """Boolean (N, N), True where token i may attend to token j (j <= i)."""
    xp = namespace(like)
    idx = xp.arange(N, device=device_of(like))
    return idx[:, None] >= idx[None, :]


def rows_to_heads(T, B, N, K, p):
    """(B·N, K·p) rows -> contiguous (B·K, N, p) per-head blocks (one copy): the flattened
    :func:`tokens_to_heads` of the fused layers."""
    xp = namespace(T)
    return xp.reshape(xp.permute_dims(xp.reshape(T, (B, N, K, p)), (0, 2, 1, 3)), (B * K, N, p))


def heads_to_rows(T, B, N, K, p):
    """(B·K, N, p) per-head blocks -> contiguous (B·N, K·p) rows (one copy): the flattened
    :func:`heads_to_tokens` of the fused layers."""
    xp = namespace(T)
    return xp.reshape(xp.permute_dims(xp.reshape(T, (B, K, N, p)), (0, 2, 1, 3)), (B * N, K * p))
