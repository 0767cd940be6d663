r"""Known mistakes of the ISTA step (tasks 6.1, 6.2 and the layer's 7.4), built from :mod:`minicrate.layers.ista`.

:func:`~minicrate.layers.ista.ista_forward` keeps only ``Y`` and the ReLU mask,
not the pre-activation.  The step's linear part
:math:`Q = X + \eta(XD - XD^\top D)` is recovered *exactly* from two library
calls with :math:`\lambda = 0`: the map is linear, so :math:`Q(-X) = -Q(X)` and
:math:`Q = \operatorname{ReLU}(Q) - \operatorname{ReLU}(-Q)`.  Every wrong
forward here is that library :math:`Q` with one term changed; every wrong
backward is the library's backward, a changed cache, or the reference plus the
term it lacks.  Everything works on host NumPy arrays (the tasks pass host copies).
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import namespace
from minicrate.layers.ista import ista_backward, ista_forward

RELU_MASK_HINT = (
    "forgetting the ReLU mask: the ReLU passes gradient only where its input P was "
    "positive, so P̄ = Ȳ ⊙ 1[P > 0] before anything else"
)
"""Hint of "forgetting the ReLU mask" (task 6.2 and the layer's backward, 7.4)."""


def _relu(x):
    return np.maximum(x, 0.0)


def ista_linear(X, D, eta):
    r"""The step's linear map :math:`Q = X + \eta(XD - XD^\top D)`, from the library: ReLU(Q) − ReLU(−Q)."""
    return ista_forward(X, D, eta=eta, lam=0.0)[0] - ista_forward(-X, D, eta=eta, lam=0.0)[0]


def ista_preactivation(X, D, eta, lam):
    r"""The ReLU's input :math:`P = Q - \eta\lambda` of :func:`~minicrate.layers.ista.ista_forward`
    (the mistake "forgetting the ReLU"; the layer's case builder keeps it away from the kink)."""
    return ista_linear(X, D, eta) - eta * lam


# --------------------------------------------------------------------------
# Wrong forwards: (X, D, eta, lam) -> Y
# --------------------------------------------------------------------------


def plus_threshold(X, D, eta, lam):
    """+ηλ instead of −ηλ."""
    return _relu(ista_linear(X, D, eta) + eta * lam)


def swapped_dictionary(X, D, eta, lam):
    """D and Dᵀ swapped: X + η(XDᵀ − XDDᵀ) is the library's step with the dictionary Dᵀ."""
    return ista_forward(X, D.T, eta=eta, lam=lam)[0]


def two_sided_threshold(X, D, eta, lam):
    """sign(Q)·max(|Q| − ηλ, 0) = ReLU(Q − ηλ) − ReLU(−Q − ηλ): the library's step at X minus its step at −X."""
    return ista_forward(X, D, eta=eta, lam=lam)[0] - ista_forward(-X, D, eta=eta, lam=lam)[0]


def without_warm_start(X, D, eta, lam):
    """The step without its warm start X: ReLU(Q − X − ηλ)."""
    return _relu(ista_linear(X, D, eta) - X - eta * lam)


def threshold_without_eta(X, D, eta, lam):
    """Threshold λ instead of ηλ: ReLU(Q − λ)."""
    return _relu(ista_linear(X, D, eta) - lam)


# --------------------------------------------------------------------------
# Wrong backwards: (dY, cache of ista_forward) -> one output
# --------------------------------------------------------------------------


def ista_backward_without_mask(dY, cache):
    """The backward with the ReLU mask forgotten: the library's backward on a cache whose mask is all ones."""
    xp = namespace(cache["active"])
    return ista_backward(dY, {**cache, "active": xp.ones_like(cache["active"])})


def _masked(dY, cache):
    """P̄ = Ȳ ⊙ 1[P > 0]."""
    return np.where(cache["active"], dY, 0.0)


def dD_without_transposed_term(dY, cache):
    """dD = η(G − DG), G = XᵀP̄: the library's η(G − D(G + Gᵀ)) plus the ηDGᵀ it has and the mistake lacks."""
    d = cache["X"].shape[-1]
    G = cache["X"].reshape(-1, d).T @ _masked(dY, cache).reshape(-1, d)
    return ista_backward(dY, cache)[1]["D"] + cache["eta"] * (cache["D"] @ G.T)


def dX_by_the_forward_map(dY, cache):
    """dX = Q(P̄): the forward's linear map (the library's, see :func:`ista_linear`) instead of its transpose."""
    return ista_linear(_masked(dY, cache), cache["D"], cache["eta"])
