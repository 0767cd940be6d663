"""CRATE-MAE's configuration and parameters (:mod:`minicrate.models.mae` is the model).

:class:`MAEConfig` and its presets, the parameter shapes and their initialisation
(:func:`init_mae_params`, the release's distributions) and the fixed 2-D sin-cos
positional embedding (:func:`sincos_pos_embedding`).
"""

from __future__ import annotations

import dataclasses
import math

from minicrate.core.backend import (
    get_backend,
    random_normal,
    random_uniform,
)
from minicrate.core.validate import (
    check_config,
    check_config_fields,
    check_int,
    describe,
)
from minicrate.layers.options import LayerOptions
from minicrate.layers.transformer import transformer_layer_shapes
from minicrate.models.masking import num_visible

# ---------------------------------------------------------------------------
# configuration and parameters


@dataclasses.dataclass(frozen=True)
class MAEConfig(LayerOptions):
    """CRATE-MAE architecture; the decoder has the encoder's depth, width and heads.

    The layer switches come from :class:`~minicrate.layers.options.LayerOptions`
    (keyword-only); ``lam`` is the encoder's ISTA λ (0.5 in the release); ``tie_decoder``
    shares E ≡ D and U ≡ U with the mirror encoder layer; ``tie_out``,
    ``attn_scale=1.0`` and ``use_layernorm=False`` give the paper's layer form.
    ``head_init_std`` initialises the pixel head's weight N(0, std²) (``None``:
    xavier-uniform as released; see :func:`init_mae_params` for why we do not).
    ``out_init_gain`` scales the initial attention output maps ``W_out`` of the
    encoder and decoder (1.0: as released; see :func:`init_mae_params`).
    ``block="transformer"`` makes it a ViT-MAE of the same shape: encoder and decoder
    layers are pre-norm transformer blocks (:mod:`minicrate.layers.transformer`).
    """

    image_size: int = 28
    patch_size: int = 7
    channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mask_ratio: float = 0.75
    lam: float = dataclasses.field(default=0.5, kw_only=True)  # the release's encoder λ
    tie_decoder: bool = False
    final_ln_eps: float = 1e-6
    head_init_std: float | None = 0.02
    out_init_gain: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self,
            ints=("image_size", "patch_size", "channels", "dim", "depth", "heads"),
            nonneg=("head_init_std",),
            positive=("final_ln_eps", "out_init_gain"),
            optional=("head_init_std",),
            open_unit=("mask_ratio",),
            bools=("tie_decoder",),
        )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        self.check_heads(self.dim, self.heads)
        if self.block == "transformer" and self.tie_decoder:
            raise ValueError("MAEConfig: tie_decoder=True ties CRATE's decoder to its encoder; the transformer "
                             "(ViT-MAE) decoder has its own blocks")
        if self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 for the 2-D sin-cos positional embedding")
        if self.num_patches - num_visible(self.num_patches, self.mask_ratio) < 1:
            raise ValueError(f"mask_ratio {self.mask_ratio} masks no patch of {self.num_patches}")

    @property
    def head_dim(self) -> int:
        """The head width p (``dim_head``, or ``dim // heads``)."""
        return self.head_width(self.dim, self.heads)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.channels



_IMAGENET = dict(image_size=224, patch_size=16, channels=3)
MAE_PRESETS = {
    # the released sizes (model/crate_ae/crate_ae.py)
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
    if c.block == "transformer":
        return transformer_layer_shapes(d, K, p, c.mlp_hidden(d), project_out=c.project_out)
    shapes = {"U": (K, d, p), "D": (d, d)}
    if not c.tie_out and c.project_out:
        shapes.update(W_out=(d, K * p), b_out=(d,))
    if c.use_layernorm:
        shapes.update({k: (d,) for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")})
    return shapes


def _decoder_layer_shapes(c: MAEConfig):
    if c.block == "transformer":
        return _encoder_layer_shapes(c)
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
            elif key in ("W_qkv", "W1", "W2"):  # the transformer's maps (MAE's xavier for every nn.Linear)
                out[key] = xavier(shape, shape[1], shape[0])
            elif key.endswith("gamma"):
                out[key] = ones(d)
            else:  # biases, LayerNorm betas
                out[key] = zeros(shape[0])
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
