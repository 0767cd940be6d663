r"""Inverse demonstrations (the book's decoder chapter): in what sense the CRATE decoder undoes the encoder.

Here MSSA is the architecture's form with its constants absorbed into the step size,
:math:`\mathrm{MSSA}(Z) = \sum_k \mathrm{SSA}(Z\mid U_k)U_k^\top` (the gradient step of the
theory, :func:`minicrate.mssa_step`, also shrinks Z and carries a factor β).
An encoder MSSA step :math:`Z + \kappa\,\mathrm{MSSA}(Z)` followed by the decoder's
:math:`Z - \kappa\,\mathrm{MSSA}(Z)` returns Z up to O(κ²) (:func:`mssa_roundtrip`,
:func:`roundtrip_errors`, :func:`loglog_slope`), and synthesis with the dictionary
(:func:`synthesize`) inverts ISTA's sparse coding once it has converged
(:func:`ista_iterate`).  See :mod:`minicrate.layers.decoder` for the layers.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import check_positive
from minicrate.layers.decoder import PAPER_FORM, decoder_layer_forward
from minicrate.layers.ista import ista_forward
from minicrate.layers.mssa import mssa_forward
from minicrate.ops.functional import linear_forward


def _eye_like(Z):
    xp = namespace(Z)
    return xp.eye(Z.shape[-1], dtype=Z.dtype, device=device_of(Z))


def encoder_mssa_step(Z, U, kappa):
    r"""The paper-form compression step :math:`Z + \kappa\,\mathrm{MSSA}(Z\mid U)`
    (tied output, temperature 1, no LayerNorm; step size κ)."""
    kappa = check_positive(kappa, "kappa", allow_zero=True)
    M, _ = mssa_forward(Z, U, None, None, scale=1.0, tied_scale=kappa)
    return Z + M


def decoder_mssa_step(Z, U, kappa):
    r"""The paper-form decoder layer with ``E = I``: :math:`Z - \kappa\,\mathrm{MSSA}(Z\mid U)`
    (it runs :func:`decoder_layer_forward` itself, so the test exercises the layer)."""
    kappa = check_positive(kappa, "kappa", allow_zero=True)
    Y, _ = decoder_layer_forward(Z, {"E": _eye_like(Z), "U": U}, tied_scale=kappa, **PAPER_FORM)
    return Y


def mssa_roundtrip(Z, U, kappa):
    """One encoder MSSA step then one decoder MSSA step, both with step size κ
    and the same bases U; returns the reconstructed tokens (error O(κ²))."""
    return decoder_mssa_step(encoder_mssa_step(Z, U, kappa), U, kappa)


def roundtrip_errors(Z, U, kappas):
    """Relative errors ‖roundtrip(Z) − Z‖_F / ‖Z‖_F for each κ (a list of floats)."""
    xp = namespace(Z, U)
    norm = float(xp.linalg.vector_norm(Z))
    return [float(xp.linalg.vector_norm(mssa_roundtrip(Z, U, k) - Z)) / norm for k in kappas]


def loglog_slope(xs, ys):
    """Least-squares slope of log y against log x (the order of an error law)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def synthesize(A, D):
    r"""The decoder's linear map with the dictionary itself, :math:`A D^\top`
    (the row form of the paper's synthesis :math:`D A`), shape of ``A``."""
    Y, _ = linear_forward(A, D)
    return Y


def ista_iterate(X, D, *, eta=0.1, lam=0.1, steps=1):
    r"""``steps`` proximal-gradient iterations on the non-negative LASSO
    :math:`\min_{A\ge 0}\lambda\|A\|_1 + \tfrac12\|X - AD^\top\|_F^2`,
    :math:`A_{t+1} = \mathrm{ReLU}(A_t + \eta(X - A_tD^\top)D - \eta\lambda)`,
    warm-started at ``A_0 = X`` as in the code; ``steps=1`` is exactly
    :func:`minicrate.ista_forward`.  Used to show in what sense synthesis
    inverts ISTA (see the module docstring).

    Returns:
        the code A, X's shape, A >= 0.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    xp = namespace(X, D)
    A, _ = ista_forward(X, D, eta=eta, lam=lam)
    for _ in range(int(steps) - 1):
        P = A + eta * ((X - synthesize(A, D)) @ D) - eta * lam
        A = xp.where(P > 0, P, xp.zeros_like(P))
    return A
