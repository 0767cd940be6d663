r"""Self-supervised CRATE (DINO and SimDINO): the backbone's feature, the projection head,
their forward and backward by hand (the book's chapter *Learning without labels*).

Pipeline, for a batch of views ``(B, C, H, W)``::

    images ── encode (CRATE or transformer layers) ──> Z^L (B, N, d)
      ── pool (class token or mean) ── LN ──> feature f (B, d)        (k-NN, probe, attention)
      ── Linear → GELU → Linear → GELU → Linear ──> (B, b) ── ℓ2-normalise ──> z (B, b)
      SimDINO: z is the output.
      DINO:    logits = z Wᵀ with W = V/‖V‖ row-wise (weight-normalised prototypes) ──> (B, K)

Parameters: the classifier's encoder keys (``embed.*``, ``cls_token``,
``pos_embedding``, ``layers.*``), the feature norm ``head.ln_gamma``/``head.ln_beta``
and the projection head ``proj.W1, b1, W2, b2, W3, b3`` (+ ``proj.V`` for DINO).
The teacher is a second copy of the same dict (an exponential moving average,
:mod:`minicrate.training.dino`), never differentiated.
"""

from __future__ import annotations

import dataclasses

from minicrate.core.backend import device_of, get_backend, host_to, namespace, random_normal
from minicrate.core.validate import check_array, check_cache, check_config_fields, check_params_shapes
from minicrate.models.classifier import (
    CRATEConfig,
    encode,
    encode_backward,
    encoder_param_shapes,
    init_params,
    pool_tokens,
    pool_tokens_backward,
)
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.gelu import gelu, gelu_backward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward
from minicrate.ops.normalize import (
    l2_normalize_backward,
    l2_normalize_forward,
    weight_norm_backward,
    weight_norm_forward,
)

METHODS = ("simdino", "dino")


@dataclasses.dataclass(frozen=True)
class SelfSupConfig:
    """The backbone (a :class:`CRATEConfig`; ``num_classes`` unused) and the head.

    ``hidden_dim``: the projection MLP's width; ``bottleneck_dim``: the width b of the
    ℓ2-normalised output z; ``out_dim``: DINO's number of prototypes K (SimDINO has none).
    """

    backbone: CRATEConfig
    method: str = "simdino"
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    out_dim: int = 1024

    def __post_init__(self):
        if not isinstance(self.backbone, CRATEConfig):
            raise TypeError(f"backbone must be a CRATEConfig, got {type(self.backbone).__name__}")
        check_config_fields(self, ints=("hidden_dim", "bottleneck_dim", "out_dim"),
                            choices={"method": METHODS}, dtypes=None)

    @property
    def output_dim(self) -> int:
        """Width of the head's output: b for SimDINO, K for DINO."""
        return self.bottleneck_dim if self.method == "simdino" else self.out_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict` (a checkpoint's stored config)."""
        d = dict(d)
        return cls(backbone=CRATEConfig(**d.pop("backbone")), **d)


def head_shapes(config: SelfSupConfig) -> dict:
    d, h, b = config.backbone.dim, config.hidden_dim, config.bottleneck_dim
    shapes = {"proj.W1": (h, d), "proj.b1": (h,), "proj.W2": (h, h), "proj.b2": (h,),
              "proj.W3": (b, h), "proj.b3": (b,)}
    if config.method == "dino":
        shapes["proj.V"] = (config.out_dim, b)
    return shapes


def selfsup_param_shapes(config: SelfSupConfig) -> dict:
    """Every parameter's shape, by key."""
    d = config.backbone.dim
    return {**encoder_param_shapes(config.backbone), "head.ln_gamma": (d,), "head.ln_beta": (d,),
            **head_shapes(config)}


def init_selfsup_params(config: SelfSupConfig, seed=0, backend="numpy", dtype=None):
    """The backbone as the classifier initialises it (without its class head); the
    projection head's weights N(0, 0.02²) as DINO's (there truncated at 2σ), biases 0."""
    if not isinstance(config, SelfSupConfig):
        raise TypeError(f"config must be a SelfSupConfig, got {type(config).__name__}")
    xp = get_backend(backend) if isinstance(backend, str) else backend
    dtype = dtype or config.backbone.dtype
    params = init_params(config.backbone, seed=seed, backend=xp, dtype=dtype)
    del params["head.W"], params["head.b"]
    for i, (key, shape) in enumerate(head_shapes(config).items()):
        if len(shape) == 1:
            params[key] = xp.zeros(shape, dtype=getattr(xp, dtype))
        else:
            params[key] = random_normal(shape, seed=seed * 7919 + 17 + i, xp=xp, dtype=dtype, std=0.02)
    return params


def features_forward(params, images, config: CRATEConfig, *, fast=True):
    """The backbone's feature f = LN(pool(Z^L)) ``(B, d)`` and a cache.

    This is what k-NN and the linear probe read, frozen."""
    check_params_shapes(params, {"head.ln_gamma": (config.dim,), "head.ln_beta": (config.dim,)})
    Z, cache = encode(params, images, config, fast=fast)
    f, ln_cache = layernorm_forward(pool_tokens(Z, config.pool), params["head.ln_gamma"],
                                    params["head.ln_beta"], eps=config.ln_eps)
    cache.update(feature_ln=ln_cache, pool=config.pool, Z_shape=tuple(Z.shape))
    return f, cache


def features(params, images, config: CRATEConfig, *, fast=True):
    """:func:`features_forward` without a cache (the inference path): ``(B, d)``."""
    check_params_shapes(params, {"head.ln_gamma": (config.dim,), "head.ln_beta": (config.dim,)})
    Z, _ = encode(params, images, config, fast=fast, keep_cache=False)
    return layernorm_forward(pool_tokens(Z, config.pool), params["head.ln_gamma"], params["head.ln_beta"],
                             eps=config.ln_eps)[0]


def features_backward(df, cache, grads):
    """Backward of :func:`features_forward`: adds every backbone gradient to ``grads``."""
    check_cache(cache, "features_forward", keys=("feature_ln", "pool", "Z_shape", "layers"))
    dpooled, g = layernorm_backward(df, cache["feature_ln"])
    grads["head.ln_gamma"], grads["head.ln_beta"] = g["gamma"], g["beta"]
    encode_backward(pool_tokens_backward(dpooled, cache["pool"], cache["Z_shape"]), cache, grads)
    return grads


def head_forward(params, f, method):
    """Projection head on features ``(B, d)``: z ``(B, b)`` (SimDINO) or logits ``(B, K)`` (DINO)."""
    check_array(f, "f", ndim=2)
    caches = []
    h = f
    for i in (1, 2):
        pre, lin = linear_forward(h, params[f"proj.W{i}"], params[f"proj.b{i}"])
        h = gelu(pre)
        caches.append((lin, pre))
    out, lin3 = linear_forward(h, params["proj.W3"], params["proj.b3"])
    z, norm_cache = l2_normalize_forward(out)
    cache = {"mlp": caches, "lin3": lin3, "norm": norm_cache, "method": method}
    if method == "simdino":
        return z, cache
    W, wn_cache = weight_norm_forward(params["proj.V"])
    logits, proto = linear_forward(z, W)
    cache.update(wn=wn_cache, proto=proto)
    return logits, cache


def head_backward(dout, cache, grads):
    """Backward of :func:`head_forward`: adds the head's gradients to ``grads``; returns df."""
    check_cache(cache, "head_forward", keys=("mlp", "lin3", "norm", "method"))
    dz = dout
    if cache["method"] == "dino":
        dz, g = linear_backward(dout, cache["proto"])
        grads["proj.V"], _ = weight_norm_backward(g["W"], cache["wn"])
    dh, g = linear_backward(l2_normalize_backward(dz, cache["norm"]), cache["lin3"])
    grads["proj.W3"], grads["proj.b3"] = g["W"], g["b"]
    for i in (2, 1):
        lin, pre = cache["mlp"][i - 1]
        dh, g = linear_backward(gelu_backward(dh, pre), lin)
        grads[f"proj.W{i}"], grads[f"proj.b{i}"] = g["W"], g["b"]
    return dh


def selfsup_forward(params, images, config: SelfSupConfig, *, fast=True):
    """Backbone and head on a batch of views: ``(out, cache)``, out ``(B, output_dim)``."""
    f, fcache = features_forward(params, images, config.backbone, fast=fast)
    out, hcache = head_forward(params, f, config.method)
    return out, {"features": fcache, "head": hcache}


def selfsup_predict(params, images, config: SelfSupConfig, *, fast=True):
    """:func:`selfsup_forward` without a cache (the teacher's forward): ``(B, output_dim)``."""
    return head_forward(params, features(params, images, config.backbone, fast=fast), config.method)[0]


def selfsup_backward(dout, cache):
    """Gradients of every parameter given ∂L/∂out; a dict with the parameters' keys."""
    check_cache(cache, "selfsup_forward", keys=("features", "head"))
    grads = {}
    df = head_backward(dout, cache["head"], grads)
    features_backward(df, cache["features"], grads)
    return grads


def frozen_features(params, images, config: CRATEConfig, *, batch_size=500, forward=features):
    """Features of many host images, batch by batch, on the parameters' backend:
    a ``(n, d)`` array of that backend (no gradient kept).  ``forward(params, x, config)`` is
    :func:`features` unless the caller passes it split over the cores (training does)."""
    ref = params["head.ln_gamma"]
    xp = namespace(ref)
    out = []
    for start in range(0, len(images), batch_size):
        x = host_to(xp, images[start : start + batch_size], ref.dtype, device_of(ref))
        out.append(forward(params, x, config))
    return xp.concat(out, axis=0)
