"""The case where the theory must hold: tokens on a known union of subspaces.

Yu et al. derive the CRATE layer for tokens that lie near a union of K low-dimensional
subspaces with bases U_1 … U_K (the paper's Section 2).  Here the data *are* such tokens
and the network is the paper's form (tied output ``[U_1 … U_K]``, temperature 1, no
LayerNorm) with every layer's ``U`` set to the true bases, so nothing is learned and
nothing can undo the compression: R^c must fall layer after layer.  Each layer is the
derivation's two steps, exactly: the compression step
:func:`~minicrate.layers.mssa.mssa_step` (``Z ← (1 − κβ)Z + κβ·MSSA(Z|U)``, β = p/(Nε²))
and one ISTA step (:func:`~minicrate.layers.ista.ista_forward`) with the dictionary
``D = I`` (the tokens are already sparse in the standard basis, so it soft-thresholds
them by ηλ).  (The trained networks' layer is ``Z + MSSA(Z)``: the same step with κβ = 1
and without the factor 1 − κβ, which lets the tokens' scale grow.)

* :func:`union_of_subspaces`: ``K`` orthogonal subspaces of dimension ``p`` in
  ``R^{K·p}`` (blocks of the identity), each token a non-negative combination of one
  subspace's basis (non-negative, so that the ISTA step's ReLU keeps the structure)
  plus a little non-negative noise everywhere;
* :func:`synthetic_descent`: R^c of the tokens before the first layer and after each
  layer, both as the rate of the derivation (:func:`~minicrate.objective.rates.compression_rate`,
  precision ε) and as the paper's measurement (unit-normalised head projections,
  :func:`~minicrate.objective.rates.measured_compression_rate`), together with the non-zero
  fraction; the same network with *random* orthonormal bases is the control.
"""

from __future__ import annotations

import numpy as np

from minicrate.core.validate import check_int, check_positive
from minicrate.layers.ista import ista_forward
from minicrate.layers.mssa import mssa_step
from minicrate.objective.rates import compression_rate, measured_compression_rate, nonzero_fraction


def union_of_subspaces(n_samples=64, n_tokens=32, heads=4, head_dim=8, *, noise=0.05, seed=0):
    """Tokens on a union of ``heads`` orthogonal subspaces of ``R^{heads·head_dim}``.

    Returns:
        ``(Z, U, labels)``: tokens ``(n_samples, n_tokens, d)`` (float64, d = heads·head_dim),
        the true bases ``U`` ``(heads, d, head_dim)`` (blocks of the identity) and the
        subspace of each token ``(n_samples, n_tokens)``.
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_tokens = check_int(n_tokens, "n_tokens", minimum=2)
    heads = check_int(heads, "heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    noise = check_positive(noise, "noise", allow_zero=True)
    rng = np.random.default_rng(seed)
    d = heads * head_dim
    U = np.stack([np.eye(d)[:, k * head_dim:(k + 1) * head_dim] for k in range(heads)])
    labels = rng.integers(0, heads, size=(n_samples, n_tokens))
    coeff = np.abs(rng.standard_normal((n_samples, n_tokens, head_dim))) / np.sqrt(head_dim)
    Z = noise * np.abs(rng.standard_normal((n_samples, n_tokens, d))) / np.sqrt(d)
    for k in range(heads):
        hit = labels == k
        Z[hit] += coeff[hit] @ U[k].T
    return Z, U, labels


def random_bases(heads, head_dim, seed=0):
    """``heads`` orthonormal bases ``(heads, d, head_dim)`` splitting a random rotation of R^d."""
    d = heads * head_dim
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return np.stack([Q[:, k * head_dim:(k + 1) * head_dim] for k in range(heads)])


def _rates(Z, U, eps, eps_sq):
    return (float(np.mean(compression_rate(Z, U, eps))),
            float(np.mean(measured_compression_rate(Z, U, eps_sq=eps_sq, reduction="none"))),
            float(np.mean(nonzero_fraction(Z, reduction="none"))))


def synthetic_descent(depth=8, *, n_samples=64, n_tokens=32, heads=4, head_dim=8, noise=0.05,
                      kappa=0.5, eta=0.1, lam=0.1, eps=0.5, eps_sq=0.01, seed=0):
    """R^c layer by layer in the derivation's network with the true bases (and a control).

    Each layer: ``Z ← mssa_step(Z, U, eps, kappa)``, then ``Z ← ista_forward(Z, I, eta, lam)``;
    ``U`` the data's bases, or for the control :func:`random_bases`.

    Returns:
        ``{"layers": [0 … depth], "true": {...}, "random": {...}, "setting": {...}}``, each
        of ``true``/``random`` with lists over ``layers`` (0: the input): ``rc`` (the
        derivation's R^c with precision ``eps``), ``rc_measured`` (the paper's protocol) and
        ``nonzero``.
    """
    depth = check_int(depth, "depth", minimum=1)
    Z0, U_true, _ = union_of_subspaces(n_samples, n_tokens, heads, head_dim, noise=noise, seed=seed)
    out = {"layers": list(range(depth + 1)),
           "setting": dict(depth=depth, n_samples=n_samples, n_tokens=n_tokens, heads=heads,
                           head_dim=head_dim, noise=noise, kappa=kappa, eta=eta, lam=lam, eps=eps,
                           eps_sq=eps_sq, seed=seed)}
    D = np.eye(heads * head_dim)
    for name, U in (("true", U_true), ("random", random_bases(heads, head_dim, seed + 1))):
        Z, rows = Z0, [_rates(Z0, U, eps, eps_sq)]
        for _ in range(depth):
            Z, _ = ista_forward(mssa_step(Z, U, eps, kappa), D, eta=eta, lam=lam)
            rows.append(_rates(Z, U, eps, eps_sq))
        out[name] = {k: [r[i] for r in rows] for i, k in enumerate(("rc", "rc_measured", "nonzero"))}
    return out


def monotone_descent(values):
    """True when every value is below the one before it."""
    return bool(all(b < a for a, b in zip(values[:-1], values[1:], strict=True)))
