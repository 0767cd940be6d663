"""Layer-wise white-box measurements of a CRATE model, trained vs init.

The protocol is the one of the paper's layer-wise figure, as the official code's hooks
(``vis_utils/crate_hook.py`` in Ma-Lab-Berkeley/CRATE) implement it.

For every layer ℓ, on a batch of images:

* **compression** R^c(Z^ℓ): the MSSA input X = LN₁(Z^ℓ) is projected on each
  head's basis, each token's projection is scaled to unit ℓ2 norm, and
  ½ logdet(I + p/(N·0.01) ŴŴᵀ) is summed over heads
  (:func:`minicrate.objective.rates.measured_compression_rate`, the official hook's
  protocol; N includes the class token);
* **sparsity**: the fraction of non-zero entries of the ISTA output Z^{ℓ+1}
  (:func:`minicrate.objective.rates.nonzero_fraction`).

Each quantity is computed per image; the figure shows the mean over images
with the standard deviation as error bars, as the paper does.  The same
architecture *at initialisation* (same seed as the training run) is measured
alongside, so the figure shows what training changed.
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import device_of, host_to, namespace, to_numpy
from minicrate.core.validate import check_positive, finite_checks
from minicrate.models import lm
from minicrate.models.classifier import forward, intermediates
from minicrate.objective.rates import measured_compression_rate, nonzero_fraction


def layerwise(params, config, images, *, batch_size=250, eps_sq=0.01):
    """Per-layer R^c and non-zero fraction of one model on host images.

    Args:
        params: the model's parameters (any backend).
        config: its :class:`~minicrate.models.classifier.CRATEConfig`.
        images: ``(n, C, H, W)`` NumPy images, standardised like training.
        eps_sq: the constant that plays ε² (0.01 in the official code).
    Returns:
        dict of lists over layers: ``rc``, ``rc_std``, ``nonzero``,
        ``nonzero_std`` (Python floats), and ``n_images``.
    """
    xp = namespace(params["head.W"])
    dtype, device = params["head.W"].dtype, device_of(params["head.W"])
    per_rc = [[] for _ in range(config.depth)]
    per_nz = [[] for _ in range(config.depth)]
    with finite_checks(False):
        for start in range(0, len(images), batch_size):
            xb = host_to(xp, images[start : start + batch_size], dtype, device)
            _, cache = forward(params, xb, config)
            inter = intermediates(cache)
            for layer in range(config.depth):
                X = inter["mssa_inputs"][layer]
                U = inter["U"][layer]
                rc = measured_compression_rate(X, U, eps_sq=eps_sq, reduction="none")
                nz = nonzero_fraction(inter["ista_outputs"][layer], reduction="none")
                per_rc[layer].append(to_numpy(rc).astype(np.float64))
                per_nz[layer].append(to_numpy(nz).astype(np.float64))
    rc = [np.concatenate(v) for v in per_rc]
    nz = [np.concatenate(v) for v in per_nz]
    return {
        "rc": [float(v.mean()) for v in rc],
        "rc_std": [float(v.std()) for v in rc],
        "nonzero": [float(v.mean()) for v in nz],
        "nonzero_std": [float(v.std()) for v in nz],
        "n_images": int(len(images)),
    }


def lm_layerwise(params, config, tokens, *, eps_sq=0.01):
    """The paper's layer-wise measurements on text windows.

    For each layer ℓ and each window (one window plays the part of one image):
    the measured compression R^c of the MSSA input LN₁(Z^ℓ) (unit-normalised
    head projections, ½ logdet(I + p/(N·eps_sq) ŴŴᵀ) summed over heads,
    :func:`minicrate.objective.rates.measured_compression_rate`) and the fraction of
    non-zero entries of the ISTA output Z^{ℓ+1}.

    Args:
        tokens: ids ``(B, N)`` (for the masked model, include mask ids if wanted).

    Returns:
        dict of lists over layers: ``rc``, ``rc_std``, ``nonzero``, ``nonzero_std``.
    """
    eps_sq = check_positive(eps_sq, "eps_sq")
    _, cache = lm.forward(params, tokens, config)
    inter = lm.intermediates(cache)
    out = {"rc": [], "rc_std": [], "nonzero": [], "nonzero_std": []}
    for layer in range(config.depth):
        U = inter["U"][layer]  # CRATE: U; a transformer: its value maps (lm.intermediates)
        rc = to_numpy(measured_compression_rate(inter["mssa_inputs"][layer], U, eps_sq=eps_sq,
                                                reduction="none")).astype("float64")
        nz = to_numpy(nonzero_fraction(inter["ista_outputs"][layer], reduction="none"))
        nz = nz.astype("float64")
        out["rc"].append(float(rc.mean()))
        out["rc_std"].append(float(rc.std()))
        out["nonzero"].append(float(nz.mean()))
        out["nonzero_std"].append(float(nz.std()))
    return out


def layerwise_comparison(trained_params, init_params, config, images, **kwargs):
    """:func:`layerwise` for a trained model and its initialisation.

    Returns:
        ``{"trained": ..., "init": ..., "layers": [1..L], "protocol": ...}``.
    """
    return {
        "layers": list(range(1, config.depth + 1)),
        "trained": layerwise(trained_params, config, images, **kwargs),
        "init": layerwise(init_params, config, images, **kwargs),
        "protocol": (
            "R^c: unit-normalised head projections of LN1(Z^l), 1/2 logdet(I + p/(N*eps_sq) W W^T) "
            "summed over heads, mean over images (official vis_utils/crate_hook.py); "
            "nonzero: ||Z^{l+1}||_0/(N d) of the ISTA output, mean over images"
        ),
        "eps_sq": kwargs.get("eps_sq", 0.01),
    }


def format_table(result):
    """A plain-text table: one row per layer, trained and init side by side."""
    t, i = result["trained"], result["init"]
    lines = [
        f"{'layer':>5}  {'R^c trained':>12} {'R^c init':>10}  "
        f"{'nonzero trained':>15} {'nonzero init':>12}",
    ]
    for layer in range(len(t["rc"])):
        lines.append(
            f"{layer + 1:>5}  {t['rc'][layer]:>12.2f} {i['rc'][layer]:>10.2f}  "
            f"{t['nonzero'][layer]:>15.3f} {i['nonzero'][layer]:>12.3f}"
        )
    return "\n".join(lines)


def class_token_maps(A, config):
    """The class token's attention to the patch tokens, laid out on the patch grid.

    Args:
        A: ``(n, K, N, N)`` attention (any backend), N = 1 + g² tokens with the
            class token first: ``A[i, k, 0, 1:]`` is head k's attention of image
            i's class token to its patches.
        config: gives the grid: g = ``config.image_size // config.patch_size``.
    Returns:
        ``(n, K, g, g)`` on A's backend: entry ``[i, k, r, c]`` is the class
        token's attention to the patch in grid row r, column c (row-major patch
        order; the class token's own share is left out).
    """
    xp = namespace(A)
    g = config.image_size // config.patch_size
    return xp.reshape(A[:, :, 0, 1:], (A.shape[0], A.shape[1], g, g))


def attention_maps(params, config, images, *, layer=-1):
    """The class token's attention over the patches, per head, as image grids.

    Returns:
        ``(maps, predictions)``: maps ``(n, K, g, g)`` NumPy with g = image
        size / patch size (each row of the attention sums to 1 over the N
        tokens; the class token's own share is left out of the map), and the
        model's predicted classes ``(n,)``.
    """
    xp = namespace(params["head.W"])
    W = params["head.W"]
    xb = host_to(xp, images, W.dtype, device_of(W))
    with finite_checks(False):
        logits, cache = forward(params, xb, config)
    if not -config.depth <= layer < config.depth:
        raise ValueError(f"layer must be in [-{config.depth}, {config.depth}), got {layer}")
    A = to_numpy(intermediates(cache)["attention"][layer])  # (n, K, N, N)
    return class_token_maps(A, config), to_numpy(xp.argmax(logits, axis=-1))
