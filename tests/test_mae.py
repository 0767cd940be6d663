"""CRATE-MAE (spec §5.4, §8.6): FD check of the whole masked-patch loss on a
tiny config (released, tied and paper forms), the masking, the fixed
positions, the loss, the baseline, checkpoints and a short training run."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from robustness_support import ista_margin

import minicrate as mc
from minicrate.checks.strategies import normal
from minicrate.core.backend import host_to
from minicrate.measure import probe
from minicrate.models import loss as mc_loss
from minicrate.models import mae, masking

TINY = mae.MAEConfig(image_size=4, patch_size=2, channels=1, dim=8, heads=2, depth=2, dtype="float64")
# keys checked on the slower backends (every key on NumPy)
SUBSET = ("embed.W", "mask_token", "cls_token", "layers.0.D", "layers.1.U", "enc_norm.gamma",
          "decoder.0.E", "decoder.1.W_out", "pred.W")


def _tiny_problem(xp, config, B=2):
    """Parameters, images and masks with every ISTA pre-activation >= 0.01 from
    its kink: the first seed that gives such a margin (deterministic)."""
    for seed in range(200):
        params = mae.init_mae_params(config, seed=seed, backend=xp)
        # N(0, 0.02²) class token: LayerNorm of a row that small is badly conditioned for FD
        params["cls_token"] = normal(xp, (config.dim,), seed + 1)
        images = normal(xp, (B, config.channels, config.image_size, config.image_size), seed + 2)
        mask = masking.random_masking(np.arange(B), config.num_patches, config.mask_ratio, seed=seed)
        _, cache = mae.mae_forward(params, images, mask, config)
        if ista_margin(cache["layers"], config) > 0.01:
            return params, images, mask
    raise AssertionError("no seed gave an ISTA margin > 0.01")


@pytest.mark.parametrize("form", ["released", "tied", "paper"])
def test_whole_mae_loss_gradient_matches_fd(xp, form):
    config = {"released": TINY, "tied": dataclasses.replace(TINY, tie_decoder=True),
              "paper": dataclasses.replace(TINY, tie_out=True, attn_scale=1.0, use_layernorm=False)}[form]
    if form == "paper" and mc.core.backend.backend_name(xp) != "numpy":
        pytest.skip("paper form: NumPy only (the layers' paper forms are FD-checked on every backend)")
    params, images, mask = _tiny_problem(xp, config)
    loss, grads, _ = mae.mae_loss_and_grads(params, images, mask, config)
    assert set(grads) == set(params)
    assert math.isfinite(loss)
    check = list(params) if mc.core.backend.backend_name(xp) == "numpy" else [k for k in SUBSET if k in params]
    if form == "tied":
        assert "decoder.0.E" not in params and "decoder.1.U" not in params
        check = sorted(set(check) | {"layers.0.D", "layers.1.D", "layers.0.U", "layers.1.U"})
    f = lambda **p: mae.mae_loss(p, images, mask, config)  # noqa: E731
    one = xp.asarray(1.0, dtype=xp.float64)
    mc.check_vjp(f, params, one, {k: grads[k] for k in check}, max_entries=2).raise_if_failed()


def test_tied_decoder_adds_its_gradient_to_the_encoder_keys():
    """In the tied MAE, layers.j.D's gradient = encoder use + decoder use (the
    decoder's E of layer depth−1−j); the encoder-only part is measurably different."""
    config = dataclasses.replace(TINY, tie_decoder=True)
    np_ = mc.get_backend("numpy")
    params, images, mask = _tiny_problem(np_, config)
    _, grads, _ = mae.mae_loss_and_grads(params, images, mask, config)
    pred, cache = mae.mae_forward(params, images, mask, config)
    _, loss_cache = mc_loss.masked_mse_forward(pred, cache["patches"], mask)
    # decoder layer 0 pairs with encoder layer 1, and shares its very arrays
    layer, keys = mc.decoder_layer_params(params, 0, config.depth, tie_encoder=True)
    assert layer["E"] is params["layers.1.D"] and keys["E"] == "layers.1.D"
    # recompute the encoder-only part by running the backward with the decoder untied
    untied = dict(params)
    for i in range(config.depth):
        j = config.depth - 1 - i
        untied[f"decoder.{i}.E"], untied[f"decoder.{i}.U"] = params[f"layers.{j}.D"], params[f"layers.{j}.U"]
    cfg_untied = dataclasses.replace(config, tie_decoder=False)
    _, g_untied, _ = mae.mae_loss_and_grads(untied, images, mask, cfg_untied)
    for i in range(config.depth):
        j = config.depth - 1 - i
        np.testing.assert_allclose(grads[f"layers.{j}.D"], g_untied[f"layers.{j}.D"] + g_untied[f"decoder.{i}.E"],
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grads[f"layers.{j}.U"], g_untied[f"layers.{j}.U"] + g_untied[f"decoder.{i}.U"],
                                   rtol=1e-12, atol=1e-14)
        assert np.abs(g_untied[f"decoder.{i}.E"]).max() > 1e-6


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("num_patches, ratio, masked", [(16, 0.75, 12), (64, 0.75, 48), (196, 0.75, 147),
                                                        (16, 0.5, 8), (10, 0.9, 9)])
def test_masking_masks_exactly_the_fraction(num_patches, ratio, masked):
    m = masking.random_masking(np.arange(50), num_patches, ratio, seed=3)
    assert m.shape == (50, num_patches) and m.dtype == bool
    assert np.all(m.sum(axis=1) == masked)
    distinct = min(40, math.comb(num_patches, masked))
    assert len({row.tobytes() for row in m}) >= distinct // 2  # per-image, not one shared mask


def test_masking_is_seeded_per_image():
    a = masking.random_masking(np.arange(8), 16, 0.75, seed=1)
    np.testing.assert_array_equal(a, masking.random_masking(np.arange(8), 16, 0.75, seed=1))
    assert not np.array_equal(a, masking.random_masking(np.arange(8), 16, 0.75, seed=2))
    # an image's mask depends on its key only, not on the batch it is in
    b = masking.random_masking(np.array([5, 0, 7]), 16, 0.75, seed=1)
    np.testing.assert_array_equal(b, a[[5, 0, 7]])
    # training keys (epoch, index): new masks each epoch
    e0 = masking.random_masking(np.stack([np.zeros(8, int), np.arange(8)], 1), 16, 0.75, seed=1)
    e1 = masking.random_masking(np.stack([np.ones(8, int), np.arange(8)], 1), 16, 0.75, seed=1)
    assert not np.array_equal(e0, e1)
    with pytest.raises(ValueError, match="mask_ratio"):
        masking.random_masking(np.arange(2), 16, 1.0, seed=0)
    with pytest.raises(ValueError, match="masks none of 16 patches"):
        masking.random_masking(np.arange(2), 16, 1e-12, seed=0)
    assert masking.random_masking(np.arange(2), 16, 1 / 16, seed=0).sum(axis=1).tolist() == [1, 1]


def test_masked_pixels_never_reach_the_model(xp):
    """The mask token replaces the embedding: changing a masked patch's pixels
    changes no prediction; changing a visible one does."""
    config = dataclasses.replace(TINY, image_size=8)  # 16 patches
    params = mae.init_mae_params(config, seed=0, backend=xp)
    images = normal(xp, (1, 1, 8, 8), 4)
    mask = masking.random_masking(np.arange(1), 16, 0.75, seed=0)
    pred, _ = mae.mae_forward(params, images, mask, config)
    host = mc.to_numpy(images).copy()
    masked_i, visible_i = int(np.flatnonzero(mask[0])[0]), int(np.flatnonzero(~mask[0])[0])
    for i, changes in ((masked_i, False), (visible_i, True)):
        bumped = host.copy()
        r, c = divmod(i, 4)
        bumped[0, 0, 2 * r: 2 * r + 2, 2 * c: 2 * c + 2] += 1.0
        other, _ = mae.mae_forward(params, host_to(xp, bumped), mask, config)
        assert (np.abs(mc.to_numpy(other) - mc.to_numpy(pred)).max() > 1e-6) == changes


# ---------------------------------------------------------------- pieces


def test_sincos_positions():
    E = mae.sincos_pos_embedding(8, 3)
    assert E.shape == (10, 8) and np.all(E[0] == 0)
    # patch (row 1, column 2) is token 1 + 1·3 + 2; first half encodes the column
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    np.testing.assert_allclose(E[1 + 5], np.concatenate([np.sin(2 * omega), np.cos(2 * omega),
                                                         np.sin(1 * omega), np.cos(1 * omega)]))
    assert len({row.tobytes() for row in E[1:]}) == 9
    with pytest.raises(ValueError, match="divisible by 4"):
        mae.sincos_pos_embedding(6, 2)


def test_masked_mse_formula_and_gradient(xp):
    pred, target = normal(xp, (2, 4, 3), 0), normal(xp, (2, 4, 3), 1)
    mask = np.array([[True, False, True, False], [False, False, False, True]])
    loss, cache = mc_loss.masked_mse_forward(pred, target, mask)
    p, t = mc.to_numpy(pred), mc.to_numpy(target)
    expected = (((p - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    dpred = mc_loss.masked_mse_backward(1.0, cache)
    assert np.all(mc.to_numpy(dpred)[~mask] == 0)  # visible patches get no gradient
    f = lambda pred: mc_loss.masked_mse_forward(pred, target, mask)  # noqa: E731
    mc.check_vjp(f, {"pred": pred}, xp.asarray(1.0, dtype=xp.float64), {"pred": dpred}).raise_if_failed()


def test_baseline_is_the_loss_of_the_mean_patch():
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((30, 1, 4, 4)), rng.standard_normal((7, 1, 4, 4))
    base = probe.mean_patch_baseline(train, 2)
    np.testing.assert_allclose(base[1], mc.to_numpy(mc.patchify(train, 2))[:, 1].mean(0))
    mask = masking.random_masking(np.arange(7), 4, 0.75, seed=5)
    direct, _ = mc_loss.masked_mse_forward(np.broadcast_to(base, (7, 4, 4)).copy(),
                                           mc.to_numpy(mc.patchify(test, 2)), mask)
    assert probe.baseline_masked_mse(base, test, dataclasses.replace(TINY), seed=5) == pytest.approx(float(direct))


def test_config_validation_and_counts():
    with pytest.raises(ValueError, match="divisible by 4"):
        mae.MAEConfig(dim=30, heads=3)
    with pytest.raises(ValueError, match="mask_ratio"):
        mae.MAEConfig(mask_ratio=0.0)
    for cfg in (TINY, dataclasses.replace(TINY, tie_decoder=True), dataclasses.replace(TINY, tie_out=True)):
        params = mae.init_mae_params(cfg)
        assert mae.mae_param_count(cfg) == sum(v.size for v in params.values())
    # the released sizes (spec §5.5 recount: 25.41M / 44.64M with the fixed
    # positional buffers and the unused decoder_embed, which we leave out)
    small = mae.mae_preset("mae_crate_small")
    extra = 2 * 197 * 576 + 576 * 576 + 576  # two sin-cos buffers + decoder_embed
    assert (mae.mae_param_count(small) + extra) / 1e6 == pytest.approx(25.41, abs=0.01)
    base = mae.mae_preset("mae_crate_base")
    assert (mae.mae_param_count(base) + 2 * 197 * 768 + 768 * 768 + 768) / 1e6 == pytest.approx(44.64, abs=0.01)


def test_linear_probe_on_separable_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.standard_normal((300, 5)) * 0.1 + np.eye(5)[y]
    r = probe.linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert r["test_accuracy"] > 0.95


# ---------------------------------------------------------------- training run


def test_train_mae_checkpoint_resume_and_metrics(tmp_path):
    """One epoch on digits, interrupted after 3 steps and resumed, gives the
    same parameters as an uninterrupted run; metrics.json has the MSE, the
    baseline and the probe; the reconstruct command draws its figure."""
    from minicrate.training import mae as mae_training
    from minicrate.training.classifier import TrainConfig

    config = mae.mae_preset("digits", dim=16, depth=1, heads=2)
    tc = TrainConfig(data="digits", epochs=1, batch_size=256, lr=2e-3, warmup_epochs=0, shift=0)
    full = mae_training.train_mae(config, tc, tmp_path / "a", progress=False, probe=False, log=lambda s: None)
    part = mae_training.train_mae(config, tc, tmp_path / "b", progress=False, probe=False, stop_after_steps=3,
                         log=lambda s: None)
    assert part["status"] == "interrupted"
    done = mae_training.train_mae(config, tc, tmp_path / "b", resume=True, progress=False, probe=True,
                                  log=lambda s: None)
    for k in full["params"]:
        np.testing.assert_array_equal(mc.to_numpy(full["params"][k]), mc.to_numpy(done["params"][k]))
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["kind"] == "crate-mae"
    assert metrics["test_masked_mse"] == pytest.approx(full["test_mse"])
    assert metrics["baseline_masked_mse"] > 0 and metrics["masked_per_image"] == 12
    assert 0 <= metrics["linear_probe"]["features"]["test_accuracy"] <= 1
    assert metrics["history"][-1]["test_mse"] == pytest.approx(metrics["test_masked_mse"])
    params, cfg, extra = mae_training.load_mae_run(tmp_path / "b")
    assert cfg == config and extra["status"] == "completed"
    assert os.path.exists(tmp_path / "b" / "curves.png")
    from minicrate.cli import main

    assert main(["reconstruct", str(tmp_path / "b"), "--out", str(tmp_path / "r.png"), "--count", "4"]) == 0
    assert os.path.getsize(tmp_path / "r.png") > 1000



def test_train_mae_caps_a_warmup_longer_than_the_run(tmp_path):
    """`train-mae --epochs 1 --warmup 2` runs (the warm-up is cut to the run), as `train` does."""
    from minicrate.training.classifier import TrainConfig
    from minicrate.training.mae import train_mae

    config = mae.mae_preset("digits", dim=16, depth=1, heads=2)
    tc = TrainConfig(data="digits", epochs=1, batch_size=512, lr=2e-3, warmup_epochs=2, shift=0)
    result = train_mae(config, tc, tmp_path, progress=False, probe=False, log=lambda s: None)
    assert result["status"] == "completed" and result["steps"] == 3
    # still warming up at the last step: lr = base · (step + 1) / warm-up steps
    assert result["history"][-1]["lr"] == pytest.approx(2e-3)

@pytest.mark.parametrize("tie", [False, True])
def test_fused_layers_give_the_same_loss_and_gradients(tie):
    config = dataclasses.replace(TINY, tie_decoder=tie)
    params, images, mask = _tiny_problem(mc.get_backend("numpy"), config)
    loss, grads, _ = mae.mae_loss_and_grads(params, images, mask, config)
    loss_f, grads_f, _ = mae.mae_loss_and_grads(params, images, mask, config, fast=True)
    assert loss_f == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads_f[k], grads[k], rtol=1e-9, atol=1e-12)


def test_train_mae_command_options_reach_the_configs():
    """`train-mae` flags override the recipe: canvas, patch, W_out's initial gain, optimisation."""
    import argparse

    from minicrate.commands import train_mae as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--data", "mnist", "--image-size", "28", "--patch", "2", "--out-init-gain", "1.0",
                              "--epochs", "3", "--lr", "1e-3", "--eval-every", "2", "--beta2", "0.95"])
    model_config, train_config = command.configs_from_args(args)
    assert (model_config.image_size, model_config.patch_size, model_config.num_patches) == (28, 2, 196)
    assert model_config.out_init_gain == 1.0
    assert (train_config.epochs, train_config.lr, train_config.eval_every_epochs) == (3, 1e-3, 2)
    assert train_config.adam_beta2 == 0.95
    assert train_config.warmup_epochs <= 1.5  # a short run keeps the warm-up within half of it
    default_model, _ = command.configs_from_args(parser.parse_args([]))
    assert default_model.out_init_gain == 0.1


def test_out_init_gain_scales_the_initial_attention_output_maps():
    """W_out starts at gain × the release's xavier draw (the same draw), everything else unchanged."""
    released = mae.init_mae_params(dataclasses.replace(TINY, out_init_gain=1.0), seed=3)
    ours = mae.init_mae_params(TINY, seed=3)
    for key, value in released.items():
        factor = 0.1 if key.endswith("W_out") else 1.0
        np.testing.assert_allclose(ours[key], factor * value, rtol=1e-12, atol=0)
    assert sum(key.endswith("W_out") for key in released) == 2 * TINY.depth
