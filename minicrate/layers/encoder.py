r"""One CRATE encoder layer (``model/crate.py``, class ``Transformer``) and its backward.

.. math:: Z^{\ell+1/2} = Z^\ell + \operatorname{MSSA}(\operatorname{LN}_1(Z^\ell)),
          \qquad Z^{\ell+1} = \operatorname{ISTA}(\operatorname{LN}_2(Z^{\ell+1/2}))

The skip carries the un-normalised :math:`Z^\ell`; there is no skip around
ISTA (its warm start is the identity path).  Switches give the paper form:

======================  =========================  ===========================
switch                  official code (default)    paper / book
======================  =========================  ===========================
``tie_out``             False: learned W_out, bias  True: output ``c·[U_1…U_K]``
``scale``               None → 1/√p                 1.0
``use_layernorm``       True (pre-LN)               False
``eta``, ``lam``        0.1, 0.1 (MAE: λ = 0.5)     free
======================  =========================  ===========================

``project_out=False`` is the released code's single-head form: no output map at
all (MSSA returns the concatenated heads; needs ``K·p = d``, and the params
hold no ``W_out, b_out``).

Layer parameters (a dict): ``ln1_gamma, ln1_beta, U, W_out, b_out,
ln2_gamma, ln2_beta, D``.  The gradients dict has exactly the keys of
``params``; parameters a switch leaves unused get zero gradients.
"""

from __future__ import annotations

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_keys, check_positive
from minicrate.layers.ista import ista_backward, ista_forward
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

LAYER_KEYS = ("ln1_gamma", "ln1_beta", "U", "W_out", "b_out", "ln2_gamma", "ln2_beta", "D")


def _norm(X, params, which, use_layernorm, ln_eps):
    if not use_layernorm:
        return X, None
    return layernorm_forward(X, params[f"{which}_gamma"], params[f"{which}_beta"], eps=ln_eps)


def identity_out(X, U):
    """The identity ``(d, K·p)`` output map of ``project_out=False`` (needs ``K·p = d``)."""
    xp = namespace(X)
    d, Kp = X.shape[-1], U.shape[0] * U.shape[2]
    if Kp != d:
        raise ValueError(f"project_out=False (no output map) needs K·p = d = {d}, got U of shape {tuple(U.shape)}")
    return xp.eye(d, dtype=X.dtype, device=device_of(X))


def encoder_layer_forward(Z, params, *, scale=None, tie_out=False, use_layernorm=True, eta=0.1,
                          lam=0.1, causal=False, ln_eps=1e-5, tied_scale=1.0, project_out=True):
    """Forward of one CRATE layer.

    Args:
        Z: tokens ``(..., N, d)``.
        params: the layer's parameters (see module docstring); ``U`` is
            ``(K, d, p)``, ``W_out`` ``(d, K·p)``, ``D`` ``(d, d)``.
        scale, causal: MSSA temperature and causal mask.
        tie_out: use the paper's tied output ``tied_scale·[U_1…U_K]``.
        use_layernorm: pre-LN before MSSA and ISTA (official) or none (paper).
        eta, lam: ISTA step size and threshold weight.
        ln_eps: LayerNorm ε.
        project_out: ``False``: no output map (the release's single-head form).

    Returns:
        ``(Y, cache)``: Y = Z^{ℓ+1} of Z's shape; ``cache["mssa_input"]`` is
        LN₁(Z) (the paper's R^c measurement point), ``cache["mssa"]["A"]``
        the attention, ``cache["input"]`` and ``cache["half"]`` the tokens Z^ℓ and
        Z^{ℓ+1/2} = Z^ℓ + MSSA(LN₁(Z^ℓ)) on either side of the compression half, and
        ``cache["ista"]["X"]`` the ISTA input LN₂(Z^{ℓ+1/2}) (references, no copies).
    """
    check_array(Z, "Z", min_ndim=2)
    check_positive(ln_eps, "ln_eps")  # checked even when unused: a bad value never goes unnoticed
    needed = ["U", "D"] + (["ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta"] if use_layernorm else [])
    if not isinstance(project_out, bool):
        raise TypeError(f"project_out must be True or False, got {project_out!r}")
    if not project_out and tie_out:
        raise ValueError("project_out=False (no output map) and tie_out=True exclude each other")
    needed += [] if tie_out or not project_out else ["W_out"]
    check_keys(params, needed)
    X1, ln1 = _norm(Z, params, "ln1", use_layernorm, ln_eps)
    W_out = None if tie_out else params["W_out"] if project_out else identity_out(X1, params["U"])
    b_out = None if tie_out or not project_out else params.get("b_out")
    M, mssa = mssa_forward(X1, params["U"], W_out, b_out, scale=scale, causal=causal,
                           tied_scale=tied_scale)
    Z_half = Z + M
    X2, ln2 = _norm(Z_half, params, "ln2", use_layernorm, ln_eps)
    Y, ista = ista_forward(X2, params["D"], eta=eta, lam=lam)
    cache = {"ln1": ln1, "mssa": mssa, "ln2": ln2, "ista": ista, "mssa_input": X1, "ista_output": Y,
             "input": Z, "half": Z_half, "keys": tuple(params), "params": params}
    return Y, cache


def encoder_layer_backward(dY, cache):
    r"""Backward of :func:`encoder_layer_forward`:
    :math:`\bar Z^{\ell+1/2} = \mathrm{LN}_2^\top(\mathrm{ISTA}^\top(\bar Z^{\ell+1}))`,
    :math:`\bar Z^\ell = \bar Z^{\ell+1/2} + \mathrm{LN}_1^\top(\mathrm{MSSA}^\top(\bar Z^{\ell+1/2}))`.

    Returns:
        ``(dZ, grads)`` with grads keyed like the layer's params.
    """
    check_cache(cache, "encoder_layer_forward", keys=("ln1", "mssa", "ln2", "ista", "params"))
    check_cotangent(dY, cache["ista"]["X"].shape, cache["ista"]["X"])
    params = cache["params"]
    xp = namespace(dY)
    grads = {k: xp.zeros_like(v) for k, v in params.items()}
    dX2, g = ista_backward(dY, cache["ista"])
    grads["D"] = g["D"]
    dZ_half = dX2
    if cache["ln2"] is not None:
        dZ_half, g = layernorm_backward(dX2, cache["ln2"])
        grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    dX1, g = mssa_backward(dZ_half, cache["mssa"])
    for name, value in g.items():
        if name in grads:  # (the identity output map of project_out=False is no parameter)
            grads[name] = value
    dZ_branch = dX1
    if cache["ln1"] is not None:
        dZ_branch, g = layernorm_backward(dX1, cache["ln1"])
        grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return dZ_half + dZ_branch, grads
