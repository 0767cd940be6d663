r"""Known mistakes of the coding-rate tasks (3.1–3.4), built from :mod:`minicrate.objective.rates`.

The rates depend on ε only through their constant, α = d/(Nε²) in R and
β = p/(Nε²) in R^c, so the library's rate at an *equivalent* ε
(:func:`equivalent_eps`) is exactly the rate with the wrong constant a student
wrote; its gradient at that ε is the gradient with that constant.  A forgotten
sum over heads or over the batch is the library's R^c of one head at a time or
its dU of one sample at a time.  Inputs and outputs are host NumPy arrays.
"""

from __future__ import annotations

import math

import numpy as np

from minicrate.objective.rates import compression_rate, compression_rate_grad

# The wrong constants students write, from the sizes of one case: N tokens of width d,
# head width p, B the batch size mistaken for N, and ε.
WRONG_ALPHA = {
    "swapped": lambda N, d, B, eps: N / (d * eps**2),
    "no_d": lambda N, d, B, eps: 1.0 / (N * eps**2),
    "no_N": lambda N, d, B, eps: d / eps**2,
    "batch_N": lambda N, d, B, eps: d / (B * eps**2),
    "eps_not_squared": lambda N, d, B, eps: d / (N * eps),
}
"""Wrong α = d/(Nε²), by kind (the keys of :data:`ALPHA_HINTS`)."""

WRONG_BETA = {
    "d_not_p": lambda N, d, p, B, eps: d / (N * eps**2),
    "no_N": lambda N, d, p, B, eps: p / eps**2,
    "batch_N": lambda N, d, p, B, eps: p / (B * eps**2),
    "eps_not_squared": lambda N, d, p, B, eps: p / (N * eps),
}
"""Wrong β = p/(Nε²), by kind (the keys of :data:`BETA_HINTS`)."""

ALPHA_HINTS = {
    "swapped": "α = d/(Nε²): the token width d = Z.shape[-1] goes on top and the number of "
    "tokens N = Z.shape[-2] below; you have them swapped (wrong N/d in the constant)",
    "no_d": "α = d/(Nε²) has the token width d = Z.shape[-1] in the numerator; yours lacks it",
    "no_N": "α = d/(Nε²) divides by the number of tokens N = Z.shape[-2]; yours does not",
    "batch_N": "wrong N in α = d/(Nε²): N is the number of tokens of one sample, Z.shape[-2], "
    "not the batch size Z.shape[0]",
    "eps_not_squared": "α = d/(Nε²) uses ε squared; yours divides by ε only",
}
"""Hint of each wrong α (tasks 3.1 and 3.2)."""

BETA_HINTS = {
    "d_not_p": "β = p/(Nε²) uses the head width p = U.shape[-1] (each projection ZU_k is "
    "p-dimensional data), not the model width d (wrong p in the constant)",
    "no_N": "β = p/(Nε²) divides by the number of tokens N = Z.shape[-2]; yours does not",
    "batch_N": "wrong N in β = p/(Nε²): N is the number of tokens of one sample, Z.shape[-2], "
    "not the batch size Z.shape[0]",
    "eps_not_squared": "β = p/(Nε²) uses ε squared; yours divides by ε only",
}
"""Hint of each wrong β (tasks 3.3 and 3.4)."""


def equivalent_eps(width, N, constant):
    """The ε at which the library's constant ``width/(N ε²)`` equals ``constant``."""
    return math.sqrt(width / (N * constant))


def _sizes(Z):
    """(N, d, B) of tokens Z; B is Z.shape[0] for a batch and 1 for a single sample."""
    return Z.shape[-2], Z.shape[-1], Z.shape[0] if Z.ndim == 3 else 1


def alpha_eps(Z, eps, kind):
    """The ε at which :func:`~minicrate.objective.rates.coding_rate` of ``Z`` uses the wrong α ``kind``."""
    N, d, B = _sizes(Z)
    return equivalent_eps(d, N, WRONG_ALPHA[kind](N, d, B, eps))


def beta_eps(Z, U, eps, kind):
    """The ε at which :func:`~minicrate.objective.rates.compression_rate` of ``Z, U`` uses the wrong β ``kind``."""
    N, d, B = _sizes(Z)
    p = U.shape[-1]
    return equivalent_eps(p, N, WRONG_BETA[kind](N, d, p, B, eps))


def per_head_rates(Z, U, eps):
    """Each head's rate ½ log det(I + β W_kᵀW_k), shape ``(..., K)``: the library's R^c of
    one head at a time (what a student returns who forgets to sum the heads)."""
    return np.stack([compression_rate(Z, U[k : k + 1], eps) for k in range(U.shape[0])], axis=-1)


def per_sample_dU(Z, U, eps):
    """dR^c/dU of every sample, shape ``(..., K, d, p)``: the library's gradient of one
    sample at a time (what a student returns who forgets to sum dU over the batch)."""
    N, d = Z.shape[-2:]
    dU = np.stack([compression_rate_grad(z, U, eps)[1] for z in Z.reshape(-1, N, d)])
    return dU.reshape(*Z.shape[:-2], *U.shape)
