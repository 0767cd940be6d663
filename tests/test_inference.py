"""The inference path: every model's ``predict`` (no cache kept) gives its ``forward``'s
output, on every backend, fused and plain; and the batch split over threads or worker
processes (``split_map``, ``split_grads``) gives the one-chunk result up to rounding.

Equality with ``forward`` is exact on the same backend except for the fused layer's
in-place LayerNorm affine (same operations, same order: still bit for bit), so the
tolerance is only a guard against a future reordering: 1e-12 relative in float64.
"""

import dataclasses
import os

import numpy as np
import pytest

import minicrate as mc
from minicrate.core.backend import to_numpy
from minicrate.layers.fused import encoder as fused
from minicrate.models import lm, mae, selfsup
from minicrate.models.embedding import unpatchify
from minicrate.models.masking import random_masking
from minicrate.models.stack import encoder_stack_forward, layer_params
from minicrate.training import lm as train_lm
from minicrate.training.parallel import threads as parallel

CONFIG = mc.CRATEConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=5, dtype="float64")
LM = lm.LMConfig(vocab_size=11, context=8, dim=16, depth=2, heads=2, dtype="float64")
MAE = mae.MAEConfig(image_size=4, patch_size=2, channels=1, dim=8, heads=2, depth=2, dtype="float64")
POSIX = pytest.mark.skipif(os.name != "posix", reason="worker processes need POSIX pipes")


def _close(a, b, tol=1e-12):
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape
    assert float(np.max(np.abs(a - b))) <= tol * max(float(np.max(np.abs(b))), 1e-300)


def _images(xp, n, config, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, config.channels, config.image_size, config.image_size))
    return xp.asarray(x)


@pytest.mark.parametrize("fast", [True, False])
def test_classifier_predict_is_forward_without_cache(xp, fast):
    params = mc.init_params(CONFIG, seed=1, backend=xp)
    x = _images(xp, 5, CONFIG)
    _close(mc.predict(params, x, CONFIG, fast=fast), mc.forward(params, x, CONFIG, fast=fast)[0])


def test_fused_layer_keeps_nothing_without_cache(xp):
    params = mc.init_params(CONFIG, seed=2, backend=xp)
    Z = xp.asarray(np.random.default_rng(3).standard_normal((3, 17, 16)))
    layer = layer_params(params, 0)
    Y, cache = fused.layer_forward(Z, layer, keep_cache=False)
    assert cache is None
    _close(Y, fused.layer_forward(Z, layer)[0])
    out, caches, outputs = encoder_stack_forward(Z, params, 2, CONFIG.layer_options(), keep_cache=False)
    assert caches is None and outputs is None
    _close(out, encoder_stack_forward(Z, params, 2, CONFIG.layer_options())[0])


@pytest.mark.parametrize("form", ["causal", "masked"])
def test_lm_predict_is_forward_without_cache(xp, form):
    config = dataclasses.replace(LM, form=form)
    params = lm.init_params(config, seed=0, backend=xp)
    tokens = np.random.default_rng(1).integers(0, 11, (3, 8))
    _close(lm.predict(params, tokens, config), lm.forward(params, tokens, config)[0])


def test_mae_predict_and_reconstruct_without_cache(xp):
    params = mae.init_mae_params(MAE, seed=0, backend=xp)
    x = _images(xp, 3, MAE)
    keys = np.stack([np.zeros(3, int), np.arange(3)], axis=1)
    mask = random_masking(keys, MAE.num_patches, MAE.mask_ratio, seed=0)
    expected, cache = mae.mae_forward(params, x, mask, MAE, fast=True)
    _close(mae.mae_predict(params, x, mask, MAE), expected)
    merged, pred = mae.reconstruct(params, x, mask, MAE)
    _close(pred, unpatchify(mae.mae_forward(params, x, mask, MAE)[0], 2, 1, 4, 4))
    assert merged.shape == x.shape


@pytest.mark.parametrize("method", ["simdino", "dino"])
def test_selfsup_predict_and_features_without_cache(xp, method):
    config = selfsup.SelfSupConfig(backbone=dataclasses.replace(CONFIG, pool="mean"), method=method)
    params = selfsup.init_selfsup_params(config, seed=0, backend=xp)
    x = _images(xp, 4, CONFIG)
    _close(selfsup.selfsup_predict(params, x, config), selfsup.selfsup_forward(params, x, config)[0])
    _close(selfsup.features(params, x, config.backbone),
           selfsup.features_forward(params, x, config.backbone)[0])


@POSIX
@pytest.mark.xdist_group("procpool")
@pytest.mark.parametrize("processes", [True, False])
def test_split_map_and_grads_equal_one_chunk(processes):
    """Worker processes and threads (same chunks, same arithmetic) give the one-chunk
    outputs, losses and gradients up to rounding, for a model other than the classifier
    (the MAE: mask as a second input) and for the LM's weighted shares."""
    params = mae.init_mae_params(MAE, seed=0)
    x = _images(np, 7, MAE, seed=4)
    keys = np.stack([np.zeros(7, int), np.arange(7)], axis=1)
    mask = random_masking(keys, MAE.num_patches, MAE.mask_ratio, seed=0)
    out = parallel.split_map(mae.mae_predict, params, (x, mask), MAE, workers=3, processes=processes)
    _close(out, mae.mae_predict(params, x, mask, MAE))
    loss, grads, pred = parallel.split_grads(mae.mae_loss_and_grads, params, (x, mask), MAE, {"fast": True},
                                             workers=3, processes=processes)
    ref = mae.mae_loss_and_grads(params, x, mask, MAE, fast=True)
    assert loss == pytest.approx(ref[0], rel=1e-13)
    for k in params:
        _close(grads[k], ref[1][k])
    _close(pred, ref[2])
    masked = dataclasses.replace(LM, form="masked")
    lp = lm.init_params(masked, seed=0)
    rng = np.random.default_rng(5)
    ids, targets = rng.integers(0, 11, (7, 8)), rng.integers(0, 11, (7, 8))
    weights = (rng.random((7, 8)) < 0.3).astype(np.float64)  # uneven shares across chunks
    weights[0] = 1.0
    loss, grads, _ = train_lm.loss_and_grads(lp, ids, targets, masked, weights, workers=3, processes=processes)
    ref = lm.loss_and_grads(lp, ids, targets, masked, weights)
    assert loss == pytest.approx(ref[0], rel=1e-13)
    for k in lp:
        _close(grads[k], ref[1][k])
    logits = parallel.split_map(lm.predict, lp, (ids,), masked, workers=2, processes=processes)
    _close(logits, lm.predict(lp, ids, masked))
    parallel.close_pool()


@POSIX
@pytest.mark.xdist_group("procpool")
def test_evaluate_splits_over_processes_and_matches_one_chunk():
    params = mc.init_params(CONFIG, seed=1)
    x = np.random.default_rng(6).standard_normal((11, 1, 8, 8))
    y = np.arange(11) % 5
    from minicrate.training.classifier import evaluate

    one = evaluate(params, CONFIG, x, y, batch_size=4, workers=1)
    two = evaluate(params, CONFIG, x, y, batch_size=4, workers=2)
    assert parallel.current_pool() is not None
    np.testing.assert_array_equal(one["predictions"], two["predictions"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-13)
    parallel.close_pool()


@POSIX
@pytest.mark.xdist_group("procpool")
def test_pool_map_errors_and_non_numpy_inputs():
    params = mc.init_params(CONFIG, seed=1)
    x = np.random.default_rng(7).standard_normal((6, 1, 8, 8))
    pool = parallel.process_pool(2)
    with pytest.raises(ValueError, match="images"):  # a worker's own check, raised here
        pool.map(mc.predict, params, (x[:, :, :4, :4],), CONFIG)
    with pytest.raises(ValueError, match="rows"):
        pool.map(mc.predict, params, (x, x[:3]), CONFIG)
    strict = mc.get_backend("array_api_strict")
    with pytest.raises(TypeError, match="NumPy"):
        pool.map(mc.predict, params, (strict.asarray(x),), CONFIG)
    _close(pool.map(mc.predict, params, (x,), CONFIG), mc.predict(params, x, CONFIG))  # still usable
    parallel.close_pool()


def test_split_on_other_backends_uses_threads(strict):
    """Not NumPy: the chunks run in threads (worker processes take NumPy only), same results."""
    params = mc.init_params(CONFIG, seed=1, backend=strict)
    x = _images(strict, 5, CONFIG)
    y = strict.asarray(np.arange(5) % 5)
    before = parallel.current_pool()
    _close(parallel.predict(params, x, CONFIG, workers=2), mc.predict(params, x, CONFIG))
    loss, grads, logits = parallel.loss_and_grads(params, x, y, CONFIG, workers=2)
    ref = mc.loss_and_grads(params, x, y, CONFIG)
    assert loss == pytest.approx(ref[0], rel=1e-13)
    _close(grads["embed.W"], ref[1]["embed.W"])
    _close(logits, ref[2])
    assert parallel.current_pool() is before  # no worker processes were started
    with pytest.raises(ValueError, match="NumPy"):
        parallel.predict(params, x, CONFIG, workers=2, processes=True)
