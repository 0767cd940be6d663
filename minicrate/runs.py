"""Loading a trained classifier run for the command line: measure it, draw its attention.

A run directory (or its ``checkpoint.npz``) holds the parameters, the config and the
recipe (:mod:`minicrate.training.classifier`); :func:`run_context` loads them with the
test split they were trained on, and :func:`measure_run` / :func:`attention_run` write
the layer-wise measurements (:mod:`minicrate.measure.layerwise`) and the attention
figure (:mod:`minicrate.measure.plotting`) next to it.  This module sits on the top
floor, beside the commands, because it reaches into training's run directories.
"""

from __future__ import annotations

import json
import os

import numpy as np

from minicrate.core.backend import namespace
from minicrate.measure.layerwise import attention_maps, layerwise_comparison
from minicrate.training.classifier import load_run
from minicrate.training.rundir import checkpoint_path, strict_json


def run_context(run_or_file, data=None, backend="numpy"):
    """Parameters, config, recipe and test split of a run (or a checkpoint)."""
    from minicrate.data import images as datasets

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
    from minicrate.measure.plotting import plot_layerwise
    from minicrate.models.classifier import init_params

    params, config, recipe, split, default_dir = run_context(run_or_file, data, backend)
    if subset not in ("test", "train"):
        raise ValueError(f"subset must be 'test' or 'train', got {subset!r}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    images = (split.x_test if subset == "test" else split.x_train)[:n_images]
    seed = int(recipe.get("seed", 0))
    init = init_params(config, seed=seed, backend=namespace(params["head.W"]), dtype=config.dtype)
    result = layerwise_comparison(params, init, config, images)
    result.update(
        checkpoint=os.path.abspath(checkpoint_path(run_or_file)),
        subset=subset,
        data=split.name,
        init_seed=seed,
    )
    out_dir = out_dir or default_dir
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "measure.json")
    with open(json_path + ".tmp", "w") as f:
        json.dump(strict_json(result), f, indent=2, allow_nan=False)
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
    from minicrate.measure.plotting import plot_attention

    params, config, _, split, default_dir = run_context(run_or_file, data, backend)
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
