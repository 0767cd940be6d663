r"""CRATE-MAE: a masked autoencoder whose encoder is CRATE and whose decoder is
its inverse (Pai et al. 2024), with the whole backward written by hand.

Pipeline (released ``model/crate_ae/crate_ae.py``)::

    images (B, C, H, W) ── patchify ──> patches (B, Np, P·P·C)  (also the target)
      ── Linear ──> (B, Np, d)        (the released Conv2d(kernel = stride = P))
      ── masked patches replaced by a learned mask token ──
      ── [cls; ·] + fixed 2-D sin-cos positions (class row zero) ──> Z⁰ (B, Np+1, d)
      ── L × CRATE encoder layer (λ = 0.5) ── LayerNorm (ε 1e-6)
      ── L × CRATE decoder layer ── LayerNorm (ε 1e-6) ── Linear ──> (B, Np+1, P·P·C)
      ── drop the class token ──> prediction (B, Np, P·P·C)
    loss = Σ_i m_i ‖ŷ_i − t_i‖² / (P·P·C) / Σ_i m_i   (masked patches only)

**Masking choice.**  Each image gets its own random set of exactly
``Np − ⌊(1 − r)·Np⌋`` masked patches (75 % for r = 0.75 when 4 divides Np),
drawn from a generator seeded by ``(seed, image key)`` (:func:`random_masking`),
so a run is reproducible and the test split always sees the same masks.  As in
the released CRATE-MAE (and SimMIM/BERT), masked positions are **kept in the
sequence**: their embedding is replaced by one learned mask token and the
*encoder* processes all Np + 1 tokens.  The original MAE (He et al.) instead
**drops** the masked tokens from the encoder, which only sees the visible 25 %
(4× cheaper), and inserts the mask tokens before the decoder.  The released
code keeps them because the CRATE decoder is meant to invert the encoder token
by token, so both must see the same sequence; the book's footnote calls the two
views "conceptually the same".  Our choice follows the released code.

Differences from the released code: the sizes come from :class:`MAEConfig`
(the ``mnist`` preset centres MNIST's 28×28 digits on a 32×32 canvas so that
4-pixel patches give 8×8 = 64 patches of which exactly 48 are masked,
:func:`to_canvas`); ``decoder_embed`` (defined but unused in the release) is
left out; and the pixel head's weight starts at N(0, 0.02²) instead of
xavier-uniform (``head_init_std``; measured reason in :func:`init_mae_params`).
Everything else -- initial distributions (xavier-uniform linear maps,
kaiming-uniform D and E, N(0, 0.02²) class and mask tokens, LayerNorms 1/0),
λ = 0.5, the final LayerNorms' ε = 1e-6, untied decoder -- follows the
release.  ``tie_decoder=True`` shares each decoder layer's E and U with the
mirror encoder layer's D and U (the theory's form): the gradients of both
uses are summed into the encoder's keys.

Parameters (one flat dict): ``embed.{W,b}``, ``cls_token``, ``mask_token``,
``layers.{i}.*`` (encoder layers, keys of :mod:`minicrate.layers.encoder`),
``enc_norm.{gamma,beta}``, ``decoder.{i}.*`` (keys of
:mod:`minicrate.layers.decoder`; E and U absent when tied), ``dec_norm.{gamma,beta}``,
``pred.{W,b}``.  The positional embedding is a fixed buffer, recomputed from
the config, not a parameter.

Around it: the configuration and parameters (:mod:`minicrate.models.mae_params`,
re-exported here), the masks (:mod:`minicrate.models.masking`), the masked-patch MSE
(:mod:`minicrate.models.loss`), training (:mod:`minicrate.training.mae`, the
``train-mae`` command) and the measurements -- masked-patch MSE against the
mean-patch baseline, and a linear probe on frozen encoder features vs raw pixels
(:mod:`minicrate.measure.probe`).
"""

from __future__ import annotations

from minicrate.core.backend import (
    device_of,
    host_to,
    namespace,
)
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_config,
    check_cotangent,
    check_params_shapes,
)
from minicrate.layers.decoder import (
    accumulate,
    decoder_layer_backward,
    decoder_layer_forward,
    decoder_layer_params,
)
from minicrate.layers.fused.decoder import fast_decoder_layer_backward, fast_decoder_layer_forward, fast_supports
from minicrate.models.embedding import add_cls_pos_backward, add_cls_pos_forward, patchify, unpatchify
from minicrate.models.loss import masked_mse_backward, masked_mse_forward
from minicrate.models.mae_params import (  # noqa: F401  (re-exported: mae.MAEConfig, mae.init_mae_params, ...)
    MAE_PRESETS,
    MAEConfig,
    init_mae_params,
    mae_param_count,
    mae_param_shapes,
    mae_preset,
    sincos_pos_embedding,
)
from minicrate.models.masking import mask_in
from minicrate.models.stack import encoder_stack_backward, encoder_stack_forward
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

# ---------------------------------------------------------------------------
# forward, loss, backward


def mae_encode(params, images, mask, config: MAEConfig, *, fast=False, keep_cache=True):
    """Encoder half: images and mask -> encoder output after its LayerNorm.

    ``fast=True`` runs the encoder layers with the fused
    :func:`minicrate.layers.fused.encoder.layer_forward` (same mathematics, about twice as
    fast on NumPy; official form only, otherwise the plain layer is used).
    ``keep_cache=False`` (inference) keeps only ``cache["patches"]`` and ``cache["mask"]``.

    Returns:
        ``(Z, cache)``: Z ``(B, Np + 1, d)`` (row 0 is the class token).
    """
    check_config(config, MAEConfig)
    check_array(images, "images", ndim=4)
    B, C, H, W = images.shape
    if (C, H, W) != (config.channels, config.image_size, config.image_size):
        raise ValueError(f"images must have shape (B, {config.channels}, {config.image_size}, "
                         f"{config.image_size}) for this config, got {tuple(images.shape)}")
    check_params_shapes(params, mae_param_shapes(config), images=images)
    xp = namespace(images, params["embed.W"])
    patches = patchify(images, config.patch_size)
    Np, d = config.num_patches, config.dim
    m = xp.reshape(mask_in(mask, images, B, Np), (B, Np, 1))
    T, embed_cache = linear_forward(patches, params["embed.W"], params["embed.b"])
    T = xp.where(m, params["mask_token"], T)
    pos = host_to(xp, sincos_pos_embedding(d, config.grid_size), images.dtype, device_of(images))
    Z, pos_cache = add_cls_pos_forward(T, params["cls_token"], pos)
    Z, layers, _ = encoder_stack_forward(Z, params, config.depth, config.layer_options(), fast=fast,
                                         keep_cache=keep_cache)
    Z, norm_cache = layernorm_forward(Z, params["enc_norm.gamma"], params["enc_norm.beta"],
                                      eps=config.final_ln_eps)
    if not keep_cache:
        return Z, {"patches": patches, "mask": m}
    cache = {"patches": patches, "mask": m, "embed": embed_cache, "pos": pos_cache, "layers": layers,
             "norm": norm_cache}
    return Z, cache


def mae_forward(params, images, mask, config: MAEConfig, *, fast=False, keep_cache=True):
    """Predicted pixels of every patch.

    Args:
        params: from :func:`init_mae_params`.
        images: ``(B, C, H, W)`` in the parameters' namespace and dtype.
        mask: ``(B, Np)`` bool, True = masked (from :func:`random_masking`;
            NumPy or any backend).
        config: the :class:`MAEConfig`.
        fast: fused encoder and decoder layers (:func:`minicrate.layers.fused.encoder.layer_forward`,
            :func:`minicrate.layers.fused.decoder.fast_decoder_layer_forward`; released form only).
        keep_cache: ``False`` for inference (:func:`mae_predict`): each layer's work is
            dropped when the layer is done; the cache holds only the patches and the mask.

    Returns:
        ``(pred, cache)``: pred ``(B, Np, P·P·C)`` (visible patches are
        predicted too but do not enter the loss); ``cache["patches"]`` is the
        target.
    """
    Z, cache = mae_encode(params, images, mask, config, fast=fast, keep_cache=keep_cache)
    if config.block == "transformer":  # ViT-MAE: the decoder is transformer blocks too
        Z, dec_layers, _ = encoder_stack_forward(Z, params, config.depth, config.layer_options(), fast=fast,
                                                 prefix="decoder.", keep_cache=keep_cache)
        return _head(params, Z, config, cache, dec_layers)
    use_fast = fast and fast_supports(**config.decoder_options())
    layer_forward = fast_decoder_layer_forward if use_fast else decoder_layer_forward
    layer_backward = fast_decoder_layer_backward if use_fast else decoder_layer_backward
    dec_layers = []
    for i in range(config.depth):
        layer, keys = decoder_layer_params(params, i, config.depth, tie_encoder=config.tie_decoder)
        Z, c = layer_forward(Z, layer, **config.decoder_options())
        if keep_cache:
            dec_layers.append((c, keys, layer_backward))
    return _head(params, Z, config, cache, dec_layers if keep_cache else None)


def _head(params, Z, config, cache, dec_layers):
    """The decoder's LayerNorm and the pixel head; the class token's row is dropped."""
    Z, dec_norm = layernorm_forward(Z, params["dec_norm.gamma"], params["dec_norm.beta"],
                                    eps=config.final_ln_eps)
    out, pred_cache = linear_forward(Z, params["pred.W"], params["pred.b"])
    if dec_layers is not None:  # None: inference, nothing more to keep
        cache.update(decoder=dec_layers, dec_norm=dec_norm, pred=pred_cache, out_shape=tuple(out.shape))
    return out[:, 1:, :], cache


def mae_predict(params, images, mask, config: MAEConfig, *, fast=True):
    """Predicted pixels ``(B, Np, P·P·C)`` of every patch, the inference path:
    :func:`mae_forward` without a cache."""
    return mae_forward(params, images, mask, config, fast=fast, keep_cache=False)[0]


def mae_backward(dpred, cache):
    """Gradients of every parameter given ∂L/∂pred ``(B, Np, P·P·C)``.

    Walks the pipeline in reverse: pixel head (the class row gets no
    gradient), decoder LayerNorm, decoder layers last to first (tied E/U go
    into the encoder's keys), encoder LayerNorm, encoder layers, the class
    token, the mask token (the sum over masked positions) and the patch
    embedding (visible positions only).  The fixed positional embedding has
    no gradient.

    Returns:
        a dict with exactly the keys of the parameters.
    """
    check_cache(cache, "mae_forward", keys=("patches", "mask", "embed", "pos", "layers", "norm",
                                            "decoder", "dec_norm", "pred",
                                            "out_shape"))
    B, N, Pd = cache["out_shape"]
    check_cotangent(dpred, (B, N - 1, Pd), cache["patches"], name="dpred")
    xp = namespace(dpred)
    grads = {}
    zero_row = xp.zeros((B, 1, Pd), dtype=dpred.dtype, device=device_of(dpred))
    dZ, g = linear_backward(xp.concat([zero_row, dpred], axis=1), cache["pred"])
    grads["pred.W"], grads["pred.b"] = g["W"], g["b"]
    dZ, g = layernorm_backward(dZ, cache["dec_norm"])
    grads["dec_norm.gamma"], grads["dec_norm.beta"] = g["gamma"], g["beta"]
    if cache["decoder"] and isinstance(cache["decoder"][0], tuple):
        for c, keys, layer_backward in reversed(cache["decoder"]):
            dZ, g = layer_backward(dZ, c)
            accumulate(grads, g, keys)
    else:  # transformer blocks (ViT-MAE)
        dZ = encoder_stack_backward(dZ, cache["decoder"], grads, prefix="decoder.")
    dZ, g = layernorm_backward(dZ, cache["norm"])
    grads["enc_norm.gamma"], grads["enc_norm.beta"] = g["gamma"], g["beta"]
    dZ = encoder_stack_backward(dZ, cache["layers"], grads)
    dT, g = add_cls_pos_backward(dZ, cache["pos"])
    grads["cls_token"] = g["cls_token"]
    m = cache["mask"]
    zeros = xp.zeros_like(dT)
    grads["mask_token"] = xp.sum(xp.reshape(xp.where(m, dT, zeros), (-1, dT.shape[-1])), axis=0)
    _, g = linear_backward(xp.where(m, zeros, dT), cache["embed"])
    grads["embed.W"], grads["embed.b"] = g["W"], g["b"]
    return grads


def mae_loss_and_grads(params, images, mask, config: MAEConfig, *, fast=False):
    """Masked-patch MSE of a batch and the gradient of every parameter
    (``fast``: fused layers, see :func:`mae_forward`).

    Returns:
        ``(loss, grads, pred)``: loss a Python float.
    """
    pred, cache = mae_forward(params, images, mask, config, fast=fast)
    loss, loss_cache = masked_mse_forward(pred, cache["patches"], mask)
    grads = mae_backward(masked_mse_backward(1.0, loss_cache), cache)
    return float(loss), grads, pred


def mae_loss(params, images, mask, config: MAEConfig):
    """The loss alone (what the finite-difference check differentiates)."""
    pred, cache = mae_forward(params, images, mask, config)
    return masked_mse_forward(pred, cache["patches"], mask)[0]


def reconstruct(params, images, mask, config: MAEConfig):
    """The MAE paper's picture: visible patches kept, masked ones predicted.

    Returns:
        ``(merged, prediction)``, both ``(B, C, H, W)`` in the images'
        namespace; ``prediction`` is the model's output for every patch.
    """
    xp = namespace(images)
    pred, cache = mae_forward(params, images, mask, config, keep_cache=False)
    merged = xp.where(cache["mask"], pred, cache["patches"])
    size = config.image_size
    return (unpatchify(merged, config.patch_size, config.channels, size, size),
            unpatchify(pred, config.patch_size, config.channels, size, size))
