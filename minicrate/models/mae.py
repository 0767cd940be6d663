r"""CRATE-MAE: a masked autoencoder whose encoder is CRATE and whose decoder is
its inverse (spec §5.4, §8.6), with the whole backward written by hand.

Pipeline (released ``model/crate_ae/crate_ae.py``)::

    images (B, C, H, W) ── patchify ──> patches (B, Np, P·P·C)  (also the target)
      ── Linear ──> (B, Np, d)        (the released Conv2d(kernel = stride = P))
      ── masked patches replaced by a learned mask token ──
      ── [cls; ·] + fixed 2-D sin-cos positions (class row zero) ──> Z⁰ (B, Np+1, d)
      ── L × CRATE encoder layer (λ = 0.5) ── LayerNorm (ε 1e-6)
      ── L × CRATE decoder layer ── LayerNorm (ε 1e-6) ── Linear ──> (B, Np+1, P·P·C)
      ── drop the class token ──> prediction (B, Np, P·P·C)
    loss = Σ_i m_i ‖ŷ_i − t_i‖² / (P·P·C) / Σ_i m_i   (masked patches only, spec §8.6)

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
mirror encoder layer's D and U (spec §5.3, theory form): the gradients of both
uses are summed into the encoder's keys.

Parameters (one flat dict): ``embed.{W,b}``, ``cls_token``, ``mask_token``,
``layers.{i}.*`` (encoder layers, keys of :mod:`minicrate.layers.encoder`),
``enc_norm.{gamma,beta}``, ``decoder.{i}.*`` (keys of
:mod:`minicrate.layers.decoder`; E and U absent when tied), ``dec_norm.{gamma,beta}``,
``pred.{W,b}``.  The positional embedding is a fixed buffer, recomputed from
the config, not a parameter.

The second half of this module trains it (:func:`train_mae`, the ``train-mae``
command) and measures it: masked-patch MSE against the mean-patch baseline,
and a linear probe on frozen encoder features vs raw pixels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from minicrate.core.allocator import keep_freed_memory
from minicrate.core.backend import (
    device_of,
    get_backend,
    host_to,
    namespace,
    random_normal,
    random_uniform,
    to_numpy,
)
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_config,
    check_config_fields,
    check_cotangent,
    check_int,
    check_params_shapes,
    check_positive,
    check_real,
    check_same_kind,
    describe,
)
from minicrate.layers.decoder import (
    accumulate,
    decoder_layer_backward,
    decoder_layer_forward,
    decoder_layer_params,
    fast_decoder_layer_backward,
    fast_decoder_layer_forward,
    fast_supports,
)
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.models.classifier import layer_params
from minicrate.models.embedding import add_cls_pos_backward, add_cls_pos_forward, patchify, unpatchify
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

# ---------------------------------------------------------------------------
# configuration and parameters


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    """CRATE-MAE architecture; the decoder has the encoder's depth, width and heads.

    ``lam`` is the encoder's ISTA λ (0.5 in the release); ``tie_decoder``
    shares E ≡ D and U ≡ U with the mirror encoder layer; ``tie_out``,
    ``attn_scale=1.0`` and ``use_layernorm=False`` give the paper's layer form.
    ``head_init_std`` initialises the pixel head's weight N(0, std²) (``None``:
    xavier-uniform as released; see :func:`init_mae_params` for why we do not).
    ``out_init_gain`` scales the initial attention output maps ``W_out`` of the
    encoder and decoder (1.0: as released; see :func:`init_mae_params`).
    """

    image_size: int = 28
    patch_size: int = 7
    channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mask_ratio: float = 0.75
    eta: float = 0.1
    lam: float = 0.5
    tie_decoder: bool = False
    tie_out: bool = False
    attn_scale: float | None = None
    use_layernorm: bool = True
    ln_eps: float = 1e-5
    final_ln_eps: float = 1e-6
    head_init_std: float | None = 0.02
    out_init_gain: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        check_config_fields(
            self,
            ints=("image_size", "patch_size", "channels", "dim", "depth", "heads"),
            nonneg=(("eta", "lam"), "head_init_std"),
            positive=("ln_eps", "final_ln_eps", "attn_scale", "out_init_gain"),
            optional=("attn_scale", "head_init_std"),
            open_unit=("mask_ratio",),
            bools=("tie_decoder", "tie_out", "use_layernorm"),
        )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads} (p = dim/heads)")
        if self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 for the 2-D sin-cos positional embedding")
        if self.num_patches - num_visible(self.num_patches, self.mask_ratio) < 1:
            raise ValueError(f"mask_ratio {self.mask_ratio} masks no patch of {self.num_patches}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.channels

    def encoder_options(self) -> dict:
        return {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                "eta": self.eta, "lam": self.lam, "ln_eps": self.ln_eps}

    def decoder_options(self) -> dict:
        return {"scale": self.attn_scale, "tie_out": self.tie_out, "use_layernorm": self.use_layernorm,
                "ln_eps": self.ln_eps}


_IMAGENET = dict(image_size=224, patch_size=16, channels=3)
MAE_PRESETS = {
    # the released sizes (spec §5.4)
    "mae_crate_tiny": dict(dim=384, depth=12, heads=6, **_IMAGENET),
    "mae_crate_small": dict(dim=576, depth=12, heads=12, **_IMAGENET),
    "mae_crate_base": dict(dim=768, depth=12, heads=12, **_IMAGENET),
    "mae_crate_large": dict(dim=1024, depth=24, heads=16, **_IMAGENET),
    # small presets for the bundled data
    # MNIST's 28×28 digits centred on a 32×32 canvas: 8×8 = 64 patches of 4×4, 48 masked.
    # Width 96 (6 heads of 16): at width 64 the model underfits (train ≈ test MSE) and its
    # recipe ended above 0.5 × the baseline (see MAE_RECIPES).
    "mnist": dict(image_size=32, patch_size=4, channels=1, dim=96, depth=4, heads=6),
    "digits": dict(image_size=8, patch_size=2, channels=1, dim=32, depth=2, heads=4),  # 16 patches, 12 masked
}


def mae_preset(name: str, **overrides) -> MAEConfig:
    """A named :class:`MAEConfig` (``MAE_PRESETS``), optionally with fields overridden."""
    if not isinstance(name, str) or name not in MAE_PRESETS:
        raise ValueError(f"MAE preset must be one of {sorted(MAE_PRESETS)}, got {name!r}")
    return MAEConfig(**{**MAE_PRESETS[name], **overrides})


def _encoder_layer_shapes(c: MAEConfig):
    d, K, p = c.dim, c.heads, c.head_dim
    shapes = {"U": (K, d, p), "D": (d, d)}
    if not c.tie_out:
        shapes.update(W_out=(d, K * p), b_out=(d,))
    if c.use_layernorm:
        shapes.update({k: (d,) for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")})
    return shapes


def _decoder_layer_shapes(c: MAEConfig):
    shapes = {("E" if k == "D" else k): v for k, v in _encoder_layer_shapes(c).items()}
    if c.tie_decoder:
        del shapes["E"], shapes["U"]
    return shapes


def mae_param_shapes(config: MAEConfig) -> dict:
    """Name -> shape of every parameter :func:`init_mae_params` makes (what
    :func:`mae_forward` checks ``params`` against)."""
    check_config(config, MAEConfig)
    d, P = config.dim, config.patch_dim
    shapes = {"embed.W": (d, P), "embed.b": (d,), "cls_token": (d,), "mask_token": (d,)}
    for i in range(config.depth):
        shapes.update({f"layers.{i}.{k}": v for k, v in _encoder_layer_shapes(config).items()})
    shapes.update({"enc_norm.gamma": (d,), "enc_norm.beta": (d,)})
    for i in range(config.depth):
        shapes.update({f"decoder.{i}.{k}": v for k, v in _decoder_layer_shapes(config).items()})
    shapes.update({"dec_norm.gamma": (d,), "dec_norm.beta": (d,), "pred.W": (P, d), "pred.b": (P,)})
    return shapes


def _backend_and_dtype(config, backend, dtype):
    xp = get_backend(backend) if isinstance(backend, str) else backend
    if not (hasattr(xp, "asarray") and hasattr(xp, "float64")):
        raise TypeError(f"backend must be a backend name or an array namespace, got {describe(backend)}")
    dtype = config.dtype if dtype is None else dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return xp, dtype


def init_mae_params(config: MAEConfig, seed: int = 0, backend="numpy", dtype: str | None = None):
    """Parameters with the released CRATE-MAE's initial distributions.

    Linear maps (patch embedding, U, W_out): xavier-uniform
    U(±√(6/(fan_in + fan_out))), zero biases; D and E: kaiming-uniform
    U(±√(6/d)); class and mask tokens: N(0, 0.02²); LayerNorms: 1, 0.
    Drawn on the host, so one seed gives one model on every backend.

    One deliberate difference: the pixel head's weight starts small,
    N(0, ``head_init_std``²), instead of xavier-uniform (``head_init_std=None``
    restores the release).  With xavier the first predictions have variance
    ≈ 1 in standardised pixels (loss ≈ 2); the first steps shrink them by
    collapsing the token representations, and training then sits on the
    "predict the global mean" plateau (loss ≈ 1) for hundreds of steps.
    Measured on 32 digits with fixed masks, AdamW 3e-3: loss after 50 / 300
    steps 1.01 / 0.44 with xavier, 0.47 / 0.11 with the small head.

    A second one: every attention output map ``W_out`` starts at
    ``out_init_gain`` (0.1) times its xavier draw (1.0 restores the release).
    At the release's scale each MSSA step adds nearly the same vector (the
    attention-weighted average) to every token, and the ISTA step, which has
    no skip, renormalises it: the tokens of one image become alike layer
    after layer.  Measured on MNIST at initialisation (spread of the tokens
    of an image relative to their size, 1 = unrelated tokens): 0.33 after the
    first encoder layer and 0.05 at the decoder's output with gain 1; 0.42 and
    0.53 with gain 0.1.  Training starts from that collapse and spends epochs
    leaving it (test masked MSE after 4 epochs 0.99 × the baseline with gain 1,
    0.96 × with 0.1); with gain 1 a learning rate of 5e-3 falls into it for
    good (a constant prediction), with 0.1 4e-3 trains.

    Returns:
        a flat dict name -> array (see the module docstring).
    """
    check_config(config, MAEConfig)
    seed = check_int(seed, "seed", minimum=0)
    xp, dtype = _backend_and_dtype(config, backend, dtype)
    d, P = config.dim, config.patch_dim
    seeds = iter(range(seed * 100_003 + 7, seed * 100_003 + 10_007))

    def xavier(shape, fan_in, fan_out):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return random_uniform(shape, seed=next(seeds), low=-bound, high=bound, xp=xp, dtype=dtype)

    def kaiming(shape):
        bound = math.sqrt(6.0 / shape[1])
        return random_uniform(shape, seed=next(seeds), low=-bound, high=bound, xp=xp, dtype=dtype)

    ones = lambda n: xp.ones((n,), dtype=getattr(xp, dtype))
    zeros = lambda n: xp.zeros((n,), dtype=getattr(xp, dtype))

    def layer(shapes):
        out = {}
        for key, shape in shapes.items():
            if key == "U":  # nn.Linear(d, K·p, bias=False)
                out[key] = xavier(shape, d, config.heads * config.head_dim)
            elif key in ("D", "E"):
                out[key] = kaiming(shape)
            elif key == "W_out":
                out[key] = config.out_init_gain * xavier(shape, shape[1], shape[0])
            elif key.endswith("gamma"):
                out[key] = ones(d)
            else:  # b_out, LayerNorm betas
                out[key] = zeros(d)
        return out

    params = {
        "embed.W": xavier((d, P), P, d), "embed.b": zeros(d),
        "cls_token": random_normal((d,), seed=next(seeds), std=0.02, xp=xp, dtype=dtype),
        "mask_token": random_normal((d,), seed=next(seeds), std=0.02, xp=xp, dtype=dtype),
    }
    for i in range(config.depth):
        params.update({f"layers.{i}.{k}": v for k, v in layer(_encoder_layer_shapes(config)).items()})
    params.update({"enc_norm.gamma": ones(d), "enc_norm.beta": zeros(d)})
    for i in range(config.depth):
        params.update({f"decoder.{i}.{k}": v for k, v in layer(_decoder_layer_shapes(config)).items()})
    params.update({"dec_norm.gamma": ones(d), "dec_norm.beta": zeros(d),
                   "pred.W": (xavier((P, d), d, P) if config.head_init_std is None else
                              random_normal((P, d), seed=next(seeds), std=config.head_init_std, xp=xp, dtype=dtype)),
                   "pred.b": zeros(P)})
    return params


def mae_param_count(config: MAEConfig) -> int:
    """Number of trainable scalars (the fixed positional buffer not included)."""
    return sum(math.prod(s) for s in mae_param_shapes(config).values())


def sincos_pos_embedding(dim, grid_size, cls_token=True):
    """Fixed 2-D sine-cosine positions (MAE's ``get_2d_sincos_pos_embed``), NumPy float64.

    Patch (row r, column c) gets ``[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]``
    with ω_k = 10000^(−k/(dim/4)), k < dim/4 (the first half encodes the
    column, as the released code's meshgrid does).  With ``cls_token`` a zero
    row is prepended.

    Returns:
        ``(grid_size² (+1), dim)``.
    """
    import numpy as np

    dim = check_int(dim, "dim", minimum=1)
    grid_size = check_int(grid_size, "grid_size", minimum=1)
    if not isinstance(cls_token, bool):
        raise TypeError(f"cls_token must be True or False, got {cls_token!r}")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def one_d(pos):
        angles = np.outer(pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([one_d(cols), one_d(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb


# ---------------------------------------------------------------------------
# masking


def num_visible(num_patches, mask_ratio):
    """Patches kept per image: ⌊(1 − r)·Np⌋ as in the release (with a guard
    against float round-off, so 10 patches at r = 0.9 keep exactly one)."""
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    mask_ratio = _check_ratio(mask_ratio)
    return int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))


def _check_ratio(mask_ratio):
    if isinstance(mask_ratio, bool):
        raise TypeError(f"mask_ratio must be a real number, got {mask_ratio!r}")
    r = check_real(mask_ratio, "mask_ratio")
    if not 0 < r < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
    return r


def _host_ints(values, name):
    """Host NumPy integers from a NumPy or backend integer array (never floats,
    which would be truncated silently)."""
    import numpy as np

    if not (hasattr(values, "shape") and hasattr(values, "dtype")):
        raise TypeError(f"{name} must be an integer array, got {describe(values)}")
    host = to_numpy(values)
    if not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {describe(values)}")
    return host


def random_masking(keys, num_patches, mask_ratio, *, seed):
    """Per-image seeded random masks (host NumPy bool, True = masked).

    Image ``i`` masks ``Np − num_visible(Np, r)`` patches chosen uniformly at
    random by ``numpy.random.default_rng([seed, *keys[i]])``: the mask of an
    image depends only on the seed and its key, never on the batch it is in.
    Training uses keys ``(epoch, image index)`` (new masks each epoch),
    evaluation the image index alone (the same masks every time).

    Args:
        keys: ``(B,)`` or ``(B, k)`` non-negative integers.
        num_patches: Np.
        mask_ratio: r in (0, 1).
        seed: the run's seed.

    Returns:
        ``(B, Np)`` bool.
    """
    import numpy as np

    keys = _host_ints(keys, "keys").astype(np.int64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.ndim != 2 or keys.size == 0 or np.any(keys < 0):
        raise ValueError(f"keys must be (B,) or (B, k) non-negative integers, B, k >= 1, "
                         f"got {describe(keys)}")
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    keep = num_visible(num_patches, mask_ratio)
    if keep == num_patches:  # the masked-patch loss would then have nothing to average
        raise ValueError(f"mask_ratio {mask_ratio!r} masks none of {num_patches} patches "
                         f"(⌊(1 − r)·{num_patches}⌋ = {num_patches} stay visible); use a larger ratio")
    mask = np.ones((len(keys), num_patches), dtype=bool)
    for i, key in enumerate(keys):
        order = np.argsort(np.random.default_rng([int(seed), *map(int, key)]).random(num_patches))
        mask[i, order[:keep]] = False
    return mask


def no_masking(batch, num_patches):
    """All patches visible: ``(B, Np)`` False (for features and the linear probe)."""
    import numpy as np

    batch = check_int(batch, "batch", minimum=1)
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    return np.zeros((batch, num_patches), dtype=bool)


def _mask_in(mask, like, B, Np):
    """The mask (host or any backend; bool, or integers/floats that are all 0 or 1)
    as a bool array in ``like``'s namespace and device, checked."""
    import numpy as np

    xp = namespace(like)
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
        raise TypeError(f"mask must be a bool (or 0/1) array, got {describe(mask)}")
    if tuple(mask.shape) != (B, Np):
        raise ValueError(f"mask must have shape (B, Np) = ({B}, {Np}), got {describe(mask)}")
    m = to_numpy(mask)
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise TypeError(f"mask must be a bool (or 0/1) array, got {describe(mask)}")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"mask must hold only 0/1 (or False/True) values, got {describe(mask)}")
    return xp.asarray(m.astype(bool), device=device_of(like))


# ---------------------------------------------------------------------------
# forward, loss, backward


def _group(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def mae_encode(params, images, mask, config: MAEConfig, *, fast=False):
    """Encoder half: images and mask -> encoder output after its LayerNorm.

    ``fast=True`` runs the encoder layers with the fused
    :func:`minicrate.layers.fused.encoder.layer_forward` (same mathematics, about twice as
    fast on NumPy; official form only, otherwise the plain layer is used).

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
    m = xp.reshape(_mask_in(mask, images, B, Np), (B, Np, 1))
    T, embed_cache = linear_forward(patches, params["embed.W"], params["embed.b"])
    T = xp.where(m, params["mask_token"], T)
    pos = host_to(xp, sincos_pos_embedding(d, config.grid_size), images.dtype, device_of(images))
    Z, pos_cache = add_cls_pos_forward(T, params["cls_token"], pos)
    from minicrate.layers.fused import encoder as fused

    use_fast = fast and fused.supports(**config.encoder_options())
    layer_forward = fused.layer_forward if use_fast else encoder_layer_forward
    layers = []
    for i in range(config.depth):
        Z, c = layer_forward(Z, layer_params(params, i), **config.encoder_options())
        layers.append(c)
    Z, norm_cache = layernorm_forward(Z, params["enc_norm.gamma"], params["enc_norm.beta"],
                                      eps=config.final_ln_eps)
    cache = {"patches": patches, "mask": m, "embed": embed_cache, "pos": pos_cache, "layers": layers,
             "norm": norm_cache, "layer_backward": fused.layer_backward if use_fast else encoder_layer_backward}
    return Z, cache


def mae_forward(params, images, mask, config: MAEConfig, *, fast=False):
    """Predicted pixels of every patch.

    Args:
        params: from :func:`init_mae_params`.
        images: ``(B, C, H, W)`` in the parameters' namespace and dtype.
        mask: ``(B, Np)`` bool, True = masked (from :func:`random_masking`;
            NumPy or any backend).
        config: the :class:`MAEConfig`.
        fast: fused encoder and decoder layers (:func:`minicrate.layers.fused.encoder.layer_forward`,
            :func:`minicrate.layers.decoder.fast_decoder_layer_forward`; released form only).

    Returns:
        ``(pred, cache)``: pred ``(B, Np, P·P·C)`` (visible patches are
        predicted too but do not enter the loss); ``cache["patches"]`` is the
        target.
    """
    Z, cache = mae_encode(params, images, mask, config, fast=fast)
    use_fast = fast and fast_supports(**config.decoder_options())
    layer_forward = fast_decoder_layer_forward if use_fast else decoder_layer_forward
    layer_backward = fast_decoder_layer_backward if use_fast else decoder_layer_backward
    dec_layers = []
    for i in range(config.depth):
        layer, keys = decoder_layer_params(params, i, config.depth, tie_encoder=config.tie_decoder)
        Z, c = layer_forward(Z, layer, **config.decoder_options())
        dec_layers.append((c, keys, layer_backward))
    Z, dec_norm = layernorm_forward(Z, params["dec_norm.gamma"], params["dec_norm.beta"],
                                    eps=config.final_ln_eps)
    out, pred_cache = linear_forward(Z, params["pred.W"], params["pred.b"])
    cache.update(decoder=dec_layers, dec_norm=dec_norm, pred=pred_cache, out_shape=tuple(out.shape))
    return out[:, 1:, :], cache


def masked_mse_forward(pred, target, mask):
    r"""Mean squared error on masked patches only, spec §8.6:
    :math:`L = \sum_i m_i \lVert\hat y_i - t_i\rVert^2 / P_d \,/\, \sum_i m_i`.

    Args:
        pred, target: ``(B, Np, P_d)``.
        mask: ``(B, Np)`` (bool or 0/1), 1 = masked.

    Returns:
        ``(loss, cache)``: loss a 0-d array.
    """
    check_array(pred, "pred", ndim=3)
    check_array(target, "target", ndim=3)
    check_same_kind(pred=pred, target=target)
    xp = namespace(pred, target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
    m = xp.astype(_mask_in(mask, pred, *pred.shape[:2]), pred.dtype)
    count = xp.sum(m)
    if float(count) == 0:
        raise ValueError("the mask masks no patch: the masked-patch MSE is undefined")
    diff = pred - target
    per_patch = xp.mean(diff * diff, axis=-1)
    return xp.sum(per_patch * m) / count, {"diff": diff, "m": m, "count": count}


def masked_mse_backward(dloss, cache):
    r""":math:`\partial L/\partial\hat y_i = 2 m_i(\hat y_i - t_i)/(P_d\sum_j m_j)` times ``dloss``
    (a finite real number, the upstream gradient of the 0-d loss)."""
    check_cache(cache, "masked_mse_forward", keys=("diff", "m", "count"))
    dloss = check_real(dloss, "dloss")
    diff, m, count = cache["diff"], cache["m"], cache["count"]
    xp = namespace(diff)
    return (2.0 * dloss / (diff.shape[-1] * count)) * diff * xp.reshape(m, (*m.shape, 1))


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
                                            "layer_backward", "decoder", "dec_norm", "pred",
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
    for c, keys, layer_backward in reversed(cache["decoder"]):
        dZ, g = layer_backward(dZ, c)
        accumulate(grads, g, keys)
    dZ, g = layernorm_backward(dZ, cache["norm"])
    grads["enc_norm.gamma"], grads["enc_norm.beta"] = g["gamma"], g["beta"]
    for i in reversed(range(len(cache["layers"]))):
        dZ, g = cache["layer_backward"](dZ, cache["layers"][i])
        accumulate(grads, g, {k: f"layers.{i}.{k}" for k in g})
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
    pred, cache = mae_forward(params, images, mask, config)
    m = cache["mask"]
    merged = xp.where(m, pred, cache["patches"])
    size = config.image_size
    return (unpatchify(merged, config.patch_size, config.channels, size, size),
            unpatchify(pred, config.patch_size, config.channels, size, size))


# ---------------------------------------------------------------------------
# evaluation on host arrays


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
    keys = _host_ints(keys, "keys")
    if keys.ndim not in (1, 2) or len(keys) != n:
        raise ValueError(f"keys must have one row per image ({n}), got {describe(keys)}")
    return keys


def evaluate_masked_mse(params, config: MAEConfig, images, *, seed=0, batch_size=500, keys=None):
    """Masked-patch MSE on host images with the fixed evaluation masks
    (keys = image index unless given); exact average over all masked patches."""
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
            pred, cache = mae_forward(params, xb, mask, config, fast=True)
            loss, _ = masked_mse_forward(pred, cache["patches"], mask)
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
            Z, _ = mae_encode(params, xb, no_masking(xb.shape[0], config.num_patches), config, fast=True)
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
        labels = _host_ints(y, y_name)
        if labels.ndim != 1 or len(labels) != x.shape[0]:
            raise ValueError(f"{y_name} must be ({x.shape[0]},) labels, one per row of {x_name}, "
                             f"got {describe(y)}")
    if math.prod(train_x.shape[1:]) != math.prod(test_x.shape[1:]):
        raise ValueError(f"train_x and test_x must have one feature width, got {describe(train_x)} "
                         f"and {describe(test_x)}")
    train_x, test_x = to_numpy(train_x), to_numpy(test_x)
    train_y, test_y = _host_ints(train_y, "train_y"), _host_ints(test_y, "test_y")
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


# ---------------------------------------------------------------------------
# training (the conventions of minicrate.training.classifier: run directory with
# checkpoint.npz, metrics.json, curves.png; --resume continues bit for bit)

MAE_RECIPES = {
    # benchmarks/train_mae.py runs these.  Measured (seed 0, NumPy, 1 thread, the other core busy):
    # mnist test masked-patch MSE 0.2711 = 0.495 × the mean-patch baseline 0.5474 after 90 epochs
    # (11,250 steps, 50 min); 0.608 at epoch 40, 0.531 at 66, 0.498 at 82; seed 1: 0.493 ×.  Linear probe (C = 1):
    # encoder 92.7 %, pixels 87.6 %.  Earlier recipes: width 64 with the release's W_out scale,
    # lr 2e-3, 120 epochs: 0.569 ×; width 64 with W_out × 0.1, lr 3e-3: 0.584 × at epoch 88 of 180.
    "mnist": (
        dict(preset="mnist"),
        dict(data="mnist", optimizer="adamw", lr=3e-3, weight_decay=0.05, epochs=90, batch_size=32,
             warmup_epochs=2, shift=0, clip=1.0),
    ),
    "digits": (
        dict(preset="digits"),
        dict(data="digits", optimizer="adamw", lr=3e-3, weight_decay=0.05, epochs=100, batch_size=32,
             warmup_epochs=2, shift=0, clip=1.0),
    ),
}


def to_canvas(images, size, fill):
    """Centre ``(n, C, h, w)`` host images on a ``size × size`` canvas filled
    with ``fill`` (the background value), e.g. MNIST's 28×28 on 32×32 so that
    4-pixel patches tile it into 8×8 = 64 patches and exactly 75 % (48) can be
    masked.  Returns the images unchanged when they already have that size."""
    import numpy as np

    check_array(images, "images", ndim=4)
    images = to_numpy(images)
    size = check_int(size, "size", minimum=1)
    fill = check_real(fill, "fill")
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h > size or w > size or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"cannot centre {h}×{w} images on a {size}×{size} canvas "
                         "(it must be larger by an even number of pixels)")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (0, 0), (top, top), (left, left)), constant_values=fill)


def load_split(data, config: MAEConfig, *, test_size=None, seed=0):
    """The data set's standardised split (:func:`minicrate.data.images.load`) with
    images centred on the config's canvas (:func:`to_canvas`, background fill)."""
    from minicrate.data import images as datasets

    split = datasets.load(data, test_size=test_size, seed=seed)
    if split.x_train.shape[1] != config.channels:
        raise ValueError(f"MAE config expects {config.channels} channel(s), {data!r} has {split.x_train.shape[1]}")
    background = (0.0 - split.mean) / split.std  # a black pixel after standardising
    return dataclasses.replace(split, x_train=to_canvas(split.x_train, config.image_size, background),
                               x_test=to_canvas(split.x_test, config.image_size, background))


def mae_recipe(name, **train_overrides):
    """``(MAEConfig, TrainConfig)`` of a named recipe (``MAE_RECIPES``)."""
    from minicrate.training.classifier import TrainConfig

    if not isinstance(name, str) or name not in MAE_RECIPES:
        raise ValueError(f"MAE recipe must be one of {sorted(MAE_RECIPES)}, got {name!r}")
    model_part, train_part = MAE_RECIPES[name]
    return mae_preset(model_part["preset"]), TrainConfig(**{**train_part, **train_overrides})


def save_mae_checkpoint(path, params, config: MAEConfig, extra=None):
    """:func:`minicrate.core.checkpoint.save` with the MAE config kept in ``extra``
    (the checkpoint's own config slot holds a classifier :class:`CRATEConfig`)."""
    from minicrate.core import checkpoint as ckpt

    ckpt.save(path, params, None, extra={**(extra or {}), "mae_config": dataclasses.asdict(config)})


def load_mae_run(run_or_file, *, backend="numpy"):
    """``(params, MAEConfig, extra)`` of a ``train-mae`` run (directory or
    ``.npz``), parameters moved to ``backend`` and checked against the config."""
    from minicrate.core import checkpoint as ckpt
    from minicrate.training.classifier import checkpoint_path

    path = checkpoint_path(run_or_file)
    params, _, extra = ckpt.load(path)
    if "mae_config" not in extra:
        raise ckpt.CheckpointError(f"{path} is not a CRATE-MAE checkpoint (no mae_config); "
                                   "was it written by 'minicrate train'?")
    try:
        config = MAEConfig(**extra["mae_config"])
    except (TypeError, ValueError) as err:
        raise ckpt.CheckpointError(f"{path}: stored mae_config is not a valid MAEConfig ({err})") from None
    ckpt.check_params(params, init_mae_params(config, seed=0), source=path)
    xp = get_backend(backend)
    return {k: host_to(xp, v, v.dtype.name) for k, v in params.items()}, config, extra


def probe_accuracies(params, config: MAEConfig, split, *, pool="mean", C=1.0):
    """Linear probe (logistic regression) on frozen encoder features and on raw
    pixels of the same split: ``{"features": {...}, "pixels": {...}}``."""
    t0 = time.perf_counter()
    f_train = encoder_features(params, config, split.x_train, pool=pool)
    f_test = encoder_features(params, config, split.x_test, pool=pool)
    features = linear_probe(f_train, split.y_train, f_test, split.y_test, C=C)
    features.update(pool=pool, dim=int(f_train.shape[1]), time_s=time.perf_counter() - t0)
    t0 = time.perf_counter()
    pixels = linear_probe(split.x_train, split.y_train, split.x_test, split.y_test, C=C)
    pixels.update(dim=int(split.x_train[0].size), time_s=time.perf_counter() - t0)
    return {"features": features, "pixels": pixels, "C": C}


def plot_mae_curves(history, path, *, title="CRATE-MAE"):
    """Training loss and test masked-patch MSE per epoch, with the baseline."""
    from minicrate.measure.plotting import _figure, _save

    epochs = [h["epoch"] for h in history]
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train (random masks)")
    ax.plot(epochs, [h["test_mse"] for h in history], "s-", ms=3, label="test (fixed masks)")
    ax.axhline(history[-1]["baseline_mse"], color="grey", ls="--", label="mean-patch baseline (test)")
    ax.axhline(0.5 * history[-1]["baseline_mse"], color="grey", ls=":", label="0.5 × baseline")
    ax.set(xlabel="epoch", ylabel="masked-patch MSE (standardised pixels)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def train_mae(model_config: MAEConfig, train_config, out_dir, *, resume=False, progress=True,
              handle_signals=False, stop_after_steps=None, probe=True, log=print):
    """Train (or resume) CRATE-MAE on a bundled data set; write the run directory.

    Each step: a batch (order a function of (seed, epoch)), its masks
    (:func:`random_masking` with keys (epoch, image index)), the masked-patch
    MSE and its gradient by :func:`mae_loss_and_grads`, optional global-norm
    clipping, one optimiser step (warm-up + cosine learning rate).  After
    each epoch: the test masked-patch MSE on fixed masks, a checkpoint and
    ``metrics.json``.  At the end (``probe``): the linear probe on encoder
    features vs pixels.

    Args:
        model_config: :class:`MAEConfig`.
        train_config: :class:`minicrate.training.classifier.TrainConfig` (its ``shift`` is
            the random-shift augmentation; 0 = off).
        out_dir: the run directory.
        resume, progress, handle_signals, stop_after_steps, log: as in
            :func:`minicrate.training.classifier.train`.
        probe: run the linear probe at the end.

    Returns:
        dict: ``params``, ``history``, ``test_mse``, ``baseline_mse``,
        ``probe``, ``wall_time_s``, ``steps``, ``status``.
    """
    import numpy as np

    from minicrate.core import checkpoint as ckpt
    from minicrate.core.validate import finite_checks
    from minicrate.data.augment import batch_rng, random_shift
    from minicrate.training.classifier import (
        CHECKPOINT,
        CURVES,
        METRICS,
        TrainConfig,
        TrainingDiverged,
        TrainingInterrupted,
        _check_resumable,
        _progress_factory,
        _Signals,
        _write_json,
    )
    from minicrate.training.optim import clip_by_global_norm, make_optimizer
    from minicrate.training.schedule import warmup_cosine

    if not isinstance(model_config, MAEConfig):
        raise TypeError(f"model_config must be an MAEConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    tc, mc = train_config, model_config
    split = load_split(tc.data, mc, test_size=tc.test_size, seed=tc.split_seed)
    os.makedirs(out_dir, exist_ok=True)
    keep_freed_memory()  # the run owns this process: reuse freed arrays, no page faults
    ck_file = os.path.join(out_dir, CHECKPOINT)
    xp = get_backend(tc.backend)
    n_train = len(split.x_train)
    steps_per_epoch = -(-n_train // tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    warmup_steps = int(round(tc.warmup_epochs * steps_per_epoch))
    background = (0.0 - split.mean) / split.std
    eval_seed = tc.split_seed  # fixed test masks: keys = test index, whatever the training seed
    baseline = mean_patch_baseline(split.x_train, mc.patch_size)
    baseline_mse = baseline_masked_mse(baseline, split.x_test, mc, seed=eval_seed)

    params = init_mae_params(mc, seed=tc.seed, backend=xp)
    optimizer = make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay)
    position = {"epoch": 0, "batch": 0, "step": 0}
    running = {"loss_sum": 0.0, "seen": 0}
    history, wall_before, probe_result = [], 0.0, None
    if resume:
        if not os.path.exists(ck_file):
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_file!r}")
        saved, saved_config, extra = load_mae_run(ck_file)
        if saved_config != mc:
            ckpt.check_config(dataclasses.asdict(saved_config), dataclasses.asdict(mc), source=ck_file)
        _check_resumable(extra.get("train_config", {}), tc, ck_file)
        params = {k: host_to(xp, to_numpy(v), to_numpy(v).dtype.name) for k, v in saved.items()}
        optimizer.load_state_dict(extra["optimizer"], like=params)
        position = {k: int(extra["position"][k]) for k in ("epoch", "batch", "step")}
        running = dict(extra["running"])
        history = list(extra["history"])
        wall_before = float(extra["wall_time_s"])
        log(f"resumed {ck_file} at step {position['step']}")

    t0 = time.perf_counter()

    def wall():
        return wall_before + (time.perf_counter() - t0)

    def save_state(status):
        save_mae_checkpoint(ck_file, params, mc, extra={
            "train_config": dataclasses.asdict(tc), "optimizer": optimizer.state_dict(),
            "position": dict(position), "running": dict(running), "history": history,
            "wall_time_s": wall(), "status": status})

    def write_metrics(status, message=None):
        last = history[-1] if history else {}
        metrics = {
            "status": status, "message": message, "kind": "crate-mae",
            "model_config": dataclasses.asdict(mc), "train_config": dataclasses.asdict(tc),
            "param_count": mae_param_count(mc), "n_train": n_train, "n_test": int(len(split.x_test)),
            "mask_ratio": mc.mask_ratio,
            "masked_per_image": mc.num_patches - num_visible(mc.num_patches, mc.mask_ratio),
            "num_patches": mc.num_patches, "steps": position["step"], "steps_per_epoch": steps_per_epoch,
            "wall_time_s": wall(), "history": history,
            "test_masked_mse": last.get("test_mse"), "baseline_masked_mse": baseline_mse,
            "mse_over_baseline": (last["test_mse"] / baseline_mse) if last else None,
            "linear_probe": probe_result,
        }
        _write_json(os.path.join(out_dir, METRICS), metrics)
        return metrics

    def plot():
        if history:
            plot_mae_curves(history, os.path.join(out_dir, CURVES),
                            title=f"CRATE-MAE on {tc.data} ({mae_param_count(mc):,} parameters)")

    def stopped(signals):
        why = f"signal {signals.received}" if signals.received else "stop_after_steps"
        message = f"stopped by {why} after step {position['step']}; checkpoint saved, continue with --resume"
        metrics = write_metrics("interrupted", message)
        plot()
        if signals.received:
            raise TrainingInterrupted(message)
        log(message)
        return {"params": params, "history": history, "test_mse": metrics["test_masked_mse"],
                "baseline_mse": baseline_mse, "probe": None, "wall_time_s": metrics["wall_time_s"],
                "steps": position["step"], "status": "interrupted"}

    def diverged(what, bar):
        bar.close()
        kept = f"the last good checkpoint {ck_file!r} is kept" if os.path.exists(ck_file) else "no checkpoint yet"
        message = f"training stopped: {what}; {kept}. Try a lower --lr, --clip, or float64."
        write_metrics("diverged", message)
        plot()
        raise TrainingDiverged(message)

    bar_factory = _progress_factory(progress)
    with _Signals(handle_signals) as signals, finite_checks(False):
        while position["epoch"] < tc.epochs:
            epoch = position["epoch"]
            epoch_start = time.perf_counter()
            stop = False
            order = np.random.default_rng([tc.seed, epoch]).permutation(n_train)
            bar = bar_factory(total=steps_per_epoch, initial=position["batch"], desc=f"epoch {epoch + 1}/{tc.epochs}")
            while position["batch"] < steps_per_epoch:
                b = position["batch"]
                idx = order[b * tc.batch_size: (b + 1) * tc.batch_size]
                x = split.x_train[idx]
                if tc.shift:
                    x = random_shift(x, tc.shift, batch_rng(tc.seed, epoch, b), fill=background)
                keys = np.stack([np.full(len(idx), epoch), idx], axis=1)
                mask = random_masking(keys, mc.num_patches, mc.mask_ratio, seed=tc.seed)
                lr = warmup_cosine(position["step"], total_steps=total_steps, warmup_steps=warmup_steps,
                                   base_lr=tc.lr, min_lr=tc.min_lr)
                loss, grads, _ = mae_loss_and_grads(params, host_to(xp, x, mc.dtype), mask, mc, fast=True)
                where = f"step {position['step'] + 1} (epoch {epoch + 1}, batch {b + 1}/{steps_per_epoch})"
                if not math.isfinite(loss):
                    diverged(f"loss is {loss} at {where}", bar)
                if tc.clip is not None:
                    grads, gnorm = clip_by_global_norm(grads, tc.clip)
                    if not math.isfinite(gnorm):
                        diverged(f"gradient norm is {gnorm} at {where}", bar)
                optimizer.step(params, grads, lr=lr)
                running["loss_sum"] += loss * len(idx)
                running["seen"] += len(idx)
                position["batch"] += 1
                position["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                stop = signals.received or (stop_after_steps is not None and position["step"] >= stop_after_steps)
                every = tc.checkpoint_every and position["step"] % tc.checkpoint_every == 0
                if (stop or every) and position["batch"] < steps_per_epoch:
                    save_state("running")
                if stop:
                    bar.close()
                    if position["batch"] >= steps_per_epoch:
                        break
                    return stopped(signals)
            bar.close()
            test_mse = evaluate_masked_mse(params, mc, split.x_test, seed=eval_seed, batch_size=tc.eval_batch_size)
            history.append({
                "epoch": epoch + 1, "step": position["step"], "lr": lr,
                "train_loss": running["loss_sum"] / running["seen"], "test_mse": test_mse,
                "baseline_mse": baseline_mse, "mse_over_baseline": test_mse / baseline_mse,
                "epoch_time_s": time.perf_counter() - epoch_start, "wall_time_s": wall(),
            })
            position.update(epoch=epoch + 1, batch=0)
            running = {"loss_sum": 0.0, "seen": 0}
            last = history[-1]
            log(f"epoch {epoch + 1:>3}/{tc.epochs}  train loss {last['train_loss']:.4f}  test masked MSE "
                f"{test_mse:.4f} ({last['mse_over_baseline']:.3f} × baseline {baseline_mse:.4f})  "
                f"({last['epoch_time_s']:.1f} s)")
            done = position["epoch"] >= tc.epochs
            save_state("completed" if done else "running")
            write_metrics("completed" if done else "running")
            if stop and not done:
                return stopped(signals)
    if probe:
        probe_result = probe_accuracies(params, mc, split)
        log(f"linear probe test accuracy: encoder features {100 * probe_result['features']['test_accuracy']:.2f}%, "
            f"raw pixels {100 * probe_result['pixels']['test_accuracy']:.2f}%")
    plot()
    metrics = write_metrics("completed")
    return {"params": params, "history": history, "test_mse": metrics["test_masked_mse"],
            "baseline_mse": baseline_mse, "probe": probe_result, "wall_time_s": metrics["wall_time_s"],
            "steps": position["step"], "status": "completed"}
