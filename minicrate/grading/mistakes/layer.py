r"""Known mistakes of the CRATE encoder layer (tasks 7.3, 7.4): the library's blocks, wired wrongly.

:func:`minicrate.layers.encoder.encoder_layer_forward` is
:math:`Z^{1/2} = Z + \operatorname{MSSA}(\operatorname{LN}_1(Z))`,
:math:`Y = \operatorname{ISTA}(\operatorname{LN}_2(Z^{1/2}))`.  The layer's
mistakes are wiring slips, so each is built by composing the library's own
block forwards and backwards (:mod:`minicrate.ops.layernorm`,
:mod:`minicrate.layers.mssa`, :mod:`minicrate.layers.ista`) with the one change;
a wrong block (a backward without the ReLU mask, say) is passed in as the
block's backward.  With no change the compositions are the library's layer
(tested).  Everything works on host NumPy arrays (the tasks pass host copies).
"""

from __future__ import annotations

from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.layers.ista import ista_backward, ista_forward
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

RESIDUALS = ("raw", "none", "normalised")
"""Values of ``residual``: the skip carries Z (right), nothing, or LN₁(Z)."""


def _layernorm(X, params, which):
    return layernorm_forward(X, params[f"{which}_gamma"], params[f"{which}_beta"])[0]


def layer_forward_variant(Z, params, *, residual="raw", ln2=True, ista_residual=False):
    """The layer's forward (official form, library defaults) with one wiring slip.

    Args:
        Z, params: as for :func:`~minicrate.layers.encoder.encoder_layer_forward`.
        residual: what the skip around MSSA carries (see :data:`RESIDUALS`).
        ln2: normalise ISTA's input with LN₂ (False: ISTA reads Z½ itself).
        ista_residual: add a skip around ISTA (the layer has none).

    Returns:
        ``Y``, of Z's shape.
    """
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    X1 = _layernorm(Z, params, "ln1")
    M, _ = mssa_forward(X1, params["U"], params["W_out"], params["b_out"])
    Z_half = {"raw": Z + M, "none": M, "normalised": X1 + M}[residual]
    X2 = _layernorm(Z_half, params, "ln2") if ln2 else Z_half
    Y, _ = ista_forward(X2, params["D"])
    return Y + Z_half if ista_residual else Y


def layernorms_swapped(Z, params):
    """The layer with ln1_* and ln2_* exchanged: the library's layer on renamed parameters."""
    swapped = dict(params)
    for name in ("gamma", "beta"):
        swapped[f"ln1_{name}"], swapped[f"ln2_{name}"] = params[f"ln2_{name}"], params[f"ln1_{name}"]
    return encoder_layer_forward(Z, swapped)[0]


def half_step_gradient(dY, cache):
    """``dZ½``: the library's ISTA and LN₂ backwards on the layer's cache (what the skip passes to dZ)."""
    dX2, _ = ista_backward(dY, cache["ista"])
    return layernorm_backward(dX2, cache["ln2"])[0]


def dZ_without_skip(dY, cache):
    """dZ without the skip's dZ½: the library layer's dZ minus :func:`half_step_gradient`."""
    return encoder_layer_backward(dY, cache)[0] - half_step_gradient(dY, cache)


def layer_backward_variant(dY, cache, *, ista_bwd=ista_backward, mssa_bwd=mssa_backward, through_ln2=True):
    """The layer's backward (official form) composed from block backwards, one of them possibly wrong.

    Args:
        dY: upstream gradient, of Z's shape.
        cache: of :func:`~minicrate.layers.encoder.encoder_layer_forward` (LayerNorms on).
        ista_bwd, mssa_bwd: the ISTA and MSSA backwards ``(d_out, block_cache) -> (d_in, grads)``
            (default: the library's).
        through_ln2: backpropagate through LN₂ (False: dZ½ is ISTA's input gradient itself;
            LN₂'s parameter gradients are still the right ones).

    Returns:
        ``(dZ, grads)`` as :func:`~minicrate.layers.encoder.encoder_layer_backward` does.
    """
    grads = {}
    dX2, g = ista_bwd(dY, cache["ista"])
    grads["D"] = g["D"]
    dZ_half, g = layernorm_backward(dX2, cache["ln2"])
    grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    if not through_ln2:
        dZ_half = dX2
    dX1, g = mssa_bwd(dZ_half, cache["mssa"])
    grads.update(g)
    dZ_branch, g = layernorm_backward(dX1, cache["ln1"])
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return dZ_half + dZ_branch, grads
