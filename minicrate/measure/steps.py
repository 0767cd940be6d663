"""Does each layer of a CRATE classifier do the step it was derived to do?

The layer is derived as two steps (Yu et al. 2024, Sections 2.3 and 2.4):

* the **compression half** Z^{ℓ+1/2} = Z^ℓ + MSSA(LN₁(Z^ℓ) | U^ℓ) approximates a
  gradient step that *lowers* the compression term R^c(· | U^ℓ) of the tokens;
* the **sparsification half** Z^{ℓ+1} = ReLU(X + η(X − XDᵀ)D − ηλ), with
  X = LN₂(Z^{ℓ+1/2}) (tokens as rows), is one proximal-gradient (ISTA) step, started at
  A = X, on the non-negative LASSO objective λ‖A‖₁ + ½‖X − ADᵀ‖², so it should *lower*
  that objective.

:func:`layer_steps` measures both on real images, per layer, against the layer's own
``U`` and ``D``:

* R^c before and after the compression half, of the residual-stream tokens Z^ℓ and
  Z^{ℓ+1/2}, with the paper's measurement protocol (unit-normalised head projections,
  :func:`~minicrate.objective.rates.measured_compression_rate`; it is blind to each
  token's scale, which the residual changes);
* the LASSO objective (:func:`~minicrate.layers.ista.lasso_objective`) at the ISTA
  step's start A = X and at its result A = Z^{ℓ+1}.
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import device_of, host_to, namespace, to_numpy
from minicrate.core.validate import finite_checks
from minicrate.layers.ista import ista_forward, lasso_objective
from minicrate.models.classifier import CRATEConfig, encode
from minicrate.objective.rates import measured_compression_rate, nonzero_fraction


def _mean(values):
    return [float(np.mean(np.concatenate(v))) for v in values]


def layer_steps(params, config, images, *, batch_size=250, eps_sq=0.01):
    """Per layer: what the compression half does to R^c and the ISTA half to the LASSO objective.

    Args:
        params, config: a CRATE classifier (``block="crate"``).
        images: ``(n, C, H, W)`` NumPy images, standardised like training.
        eps_sq: the measurement's ε² (0.01, as :func:`~minicrate.measure.layerwise.layerwise`).

    Returns:
        dict of lists over layers (means over images): ``rc_before``, ``rc_after``,
        ``lasso_before``, ``lasso_after``, ``mssa_lowers`` / ``ista_lowers`` (the
        fraction of images for which the half lowered its quantity) and
        ``ista_input_rms`` and ``ista_input_mean``, the root-mean-square and the mean entry
        of the ISTA input X: the scale and the shift that the fixed threshold ηλ is compared
        with (a larger scale or a positive shift, fewer zeros); ``nonzero_at_first_scale``:
        the non-zero fraction of the same ISTA step applied to its input rescaled, image by
        image, to the first layer's RMS (what the layer's sparsity would be had the tokens'
        scale not changed since layer 1); ``nonzero_at_previous_mean``: the same with the
        input shifted, image by image, to the previous layer's mean entry.
    """
    if not isinstance(config, CRATEConfig):
        raise TypeError(f"config must be a CRATEConfig, got {type(config).__name__}")
    if config.block != "crate":
        raise ValueError(f"layer_steps needs a CRATE model (block='crate'), got block={config.block!r}")
    xp = namespace(params["head.W"])
    dtype, device = params["head.W"].dtype, device_of(params["head.W"])
    keys = ("rc_before", "rc_after", "lasso_before", "lasso_after", "ista_input_rms",
            "ista_input_mean", "nonzero_at_first_scale", "nonzero_at_previous_mean")
    per = {k: [[] for _ in range(config.depth)] for k in keys}
    with finite_checks(False):
        for start in range(0, len(images), batch_size):
            xb = host_to(xp, images[start:start + batch_size], dtype, device)
            _, cache = encode(params, xb, config, fast=False)  # the plain layers keep Z^{ℓ+1/2}
            for layer, c in enumerate(cache["layers"]):
                U, D, X = c["mssa"]["U"], c["ista"]["D"], c["ista"]["X"]
                rms = xp.sqrt(xp.mean(xp.reshape(X * X, (X.shape[0], -1)), axis=1))
                mean = xp.mean(xp.reshape(X, (X.shape[0], -1)), axis=1)
                if layer == 0:
                    rms_first, mean_before = rms, mean
                # The same ISTA step on its input rescaled to the first layer's scale, and on
                # its input shifted to the previous layer's mean: how sparse the layer would be
                # had the tokens' scale, or their mean, not changed.
                rescaled, _ = ista_forward(X * (rms_first / rms)[:, None, None], D, eta=config.eta,
                                           lam=config.lam)
                shifted, _ = ista_forward(X - (mean - mean_before)[:, None, None], D, eta=config.eta,
                                          lam=config.lam)
                mean_before = mean
                for key, value in (
                    ("rc_before", measured_compression_rate(c["input"], U, eps_sq=eps_sq, reduction="none")),
                    ("rc_after", measured_compression_rate(c["half"], U, eps_sq=eps_sq, reduction="none")),
                    ("lasso_before", lasso_objective(X, X, D, config.lam)),
                    ("lasso_after", lasso_objective(c["ista_output"], X, D, config.lam)),
                    ("ista_input_rms", rms),
                    ("nonzero_at_first_scale", nonzero_fraction(rescaled, reduction="none")),
                    ("ista_input_mean", mean),
                    ("nonzero_at_previous_mean", nonzero_fraction(shifted, reduction="none")),
                ):
                    per[key][layer].append(to_numpy(value).astype(np.float64))
    out = {k: _mean(per[k]) for k in keys}
    for name, before, after in (("mssa_lowers", "rc_before", "rc_after"),
                                ("ista_lowers", "lasso_before", "lasso_after")):
        out[name] = [float(np.mean(np.concatenate(a) < np.concatenate(b)))
                     for a, b in zip(per[after], per[before], strict=True)]
    return out
