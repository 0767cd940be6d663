r"""Known mistakes of LayerNorm (tasks 7.1, 7.2), built from :mod:`minicrate.ops.layernorm`.

A wrong forward is the library's LayerNorm with changed inputs (a rescaled γ
and ε, swapped axes, swapped parameters) or its cache
``(X_hat, inv_std, gamma)`` put together differently; a wrong backward is the
library's backward on a changed cache, or the reference plus the term it lacks.
Everything works on host NumPy arrays (the tasks pass host copies).
"""

from __future__ import annotations

import math

import numpy as np

from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

# --------------------------------------------------------------------------
# Wrong forwards: (X, gamma, beta, eps) -> Y
# --------------------------------------------------------------------------


def unbiased_variance(X, gamma, beta, eps):
    r"""The variance divided by d − 1.  With c = (d − 1)/d,
    :math:`(x-\mu)/\sqrt{\sigma^2/c + \epsilon} = \sqrt c\,(x-\mu)/\sqrt{\sigma^2 + c\epsilon}`:
    the library's LayerNorm with ε → cε and γ → √c γ."""
    d = X.shape[-1]
    if d < 2:  # d − 1 = 0: no unbiased variance
        return np.full_like(X, np.nan)
    c = (d - 1) / d
    return layernorm_forward(X, math.sqrt(c) * gamma, beta, eps=c * eps)[0]


def eps_outside_the_root(X, gamma, beta, eps):
    """(x − μ)/(√σ² + ε): the library's x̂ rescaled by √(σ² + ε)/(√σ² + ε), σ² read back from its cache."""
    _, (X_hat, inv_std, _) = layernorm_forward(X, gamma, beta, eps=eps)
    std = np.sqrt(np.maximum(inv_std**-2 - eps, 0.0))  # √σ² from inv_std = 1/√(σ² + ε)
    return gamma * (X_hat / (inv_std * (std + eps))) + beta


def normalised_over_tokens(X, gamma, beta, eps):
    """Each feature normalised over the tokens (axis −2): the library's x̂ of the transposed tokens."""
    n = X.shape[-2]
    _, (Xt_hat, _, _) = layernorm_forward(np.swapaxes(X, -1, -2), np.ones(n), np.zeros(n), eps=eps)
    return gamma * np.swapaxes(Xt_hat, -1, -2) + beta


def without_affine(X, gamma, beta, eps):
    """No γ ⊙ x̂ + β: the library forward's cached x̂."""
    return layernorm_forward(X, gamma, beta, eps=eps)[1][0]


def affine_swapped(X, gamma, beta, eps):
    """β ⊙ x̂ + γ: the library's LayerNorm with γ and β exchanged."""
    return layernorm_forward(X, beta, gamma, eps=eps)[0]


# --------------------------------------------------------------------------
# Wrong backwards: (dY, cache of layernorm_forward) -> one output
# --------------------------------------------------------------------------


def grads_averaged(dY, cache):
    """dγ, dβ divided by the number of tokens they sum over (all axes but the last)."""
    _, grads = layernorm_backward(dY, cache)
    tokens = dY.size // dY.shape[-1]
    return {k: v / tokens for k, v in grads.items()}


def grads_per_token(dY, cache):
    """dγ, dβ not summed over the tokens: dY ⊙ x̂ and dY themselves."""
    return {"gamma": dY * cache[0], "beta": dY}


def dX_without_xhat_term(dY, cache):
    """dX without x̂ ⊙ mean(ĝ ⊙ x̂): the library's backward on a cache whose x̂ is zero (x̂ enters dX only there)."""
    X_hat, inv_std, gamma = cache
    return layernorm_backward(dY, (np.zeros_like(X_hat), inv_std, gamma))[0]


def dX_without_mean_term(dY, cache):
    """dX without −mean(ĝ)/√(σ² + ε): the library's dX plus that term."""
    _, inv_std, gamma = cache
    return layernorm_backward(dY, cache)[0] + inv_std * np.mean(gamma * dY, axis=-1, keepdims=True)


def dX_without_gamma(dY, cache):
    """ĝ = dY instead of γ ⊙ dY: the library's backward on a cache whose γ is one."""
    X_hat, inv_std, gamma = cache
    return layernorm_backward(dY, (X_hat, inv_std, np.ones_like(gamma)))[0]
