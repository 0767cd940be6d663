"""Measuring a trained masked autoencoder (:mod:`minicrate.models.mae`) on host images.

Masked-patch MSE with the fixed evaluation masks (:func:`evaluate_masked_mse`) against
the mean-patch baseline (:func:`mean_patch_baseline`, :func:`baseline_masked_mse`), and
a linear probe (:func:`linear_probe`) on frozen encoder features
(:func:`encoder_features`) vs raw pixels.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace, to_numpy
from minicrate.core.validate import check_array, check_config, check_int, check_params_shapes, check_positive, describe
from minicrate.models.embedding import patchify
from minicrate.models.loss import masked_mse_forward
from minicrate.models.mae import MAEConfig, mae_encode, mae_param_shapes, mae_predict
from minicrate.models.masking import host_ints, no_masking, random_masking


def _batched(n, batch_size):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _host_images(images, config, name="images"):
    """Host (NumPy) images ``(n, C, H, W)`` of the config's size, floating and finite."""
    check_array(images, name, ndim=4)
    host = to_numpy(images)
    want = (config.channels, config.image_size, config.image_size)
    if tuple(host.shape[1:]) != want:
        raise ValueError(f"{name} must have shape (n, {want[0]}, {want[1]}, {want[2]}) for this "
                         f"config, got {describe(images)}")
    return host


def _eval_keys(keys, n):
    import numpy as np

    if keys is None:
        return np.arange(n)
    keys = host_ints(keys, "keys")
    if keys.ndim not in (1, 2) or len(keys) != n:
        raise ValueError(f"keys must have one row per image ({n}), got {describe(keys)}")
    return keys


def evaluate_masked_mse(params, config: MAEConfig, images, *, seed=0, batch_size=500, keys=None, predict=None):
    """Masked-patch MSE on host images with the fixed evaluation masks
    (keys = image index unless given); exact average over all masked patches.

    ``predict(params, images, mask, config) -> pred`` is the forward to use: by default
    :func:`minicrate.models.mae.mae_predict` (the inference path, fused, no cache); a
    training run passes the same with each batch split over the cores."""
    import numpy as np

    from minicrate.core.validate import finite_checks

    check_config(config, MAEConfig)
    check_params_shapes(params, mae_param_shapes(config))
    images = _host_images(images, config)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    xp = namespace(params["embed.W"])
    dtype = params["embed.W"].dtype
    keys = _eval_keys(keys, len(images))
    total, count = 0.0, 0
    with finite_checks(False):
        for sl in _batched(len(images), batch_size):
            mask = random_masking(keys[sl], config.num_patches, config.mask_ratio, seed=seed)
            xb = xp.asarray(np.ascontiguousarray(images[sl]), dtype=dtype, device=device_of(params["embed.W"]))
            pred = (predict or mae_predict)(params, xb, mask, config)
            loss, _ = masked_mse_forward(pred, patchify(xb, config.patch_size), mask)
            total += float(loss) * int(mask.sum())
            count += int(mask.sum())
    return total / count


def mean_patch_baseline(train_images, patch_size):
    """The baseline predictor: each position's mean training patch, ``(Np, P_d)`` NumPy."""
    import numpy as np

    check_array(train_images, "train_images", ndim=4)
    host = to_numpy(train_images).astype(np.float64)
    return np.asarray(patchify(host, patch_size)).mean(axis=0)


def baseline_masked_mse(baseline, images, config: MAEConfig, *, seed=0, keys=None):
    """Masked-patch MSE of the mean-patch baseline on host images, same masks
    as :func:`evaluate_masked_mse`."""
    import numpy as np

    check_config(config, MAEConfig)
    images = _host_images(images, config)
    check_array(baseline, "baseline", ndim=2, shape=(config.num_patches, config.patch_dim))
    baseline = to_numpy(baseline).astype(np.float64)
    keys = _eval_keys(keys, len(images))
    mask = random_masking(keys, config.num_patches, config.mask_ratio, seed=seed)
    target = np.asarray(patchify(images.astype(np.float64), config.patch_size))
    per_patch = ((target - baseline[None]) ** 2).mean(axis=-1)
    return float((per_patch * mask).sum() / mask.sum())


def encoder_features(params, config: MAEConfig, images, *, pool="mean", batch_size=500):
    """Frozen encoder features of unmasked images (host NumPy ``(n, d)``):
    the encoder output after its LayerNorm, averaged over the patch tokens
    (``pool="mean"``), the class token (``"cls"``) or both concatenated."""
    import numpy as np

    from minicrate.core.validate import finite_checks

    if not isinstance(pool, str) or pool not in ("mean", "cls", "both"):
        raise ValueError(f"pool must be 'mean', 'cls' or 'both', got {pool!r}")
    check_config(config, MAEConfig)
    check_params_shapes(params, mae_param_shapes(config))
    images = _host_images(images, config)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    xp = namespace(params["embed.W"])
    dtype = params["embed.W"].dtype
    out = []
    with finite_checks(False):
        for sl in _batched(len(images), batch_size):
            xb = xp.asarray(np.ascontiguousarray(images[sl]), dtype=dtype, device=device_of(params["embed.W"]))
            Z, _ = mae_encode(params, xb, no_masking(xb.shape[0], config.num_patches), config, fast=True,
                              keep_cache=False)
            Z = to_numpy(Z).astype(np.float64)
            mean, cls = Z[:, 1:, :].mean(axis=1), Z[:, 0, :]
            out.append({"mean": mean, "cls": cls, "both": np.concatenate([mean, cls], axis=1)}[pool])
    return np.concatenate(out)


def linear_probe(train_x, train_y, test_x, test_y, *, C=1.0, max_iter=2000):
    """Logistic regression (scikit-learn, lbfgs, L2 penalty C) on standardised
    features; returns ``{"train_accuracy", "test_accuracy"}``.

    ``train_x``/``test_x``: ``(n, ...)`` floating features (host or any backend;
    flattened per row, the same width for both); ``train_y``/``test_y``: ``(n,)``
    integer labels; ``C`` > 0; ``max_iter`` >= 1.
    """
    import numpy as np

    C = check_positive(C, "C")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    for x_name, y_name, x, y in (("train_x", "train_y", train_x, train_y),
                                 ("test_x", "test_y", test_x, test_y)):
        check_array(x, x_name, min_ndim=2)
        labels = host_ints(y, y_name)
        if labels.ndim != 1 or len(labels) != x.shape[0]:
            raise ValueError(f"{y_name} must be ({x.shape[0]},) labels, one per row of {x_name}, "
                             f"got {describe(y)}")
    if math.prod(train_x.shape[1:]) != math.prod(test_x.shape[1:]):
        raise ValueError(f"train_x and test_x must have one feature width, got {describe(train_x)} "
                         f"and {describe(test_x)}")
    train_x, test_x = to_numpy(train_x), to_numpy(test_x)
    train_y, test_y = host_ints(train_y, "train_y"), host_ints(test_y, "test_y")
    if len(np.unique(train_y)) < 2:
        raise ValueError("train_y must hold at least two classes for a linear probe")

    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("the linear probe needs scikit-learn: pip install 'minicrate[data]'") from None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(np.asarray(train_x).reshape(len(train_x), -1), train_y)
    return {
        "train_accuracy": float(clf.score(np.asarray(train_x).reshape(len(train_x), -1), train_y)),
        "test_accuracy": float(clf.score(np.asarray(test_x).reshape(len(test_x), -1), test_y)),
    }
