"""Layer-wise white-box measurements of a CRATE model (spec §6.1), trained vs init.

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
from minicrate.core.validate import finite_checks
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
            "summed over heads, mean over images (spec 6.1); nonzero: ||Z^{l+1}||_0/(N d) of the "
            "ISTA output, mean over images"
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
    g = config.image_size // config.patch_size
    maps = A[:, :, 0, 1:].reshape(A.shape[0], A.shape[1], g, g)
    return maps, to_numpy(xp.argmax(logits, axis=-1))


# -- run directories ----------------------------------------------------------
def _run_context(run_or_file, data=None, backend="numpy"):
    """Parameters, config, recipe and test split of a run (or a checkpoint)."""
    import os

    from minicrate.data import images as datasets
    from minicrate.training.classifier import checkpoint_path, load_run

    path = checkpoint_path(run_or_file)
    params, config, extra = load_run(path, backend=backend)
    recipe = extra.get("train_config", {})
    name = data or recipe.get("data") or {8: "digits", 28: "mnist"}.get(config.image_size)
    if name is None:
        raise ValueError(f"cannot tell which data set {path!r} was trained on; pass --data")
    split = datasets.load(name, test_size=recipe.get("test_size"), seed=recipe.get("split_seed", 0))
    if split.image_size != config.image_size:
        raise ValueError(
            f"{path!r} is a model for {config.image_size}×{config.image_size} images, "
            f"but {name!r} has {split.image_size}×{split.image_size}"
        )
    out_dir = os.path.dirname(os.path.abspath(path))
    return params, config, recipe, split, out_dir


def measure_run(
    run_or_file, *, n_images=500, subset="test", out_dir=None, data=None, backend="numpy"
):
    """Measure a run's latest checkpoint against its initialisation; write
    ``measure.json`` and ``measure.png`` (into the run directory by default).

    Returns:
        ``(result, json_path, png_path)``.
    """
    import json
    import os

    from minicrate.measure.plotting import plot_layerwise
    from minicrate.models.classifier import init_params

    params, config, recipe, split, default_dir = _run_context(run_or_file, data, backend)
    if subset not in ("test", "train"):
        raise ValueError(f"subset must be 'test' or 'train', got {subset!r}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    images = (split.x_test if subset == "test" else split.x_train)[:n_images]
    seed = int(recipe.get("seed", 0))
    init = init_params(config, seed=seed, backend=namespace(params["head.W"]), dtype=config.dtype)
    result = layerwise_comparison(params, init, config, images)
    result.update(
        checkpoint=os.path.abspath(_ckpt(run_or_file)),
        subset=subset,
        data=split.name,
        init_seed=seed,
    )
    out_dir = out_dir or default_dir
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "measure.json")
    with open(json_path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(json_path + ".tmp", json_path)
    png = plot_layerwise(
        result,
        os.path.join(out_dir, "measure.png"),
        title=f"CRATE on {split.name}: layer-wise $R^c$ and sparsity, "
        f"{len(images)} {subset} images",
    )
    return result, json_path, png


def attention_run(run_or_file, *, n_images=4, layer=-1, out=None, data=None, backend="numpy"):
    """Figure of the class token's attention per head for the first test
    image of each of ``n_images`` classes; returns the PNG path."""
    import os

    from minicrate.measure.plotting import plot_attention

    params, config, _, split, default_dir = _run_context(run_or_file, data, backend)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    picks = []
    for c in range(split.num_classes):  # one image per class, in class order
        hits = np.flatnonzero(split.y_test == c)
        if hits.size:
            picks.append(int(hits[0]))
    picks = (picks + [i for i in range(len(split.y_test)) if i not in picks])[:n_images]
    images = split.x_test[picks]
    maps, preds = attention_maps(params, config, images, layer=layer)
    shown = layer % config.depth + 1
    note = (
        ""
        if config.pool == "cls"
        else " (this model pools by the mean; the class token still attends)"
    )
    return plot_attention(
        images,
        maps,
        split.y_test[picks],
        preds,
        out or os.path.join(default_dir, "attention.png"),
        layer=shown,
        patch_size=config.patch_size,
        title=(
            f"class-token attention per head, layer {shown} of {config.depth}{note}\n"
            "each patch's share of the class token's softmax row (the rest is on itself)"
        ),
    )


def _ckpt(run_or_file):
    from minicrate.training.classifier import checkpoint_path

    return checkpoint_path(run_or_file)
