r"""Wrongly wired decoder layers, composed from the library's own blocks.

:func:`minicrate.layers.decoder.decoder_layer_forward` is LayerNorm, a linear
map and MSSA put together (official form: LayerNorms on, untied ``W_out``):

.. math:: \tilde Z^{\ell+1/2} = \operatorname{LN}_1(\tilde Z)E^\top, \qquad
          Y = \tilde Z^{\ell+1/2} - \operatorname{MSSA}(\operatorname{LN}_2(\tilde Z^{\ell+1/2}))

The mistakes of the decoder exercises are wiring slips (a block left out, a
sign, a skip path dropped), so the wrong outputs are the same blocks --
:mod:`minicrate.ops.layernorm`, :func:`minicrate.ops.functional.linear_forward`,
:mod:`minicrate.layers.mssa` -- put together with the one change.  With every
switch at its default the two functions here are the library's layer (tested).
"""

from __future__ import annotations

from minicrate.grading.mistakes.mssa import mssa_backward_variant
from minicrate.layers.mssa import mssa_forward
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward


def decoder_forward_wired(Z, params, *, ln1=True, ln2=True, scale=None):
    """The decoder layer's output with LN₁ (before E) or LN₂ (before MSSA) left out.

    Args:
        Z: tokens ``(..., N, d)``.
        params: the decoder layer's parameters (``DECODER_KEYS``).
        ln1, ln2: keep that LayerNorm.
        scale: MSSA temperature (None: 1/√p).

    Returns:
        ``Y`` ``(..., N, d)``.
    """
    X1 = layernorm_forward(Z, params["ln1_gamma"], params["ln1_beta"])[0] if ln1 else Z
    Z_half, _ = linear_forward(X1, params["E"])
    X2 = layernorm_forward(Z_half, params["ln2_gamma"], params["ln2_beta"])[0] if ln2 else Z_half
    M, _ = mssa_forward(X2, params["U"], params["W_out"], params.get("b_out"), scale=scale)
    return Z_half - M


def decoder_backward_wired(dY, cache, *, upstream_sign=-1.0, skip=True, through_ln1=True, transpose_term="both"):
    """The decoder layer's backward, from the cache of
    :func:`~minicrate.layers.decoder.decoder_layer_forward` (official form), with one wiring slip.

    Args:
        dY: upstream gradient ``(..., N, d)``.
        cache: the library forward's cache (LayerNorms on, ``W_out`` given).
        upstream_sign: the factor on ``dY`` handed to the MSSA backward (right: −1, since
            ``Y = Z̃½ − MSSA(...)``).
        skip: add the skip path's ``dY`` to ``dZ̃½``.
        through_ln1: finish with LN₁'s backward (else ``dZ`` is the gradient of LN₁'s output).
        transpose_term: the MSSA score path, as in
            :func:`~minicrate.grading.mistakes.mssa.mssa_backward_variant`.

    Returns:
        ``(dZ, grads)`` keyed like the layer's parameters.
    """
    if cache["ln1"] is None or cache["ln2"] is None:
        raise ValueError("the decoder mistakes are built for the layer with its LayerNorms on")
    dX2, grads = mssa_backward_variant(upstream_sign * dY, cache["mssa"], transpose_term=transpose_term)
    dbranch, g = layernorm_backward(dX2, cache["ln2"])
    grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    dZ_half = dY + dbranch if skip else dbranch
    dX1, g = linear_backward(dZ_half, cache["lin"])
    grads["E"] = g["W"]
    dZ, g = layernorm_backward(dX1, cache["ln1"])
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return (dZ if through_ln1 else dX1), grads
