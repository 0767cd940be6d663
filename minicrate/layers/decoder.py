r"""One CRATE decoder layer, the inverse of an encoder layer (CRATE-MAE, Pai et al. 2024).

The encoder layer compresses (MSSA, a step *down* the coding rate R^c) and
then sparsifies (ISTA, one step towards a sparse code A with X ≈ A Dᵀ).  The
decoder layer undoes the two steps in reverse order (rows are tokens; the
paper's columns are ``Z_paper = Zᵀ``):

.. math:: \tilde Z^{\ell+1/2} = \operatorname{LN}_1(\tilde Z^\ell)\,E^\top,
          \qquad \tilde Z^{\ell+1} = \tilde Z^{\ell+1/2}
          - \operatorname{MSSA}(\operatorname{LN}_2(\tilde Z^{\ell+1/2}))

* the linear map ``E`` ``(d, d)`` stands for the dictionary: the sparse code
  is *synthesised*, ``A Eᵀ`` with ``E ≈ D`` (the paper writes D̃ᵀ; the
  official ``crate_decoder.py`` calls ``F.linear(x, E)``, i.e. ``x Eᵀ``);
* the MSSA step is *subtracted*: the encoder moves along −∇R^c ≈ +MSSA, its
  time reversal along +∇R^c ≈ −MSSA (structured denoising vs diffusion).
  The skip carries the un-normalised Z̃^{ℓ+½}.

Three forms, chosen by the same switches as :func:`minicrate.encoder_layer_forward`:

* **independent** (released, the default): own E, U, W_out, b_out and LayerNorms;
* **tied to the encoder**: E ≡ D and U ≡ U of encoder layer L−1−ℓ (0-indexed),
  built by :func:`decoder_layer_params` with ``tie_encoder=True``;
* **paper**: ``PAPER_FORM`` -- no LayerNorm, output tied to U, temperature 1
  (only E and U are parameters).

The released code (``model/crate_ae/``) ties nothing.  Tying is done by handing the
*same arrays* to the decoder layer; the layer does not know, and the model's
backward adds the decoder's gradients into the encoder's keys
(:func:`accumulate`), so the shared parameter receives the sum of both uses.

Inverse demonstrations (:mod:`minicrate.measure.roundtrip`), each tested in
``tests/test_decoder.py`` (the fused layer for training speed is
:mod:`minicrate.layers.fused.decoder`):

* :func:`~minicrate.measure.roundtrip.mssa_roundtrip` -- in the paper form, one decoder MSSA step with step
  size κ after one encoder MSSA step with step size κ returns the tokens up to
  an error of order κ²: with M(Z) = MSSA(Z | U),
  ``Z + κM(Z) − κM(Z + κM(Z)) = Z − κ² J_M(Z)M(Z) + O(κ³)``.  It is the
  forward-then-backward Euler pair of one flow, so it inverts to first order
  in the step, for any tokens; tokens near a union of incoherent subspaces
  (CRATE's data model) are where the step means denoising.
* :func:`~minicrate.measure.roundtrip.ista_iterate` /
  :func:`~minicrate.measure.roundtrip.synthesize` -- the linear map inverts ISTA
  *up to the threshold*: for a complete orthogonal dictionary D and an input
  X = S Dᵀ with a non-negative code S, the non-negative LASSO solution is
  exactly ReLU(S − λ), so the synthesis ReLU(S − λ) Dᵀ differs from X by at
  most λ per coefficient: ``‖A Dᵀ − X‖_F ≤ λ·√nnz(S)``, with equality when every
  non-zero of S exceeds λ.  One step reaches that solution only with η = 1
  (the step 1/L for orthogonal D); with the code's η = 0.1 one step moves a
  tenth of the way from the warm start X, and it takes many iterations (or a
  learned E, as in the released decoder) to undo it.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_int, check_keys, check_positive
from minicrate.layers.encoder import identity_out
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

DECODER_KEYS = ("ln1_gamma", "ln1_beta", "E", "ln2_gamma", "ln2_beta", "U", "W_out", "b_out")
"""Parameters of one decoder layer, as in the issue (gradients use the same keys)."""

PAPER_FORM = {"scale": 1.0, "tie_out": True, "use_layernorm": False}
"""Switches of the paper form: no LayerNorm, output tied to U, temperature 1."""

TIED_TO_ENCODER = {"E": "D", "U": "U"}
"""Decoder key -> the key of the mirror encoder layer it shares in the tied form."""


def _norm(X, params, which, use_layernorm, ln_eps):
    if not use_layernorm:
        return X, None
    return layernorm_forward(X, params[f"{which}_gamma"], params[f"{which}_beta"], eps=ln_eps)


def decoder_layer_forward(Z, params, *, scale=None, tie_out=False, use_layernorm=True, causal=False,
                          ln_eps=1e-5, tied_scale=1.0, project_out=True):
    r"""Forward of one decoder layer, in the form of ``model/crate_ae/crate_decoder.py``:
    :math:`\tilde Z^{\ell+1/2} = \mathrm{LN}_1(\tilde Z^\ell)E^\top`,
    :math:`\tilde Z^{\ell+1} = \tilde Z^{\ell+1/2} - \mathrm{MSSA}(\mathrm{LN}_2(\tilde Z^{\ell+1/2}))`.

    Args:
        Z: tokens ``(..., N, d)``.
        params: ``E`` ``(d, d)``, ``U`` ``(K, d, p)``; unless ``tie_out``,
            ``W_out`` ``(d, K·p)`` and optionally ``b_out`` ``(d,)``; with
            ``use_layernorm``, ``ln1_gamma, ln1_beta, ln2_gamma, ln2_beta``
            ``(d,)``.  Tied to an encoder: build with :func:`decoder_layer_params`.
        scale: MSSA softmax temperature (None → 1/√p, the official code; 1 in the paper).
        tie_out: the paper's tied output ``tied_scale·[U_1…U_K]`` instead of W_out.
        use_layernorm: LN₁ before E and LN₂ before MSSA (official) or none (paper).
        causal: causal attention mask.
        ln_eps: LayerNorm ε.
        tied_scale: factor of the tied output; in the paper form it is the
            step size κ of the MSSA step being reversed.
        project_out: ``False``: no MSSA output map (the release's single-head form,
            as in :func:`minicrate.layers.encoder.encoder_layer_forward`).

    Returns:
        ``(Y, cache)``: Y ``(..., N, d)``; ``cache["mssa"]["A"]`` is the attention.
    """
    check_array(Z, "Z", min_ndim=2)
    check_positive(ln_eps, "ln_eps")  # checked even when unused, as in the encoder layer
    needed = ["E", "U"] + (["ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta"] if use_layernorm else [])
    if not isinstance(project_out, bool):
        raise TypeError(f"project_out must be True or False, got {project_out!r}")
    if not project_out and tie_out:
        raise ValueError("project_out=False (no output map) and tie_out=True exclude each other")
    needed += [] if tie_out or not project_out else ["W_out"]
    check_keys(params, needed)
    d = Z.shape[-1]
    check_array(params["E"], "E", ndim=2, shape=(d, d))
    X1, ln1 = _norm(Z, params, "ln1", use_layernorm, ln_eps)
    Z_half, lin = linear_forward(X1, params["E"])  # the synthesis X1 Eᵀ
    X2, ln2 = _norm(Z_half, params, "ln2", use_layernorm, ln_eps)
    W_out = None if tie_out else params["W_out"] if project_out else identity_out(X2, params["U"])
    b_out = None if tie_out or not project_out else params.get("b_out")
    M, mssa = mssa_forward(X2, params["U"], W_out, b_out, scale=scale, causal=causal, tied_scale=tied_scale)
    Y = Z_half - M
    cache = {"ln1": ln1, "lin": lin, "ln2": ln2, "mssa": mssa, "params": params, "Z_half": Z_half}
    return Y, cache


def decoder_layer_backward(dY, cache):
    r"""Backward of :func:`decoder_layer_forward`:
    MSSA backward with upstream :math:`-\bar Y` gives G₂ and the MSSA gradients;
    :math:`\bar Z^{\ell+1/2} = \bar Y + \mathrm{LN}_2^\top(G_2)`;
    :math:`\bar E = \textstyle\sum (\bar Z^{\ell+1/2})^\top \mathrm{LN}_1(Z)`;
    :math:`\bar Z = \mathrm{LN}_1^\top(\bar Z^{\ell+1/2} E)`.

    Returns:
        ``(dZ, grads)``; grads has exactly the keys of the layer's params
        (parameters a switch leaves unused get zeros).
    """
    check_cache(cache, "decoder_layer_forward", keys=("ln1", "lin", "ln2", "mssa", "params", "Z_half"))
    check_cotangent(dY, cache["Z_half"].shape, cache["Z_half"])
    params = cache["params"]
    xp = namespace(dY)
    grads = {k: xp.zeros_like(v) for k, v in params.items()}
    dX2, g = mssa_backward(-dY, cache["mssa"])
    grads.update({k: v for k, v in g.items() if k in grads})  # (project_out=False: no W_out)
    if cache["ln2"] is not None:
        dbranch, g = layernorm_backward(dX2, cache["ln2"])
        grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    else:
        dbranch = dX2
    dZ_half = dY + dbranch
    dX1, g = linear_backward(dZ_half, cache["lin"])
    grads["E"] = g["W"]
    if cache["ln1"] is None:
        return dX1, grads
    dZ, g = layernorm_backward(dX1, cache["ln1"])
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return dZ, grads


# --------------------------------------------------------------------------
# Tying to the mirror encoder layer (a flat parameter dict, as in minicrate.models.classifier)


def mirror_layer(i, depth):
    """The encoder layer (0-indexed) that decoder layer ``i`` inverts: ``depth − 1 − i``
    (the book's 1-indexed L + 1 − ℓ)."""
    depth = check_int(depth, "depth", minimum=1)
    i = check_int(i, "i")
    if not 0 <= i < depth:
        raise ValueError(f"decoder layer index must be in [0, {depth}), got {i}")
    return depth - 1 - i


def decoder_layer_keys(i, depth, *, tie_encoder=False, prefix="decoder", encoder_prefix="layers"):
    """Map each decoder-layer key to the flat parameter key that holds it.

    Independent: ``"E" -> "decoder.{i}.E"``, etc.  Tied: ``"E" -> "layers.{j}.D"``
    and ``"U" -> "layers.{j}.U"`` with ``j = mirror_layer(i, depth)``.
    """
    mirror_layer(i, depth)  # validates i and depth
    keys = {k: f"{prefix}.{i}.{k}" for k in DECODER_KEYS}
    if tie_encoder:
        j = mirror_layer(i, depth)
        keys.update({k: f"{encoder_prefix}.{j}.{v}" for k, v in TIED_TO_ENCODER.items()})
    return keys


def decoder_layer_params(params, i, depth, *, tie_encoder=False, prefix="decoder", encoder_prefix="layers"):
    """Decoder layer ``i``'s parameters from a flat dict, and the key map used.

    With ``tie_encoder`` the returned dict holds the encoder's ``D`` and ``U``
    arrays themselves (no copies), so the two layers share them.

    Returns:
        ``(layer_params, keys)``: ``keys`` maps layer keys to flat keys, for
        :func:`accumulate`.
    """
    check_keys(params, ())
    keys = decoder_layer_keys(i, depth, tie_encoder=tie_encoder, prefix=prefix, encoder_prefix=encoder_prefix)
    layer = {k: params[flat] for k, flat in keys.items() if flat in params}
    return layer, {k: keys[k] for k in layer}


def accumulate(grads, layer_grads, keys):
    """Add a layer's gradients into the flat ``grads`` under ``keys[name]``.

    A parameter used twice (a tied E ≡ D) receives the sum of both uses'
    gradients, which is its total derivative.
    """
    for name, g in layer_grads.items():
        flat = keys[name]
        grads[flat] = g if flat not in grads else grads[flat] + g
    return grads
