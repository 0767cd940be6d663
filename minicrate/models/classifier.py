r"""The CRATE classifier: configuration, initialisation, forward and the whole
backward by hand (the book's appendix *Derivations and constants* derives the ends).

Pipeline (official code, ``model/crate.py``)::

    images (B, C, H, W) ── patchify ──> (B, Np, P·P·C)
      ── LN → Linear → LN ──> (B, Np, d) ── [cls; ·] + pos ──> Z⁰ (B, Np+1, d)
      ── L × encoder layer ──> Z^L ── pool (cls token or mean) ── LN → Linear ──> logits

Parameters live in one flat dict of arrays so optimisers and checkpoints can
treat them uniformly: ``embed.*``, ``cls_token``, ``pos_embedding``,
``layers.{i}.{ln1_gamma, ln1_beta, U, W_out, b_out, ln2_gamma, ln2_beta, D}``
and ``head.{ln_gamma, ln_beta, W, b}``.
"""

from __future__ import annotations

import dataclasses
import math

from minicrate.core.backend import backend_name, device_of, get_backend, namespace, random_normal, random_uniform
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_config_fields,
    check_cotangent,
    check_int,
    check_params_shapes,
)
from minicrate.layers.options import LayerOptions
from minicrate.layers.transformer import transformer_layer_shapes
from minicrate.models.embedding import (
    add_cls_pos_backward,
    add_cls_pos_forward,
    patch_embed_backward,
    patch_embed_forward,
    patchify,
)
from minicrate.models.loss import cross_entropy_backward, cross_entropy_forward
from minicrate.models.stack import encoder_stack_backward, encoder_stack_forward, group, layer_readouts
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward


@dataclasses.dataclass(frozen=True)
class CRATEConfig(LayerOptions):
    """Architecture and switches; field names follow the official code.

    The layer switches (``eta, lam, tie_out, attn_scale, use_layernorm, ln_eps``,
    ``dim_head, project_out``, and ``block, mlp_ratio``) come from
    :class:`~minicrate.layers.options.LayerOptions` (keyword-only);
    ``attn_scale=None`` means the official 1/√p; the paper form is
    ``tie_out=True, attn_scale=1.0, use_layernorm=False``.  ``block="transformer"``
    makes the same pipeline a ViT: every layer a pre-norm transformer block
    (:mod:`minicrate.layers.transformer`), everything else unchanged.
    """

    image_size: int = 8
    patch_size: int = 4
    channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    num_classes: int = 10
    pool: str = "cls"
    label_smoothing: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self,
            ints=("image_size", "patch_size", "channels", "dim", "depth", "heads", "num_classes"),
            unit=("label_smoothing",),
            choices={"pool": ("cls", "mean")},
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}"
            )
        self.check_heads(self.dim, self.heads)

    @property
    def head_dim(self) -> int:
        """The head width p (``dim_head``, or ``dim // heads``)."""
        return self.head_width(self.dim, self.heads)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.channels


_IMAGENET = dict(image_size=224, patch_size=16, channels=3, num_classes=1000)
PRESETS = {
    "crate_tiny": dict(dim=384, depth=12, heads=6, **_IMAGENET),
    "crate_small": dict(dim=576, depth=12, heads=12, **_IMAGENET),
    "crate_base": dict(dim=768, depth=12, heads=12, **_IMAGENET),
    "crate_large": dict(dim=1024, depth=24, heads=16, **_IMAGENET),
    # Small presets for the data that ships with minicrate (see minicrate.data.images).
    "digits": dict(image_size=8, patch_size=4, channels=1, dim=64, depth=4, heads=4,
                   num_classes=10, pool="mean"),
    "mnist": dict(image_size=28, patch_size=7, channels=1, dim=96, depth=4, heads=4,
                  num_classes=10, pool="mean"),
}


def preset(name: str, **overrides) -> CRATEConfig:
    """A named configuration (``PRESETS``), optionally with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return CRATEConfig(**{**PRESETS[name], **overrides})


def _check_config(config, cls=None):
    cls = cls or CRATEConfig
    if not isinstance(config, cls):
        raise TypeError(
            f"config must be a {cls.__name__} (see minicrate.preset), got {type(config).__name__}"
        )
    return config


def param_count(config: CRATEConfig) -> int:
    """Number of scalars: embed 2·P + P·d + d + 2d, pos (Np+1)d, cls d,
    L·(3d² + 5d) (CRATE with p = d/K; fewer with ``tie_out``/no LayerNorm; a transformer
    layer: :mod:`minicrate.layers.transformer`), head 2d + d·C + C."""
    _check_config(config)
    return sum(math.prod(s) for s in param_shapes(config).values())


def _layer_shapes(config):
    d, K, p = config.dim, config.heads, config.head_dim
    if config.block == "transformer":
        return transformer_layer_shapes(d, K, p, config.mlp_hidden(d), project_out=config.project_out)
    shapes = {"U": (K, d, p), "D": (d, d)}
    if not config.tie_out and config.project_out:
        shapes.update({"W_out": (d, K * p), "b_out": (d,)})
    if config.use_layernorm:
        shapes.update({k: (d,) for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")})
    return shapes


def encoder_param_shapes(config: CRATEConfig) -> dict:
    """The shapes :func:`encode` reads: embedding, class token, positions and layers
    (no head; a self-supervised model puts its own head on them)."""
    _check_config(config)
    d, P = config.dim, config.patch_dim
    shapes = {"embed.ln_in_gamma": (P,), "embed.ln_in_beta": (P,), "embed.W": (d, P),
              "embed.b": (d,), "embed.ln_out_gamma": (d,), "embed.ln_out_beta": (d,),
              "cls_token": (d,), "pos_embedding": (config.num_patches + 1, d)}
    for i in range(config.depth):
        shapes.update({f"layers.{i}.{k}": v for k, v in _layer_shapes(config).items()})
    return shapes


def param_shapes(config: CRATEConfig) -> dict:
    """The shape of every parameter :func:`init_params` makes, by key."""
    return {**encoder_param_shapes(config), **_head_shapes(config)}


def _head_shapes(config):  # the head's parameters (forward checks them after encode's check)
    return {"head.ln_gamma": (config.dim,), "head.ln_beta": (config.dim,),
            "head.W": (config.num_classes, config.dim), "head.b": (config.num_classes,)}


def check_params(params, config: CRATEConfig, like=None):
    """``params`` must hold every parameter of ``config`` with its shape, all
    floating and of one namespace, dtype and device (those of ``like``, the
    images, if given).  In a training loop (NaN/inf scans off) this is a quick
    attribute pass; see :func:`minicrate.core.validate.check_params_shapes`."""
    return check_params_shapes(params, param_shapes(config), images=like)


def init_params(config: CRATEConfig, seed: int = 0, backend: str = "numpy", dtype: str | None = None):
    """Parameters with the official code's initial distributions.

    ``nn.Linear`` weights and biases: U(−1/√fan_in, 1/√fan_in) (PyTorch's
    default); the ISTA dictionary D: kaiming-uniform U(−√(6/d), √(6/d)) (so
    DᵀD ≈ 2I); class token and positional embedding: N(0, 1); LayerNorm: 1, 0.
    Random numbers are drawn on the host, so one seed gives the same model on
    every backend.

    Returns:
        a flat dict name -> array (see the module docstring for the names).
    """
    _check_config(config)
    seed = check_int(seed, "seed", minimum=0)
    xp = get_backend(backend) if isinstance(backend, str) else backend
    if not hasattr(xp, "asarray"):
        raise TypeError(
            f"backend must be a backend name or an array namespace, got {type(backend).__name__}"
        )
    dtype = dtype or config.dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    d, P, C = config.dim, config.patch_dim, config.num_classes
    seeds = iter(range(seed * 100_003, seed * 100_003 + 10_000))

    def uniform(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return random_uniform(shape, seed=next(seeds), low=-bound, high=bound, xp=xp, dtype=dtype)

    ones = lambda n: xp.ones((n,), dtype=getattr(xp, dtype))
    zeros = lambda n: xp.zeros((n,), dtype=getattr(xp, dtype))
    params = {
        "embed.ln_in_gamma": ones(P), "embed.ln_in_beta": zeros(P),
        "embed.W": uniform((d, P), P), "embed.b": uniform((d,), P),
        "embed.ln_out_gamma": ones(d), "embed.ln_out_beta": zeros(d),
        "cls_token": random_normal((d,), seed=next(seeds), xp=xp, dtype=dtype),
        "pos_embedding": random_normal((config.num_patches + 1, d), seed=next(seeds), xp=xp, dtype=dtype),
    }
    for i in range(config.depth):
        for key, shape in _layer_shapes(config).items():
            name = f"layers.{i}.{key}"
            if key == "U":  # the qkv nn.Linear(d, K·p, bias=False)
                params[name] = uniform(shape, d)
            elif key == "D":
                bound = math.sqrt(6.0 / d)
                params[name] = random_uniform(shape, seed=next(seeds), low=-bound, high=bound, xp=xp, dtype=dtype)
            elif key in ("W_out", "b_out"):
                params[name] = uniform(shape, config.heads * config.head_dim)
            elif key in ("W_qkv", "b_qkv", "W1", "b1"):  # the transformer's nn.Linear(d, ·)
                params[name] = uniform(shape, d)
            elif key in ("W2", "b2"):  # nn.Linear(h, d)
                params[name] = uniform(shape, config.mlp_hidden(d))
            else:
                params[name] = ones(d) if key.endswith("gamma") else zeros(d)
    params.update({"head.ln_gamma": ones(d), "head.ln_beta": zeros(d),
                   "head.W": uniform((C, d), d), "head.b": uniform((C,), d)})
    return params


def encode(params, images, config: CRATEConfig, *, causal=False, fast=True, keep_cache=True):
    """Images -> the last layer's tokens Z^L ``(B, Np+1, d)`` and a cache.

    ``fast=True`` runs the layers with the fused :func:`minicrate.layers.fused.encoder.layer_forward`
    (same mathematics, tested equal to the plain blocks; official form only, otherwise the plain
    :func:`~minicrate.layers.encoder.encoder_layer_forward`); ``keep_cache=False``: no cache (``None``).
    """
    _check_config(config)
    check_array(images, "images", ndim=4)
    B, C, H, W = images.shape
    if (C, H, W) != (config.channels, config.image_size, config.image_size):
        raise ValueError(
            f"images must have shape (B, {config.channels}, {config.image_size}, {config.image_size}) "
            f"for this config, got {tuple(images.shape)}"
        )
    # shapes, and one backend/dtype/device for all (the head is forward's to check)
    check_params_shapes(params, encoder_param_shapes(config), images=images)
    tokens, embed_cache = patch_embed_forward(patchify(images, config.patch_size), group(params, "embed."),
                                              ln_eps=config.ln_eps)
    Z, pos_cache = add_cls_pos_forward(tokens, params["cls_token"], params["pos_embedding"])
    Z, layer_caches, _ = encoder_stack_forward(Z, params, config.depth, config.layer_options(causal=causal),
                                               fast=fast, keep_cache=keep_cache)
    if not keep_cache:
        return Z, None
    return Z, {"embed": embed_cache, "pos": pos_cache, "layers": layer_caches}


def forward(params, images, config: CRATEConfig, *, fast=True):
    """Logits of a batch of images.

    Args:
        params: from :func:`init_params`.
        images: ``(B, C, H, W)`` in the parameters' namespace and dtype.
        config: the model's :class:`CRATEConfig`.
        fast: fused encoder layers (:mod:`minicrate.layers.fused.encoder`); ``False`` runs the plain blocks.

    Returns:
        ``(logits, cache)``: logits ``(B, num_classes)``.
    """
    Z, cache = encode(params, images, config, fast=fast)
    check_params_shapes(params, _head_shapes(config), images=images)  # encode checked all but the head
    normed, ln_cache = layernorm_forward(pool_tokens(Z, config.pool), params["head.ln_gamma"],
                                         params["head.ln_beta"], eps=config.ln_eps)
    logits, lin_cache = linear_forward(normed, params["head.W"], params["head.b"])
    cache.update(head_ln=ln_cache, head_lin=lin_cache, pool=config.pool, Z_shape=tuple(Z.shape), config=config)
    return logits, cache


def predict(params, images, config: CRATEConfig, *, fast=True):
    """Logits ``(B, num_classes)`` for evaluation and forward-only commands: :func:`forward` keeping
    no cache (the inference path; each layer's work is freed once the next has its input)."""
    Z, _ = encode(params, images, config, fast=fast, keep_cache=False)
    check_params_shapes(params, _head_shapes(config), images=images)  # encode checked all but the head
    normed, _ = layernorm_forward(pool_tokens(Z, config.pool), params["head.ln_gamma"], params["head.ln_beta"],
                                  eps=config.ln_eps)
    return linear_forward(normed, params["head.W"], params["head.b"])[0]


def backward(dlogits, cache):
    """Gradients of every parameter given ∂L/∂logits ``(B, num_classes)``.

    Walks the forward in reverse: head, pooling (only the
    class token, or every token equally for mean pooling, receives
    gradient), the layers from last to first, then the embedding.

    Returns:
        a dict with exactly the keys of the parameters.
    """
    check_cache(cache, "forward", keys=("head_lin", "head_ln", "pool", "Z_shape", "layers"))
    X, W, _ = cache["head_lin"]
    check_cotangent(dlogits, (X.shape[0], W.shape[0]), W, name="dlogits")
    grads = {}
    dnormed, g = linear_backward(dlogits, cache["head_lin"])
    grads["head.W"], grads["head.b"] = g["W"], g["b"]
    dpooled, g = layernorm_backward(dnormed, cache["head_ln"])
    grads["head.ln_gamma"], grads["head.ln_beta"] = g["gamma"], g["beta"]
    encode_backward(pool_tokens_backward(dpooled, cache["pool"], cache["Z_shape"]), cache, grads)
    return grads


def pool_tokens(Z, pool):
    """``(B, N, d)`` -> ``(B, d)``: the class token (``"cls"``) or the mean of all tokens."""
    return Z[:, 0, :] if pool == "cls" else namespace(Z).mean(Z, axis=1)


def pool_tokens_backward(dpooled, pool, Z_shape):
    """Backward of :func:`pool_tokens`: only the class token, or every token equally
    (1/N each), receives the gradient."""
    xp = namespace(dpooled)
    B, N, d = Z_shape
    if pool == "cls":
        rest = xp.zeros((B, N - 1, d), dtype=dpooled.dtype, device=device_of(dpooled))
        return xp.concat([xp.reshape(dpooled, (B, 1, d)), rest], axis=1)
    return xp.broadcast_to(xp.reshape(dpooled / N, (B, 1, d)), (B, N, d))


def encode_backward(dZ, cache, grads):
    """Backward of :func:`encode`: fills ``grads`` and returns d(images patches)."""
    dZ = encoder_stack_backward(dZ, cache["layers"], grads)
    dtokens, g = add_cls_pos_backward(dZ, cache["pos"])
    grads.update(g)
    dpatches, g = patch_embed_backward(dtokens, cache["embed"])
    grads.update({f"embed.{k}": v for k, v in g.items()})
    return dpatches


def loss_and_grads(params, images, labels, config: CRATEConfig, *, fast=True):
    """Label-smoothed cross-entropy of a batch and the gradient of every parameter.

    ``fast=False`` runs the plain encoder blocks instead of the fused layer.

    Returns:
        ``(loss, grads, logits)``: loss a Python float.
    """
    logits, cache = forward(params, images, config, fast=fast)
    loss, loss_cache = cross_entropy_forward(logits, labels, smoothing=config.label_smoothing)
    grads = backward(cross_entropy_backward(1.0, loss_cache), cache)
    return float(loss), grads, logits


def intermediates(cache):
    """What the white-box measurements look at, per layer (as the paper's figure).

    Returns:
        dict with lists over layers: ``mssa_inputs`` (LN₁(Z^ℓ), ``(B, N, d)``),
        ``ista_outputs`` (Z^{ℓ+1}, the ISTA outputs, ``(B, N, d)``: their
        non-zeros give sparsity), ``attention`` (``(B, K, N, N)``) and
        ``U`` (each layer's bases).  For ``block="transformer"`` the same keys hold the
        attention inputs LN₁(Z^ℓ), the block outputs and the value maps as bases
        (:func:`minicrate.models.stack.layer_readouts`).
    """
    layers = [layer_readouts(c) for c in check_cache(cache, "forward", keys=("layers",))["layers"]]
    return {
        "mssa_inputs": [r["mixing_input"] for r in layers],
        "ista_outputs": [r["output"] for r in layers],
        "attention": [r["attention"] for r in layers],
        "U": [r["bases"] for r in layers],
    }


def describe(config: CRATEConfig, params=None) -> str:
    """One line: sizes, parameter count and (if given) the params' backend."""
    where = f", {backend_name(namespace(params['head.W']))}" if params is not None else ""
    name = "ViT" if config.block == "transformer" else "CRATE"
    return (f"{name} d={config.dim} depth={config.depth} heads={config.heads} patch={config.patch_size} "
            f"tokens={config.num_patches + 1} params={param_count(config):,}{where}")


def save(path, params, config: CRATEConfig):
    """Save a model's parameters and config to ``.npz`` (atomically; bit-exact).

    For training state (optimiser, epoch) use :func:`minicrate.core.checkpoint.save`.
    """
    from minicrate.core import checkpoint

    return checkpoint.save(path, params, config)


def load(path):
    """Load ``(params, config)`` saved by :func:`save` (NumPy arrays)."""
    from minicrate.core import checkpoint

    params, config, _ = checkpoint.load(path, config_cls=CRATEConfig)
    return params, config
