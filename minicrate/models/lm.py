r"""Character-level CRATE language models: causal (GPT-style) and masked (BERT-style).

Spec ``../shared/spec/crate-math.md`` §6.4: the paper's language models use
the same CRATE layers as the vision model; the *only* change inside a layer
is the causal mask in MSSA's softmax (token i attends to tokens j <= i).
Here, tokens are characters and the whole model is, with rows as tokens,

.. math::
    Z^0 = E[x] + P_{1:N},\qquad
    Z^{\ell+1} = \operatorname{CRATE}_\ell(Z^\ell)\ (\ell = 0..L-1),\qquad
    \text{logits} = \operatorname{LN}_f(Z^L)\,W_h^\top + b_h

* ``E`` ``(V', d)``: token embedding, one row per character (``V' = V``) plus,
  for the masked model, one row for the mask symbol (``V' = V + 1``);
* ``P`` ``(context, d)``: learned positional embedding (rows 0..N-1 used);
* ``CRATE_ℓ``: :func:`minicrate.layers.encoder.encoder_layer_forward` with
  ``causal=True`` for the causal form, bidirectional for the masked form;
* ``W_h`` ``(V, d)``: the head; with ``tie_embedding`` it *is* ``E[:V]``
  (the character rows of the embedding, as in GPT-2), and its gradient is
  added to the embedding's.

**Causal form.**  Position t predicts character t+1 from characters 0..t;
the loss is the mean cross-entropy over all positions, in nats per character.

**Masked form.**  15 % of the input characters are replaced by the mask id
(:func:`minicrate.data.text.masked_batch`); every position sees every other one,
and the loss is the mean cross-entropy over the *masked* positions only.

Every piece is a ``*_forward``/``*_backward`` pair and the whole model's
backward is written by hand (:func:`backward`), checked by finite differences
in ``tests/test_lm.py``.  Token ids are integer arrays; host (NumPy) ids are
moved to the parameters' backend automatically.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from minicrate.core.backend import (
    asarray_like,
    device_of,
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
    check_int_array,
    check_keys,
    check_params_shapes,
    check_positive,
    check_real,
    check_same_kind,
    describe,
)
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

FORMS = ("causal", "masked")
POS_INITS = ("normal", "sinusoidal")


# ----------------------------------------------------------------------------------------
# Configuration and parameters
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class LMConfig:
    """A character language model's shape and switches.

    ``vocab_size`` counts the characters only (the masked form adds the mask
    row to the embedding itself).  The layer switches mean what they mean in
    :class:`minicrate.layers.encoder` (official-code defaults).
    """

    vocab_size: int
    form: str = "causal"
    context: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 4
    tie_embedding: bool = True
    mask_rate: float = 0.15
    eta: float = 0.1
    lam: float = 0.1
    tie_out: bool = False
    attn_scale: float | None = None
    use_layernorm: bool = True
    ln_eps: float = 1e-5
    embed_std: float = 0.02
    pos_init: str = "normal"
    dtype: str = "float32"

    def __post_init__(self):
        check_config_fields(
            self,
            ints=("vocab_size", "context", "dim", "depth", "heads"),
            nonneg=(("eta", "lam"), "embed_std"),
            positive=("ln_eps", "attn_scale"),
            optional=("attn_scale",),
            open_unit=("mask_rate",),
            bools=("tie_embedding", "tie_out", "use_layernorm"),
            choices={"form": FORMS, "pos_init": POS_INITS},
        )
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @property
    def causal(self) -> bool:
        return self.form == "causal"

    @property
    def embed_rows(self) -> int:
        """Rows of the token embedding: the characters, plus the mask symbol if masked."""
        return self.vocab_size + (0 if self.causal else 1)

    @property
    def mask_id(self) -> int | None:
        return None if self.causal else self.vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> LMConfig:
        if not isinstance(data, Mapping):
            raise TypeError(f"LM config data must be a dict of fields, got {describe(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"LM config has unknown fields {unknown}")
        return cls(**data)


def _layer_init(config, seed, xp, name):
    """One layer as the official code initialises it (as :func:`minicrate.models.classifier.init_params`):
    nn.Linear weights and biases U(±1/√fan_in), D kaiming-uniform U(±√(6/d)),
    LayerNorm γ = 1, β = 0."""
    d, K = config.dim, config.heads
    p = d // K
    bound_in = 1.0 / math.sqrt(d)
    bound_out = 1.0 / math.sqrt(K * p)
    ones = xp.ones((d,), dtype=getattr(xp, name))
    zeros = xp.zeros((d,), dtype=getattr(xp, name))
    # qkv is nn.Linear(d, K·p) with weight (K·p, d); U_k is its k-th block of rows, transposed.
    qkv = random_uniform((K, p, d), seed=seed, low=-bound_in, high=bound_in, xp=xp, dtype=name)
    return {
        "ln1_gamma": ones, "ln1_beta": zeros,
        "U": xp.permute_dims(qkv, (0, 2, 1)),
        "W_out": random_uniform((d, K * p), seed=seed + 1, low=-bound_out, high=bound_out,
                                xp=xp, dtype=name),
        "b_out": random_uniform((d,), seed=seed + 2, low=-bound_out, high=bound_out, xp=xp,
                                dtype=name),
        "ln2_gamma": ones, "ln2_beta": zeros,
        "D": random_uniform((d, d), seed=seed + 3, low=-math.sqrt(6.0 / d), high=math.sqrt(6.0 / d),
                            xp=xp, dtype=name),
    }


def sinusoidal_positions(n, d, *, xp, dtype="float64", rms=1.0):
    r"""The Transformer's position code, scaled to root-mean-square ``rms``:
    :math:`P_{t,2i} = \sin(t\,\omega_i)`, :math:`P_{t,2i+1} = \cos(t\,\omega_i)`,
    :math:`\omega_i = 10000^{-2i/d}` (times :math:`\sqrt2\,\mathrm{rms}`), ``(n, d)``.

    Nearby positions get similar codes (:math:`\langle P_s, P_t\rangle` depends
    on :math:`s - t` only and is largest at 0), a locality a shared-QKV head can
    use from the first step; a random start has to learn it.

    ``xp`` is an array namespace or a backend name; ``dtype`` ``"float32"`` or ``"float64"``.
    """
    n = check_int(n, "n", minimum=1)
    d = check_int(d, "d", minimum=1)
    rms = check_positive(rms, "rms", allow_zero=True)
    xp = _namespace_arg(xp, "xp")
    dt = getattr(xp, _dtype_arg(dtype))
    half = (d + 1) // 2
    t = xp.reshape(xp.arange(n, dtype=dt), (n, 1))
    omega = xp.exp(xp.arange(half, dtype=dt) * (-2.0 * math.log(10000.0) / d))
    angles = t * xp.reshape(omega, (1, half))
    pairs = xp.stack([xp.sin(angles), xp.cos(angles)], axis=-1)  # (n, half, 2)
    return xp.reshape(pairs, (n, 2 * half))[:, :d] * (math.sqrt(2.0) * rms)


def _namespace_arg(backend, name="backend"):
    """A backend name or an array namespace -> the namespace."""
    from minicrate.core.backend import get_backend

    xp = get_backend(backend) if isinstance(backend, str) else backend
    if not (hasattr(xp, "asarray") and hasattr(xp, "float64")):
        raise TypeError(f"{name} must be a backend name or an array namespace, "
                        f"got {describe(backend)}")
    return xp


def _dtype_arg(dtype, name="dtype"):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{name} must be 'float32' or 'float64', got {dtype!r}")
    return dtype


def init_params(config: LMConfig, seed=0, backend="numpy", dtype=None):
    """Seeded initial parameters (the same numbers on every backend).

    Keys: ``tok_embedding`` ``(V', d)``, ``pos_embedding`` ``(context, d)``,
    ``layers.<l>.<key>`` for the layer keys of :mod:`minicrate.layers.encoder`,
    ``ln_f.gamma``/``ln_f.beta`` ``(d,)``, ``head.b`` ``(V,)`` and, unless the
    head is tied, ``head.W`` ``(V, d)``.  Embeddings are N(0, 0.02²) as in
    GPT-2 (``embed_std``); with ``pos_init="sinusoidal"`` the positional
    embedding *starts* from :func:`sinusoidal_positions` (same RMS) and is
    then learned like the rest.  Layers follow the official CRATE code.
    """
    check_config(config, LMConfig)
    seed = check_int(seed, "seed", minimum=0)
    xp = _namespace_arg(backend)
    name = _dtype_arg(config.dtype if dtype is None else dtype)
    dt = getattr(xp, name)
    d, V = config.dim, config.vocab_size
    params = {
        "tok_embedding": random_normal((config.embed_rows, d), seed=seed, xp=xp, dtype=name,
                                       std=config.embed_std),
        "pos_embedding": (
            sinusoidal_positions(config.context, d, xp=xp, dtype=name, rms=config.embed_std)
            if config.pos_init == "sinusoidal" else
            random_normal((config.context, d), seed=seed + 1, xp=xp, dtype=name,
                          std=config.embed_std)),
    }
    for layer in range(config.depth):
        for key, value in _layer_init(config, seed + 100 * (layer + 1), xp, name).items():
            params[f"layers.{layer}.{key}"] = value
    params["ln_f.gamma"] = xp.ones((d,), dtype=dt)
    params["ln_f.beta"] = xp.zeros((d,), dtype=dt)
    if not config.tie_embedding:
        params["head.W"] = random_normal((V, d), seed=seed + 2, xp=xp, dtype=name, std=0.02)
    params["head.b"] = xp.zeros((V,), dtype=dt)
    return params


def param_shapes(config: LMConfig) -> dict:
    """Name -> shape of every parameter :func:`init_params` makes (what
    :func:`forward` checks ``params`` against)."""
    check_config(config, LMConfig)
    d, V, K = config.dim, config.vocab_size, config.heads
    p = d // K
    shapes = {"tok_embedding": (config.embed_rows, d), "pos_embedding": (config.context, d)}
    layer = {"ln1_gamma": (d,), "ln1_beta": (d,), "U": (K, d, p), "W_out": (d, K * p),
             "b_out": (d,), "ln2_gamma": (d,), "ln2_beta": (d,), "D": (d, d)}
    for i in range(config.depth):
        shapes.update({f"layers.{i}.{k}": v for k, v in layer.items()})
    shapes.update({"ln_f.gamma": (d,), "ln_f.beta": (d,)})
    if not config.tie_embedding:
        shapes["head.W"] = (V, d)
    shapes["head.b"] = (V,)
    return shapes


def param_count(config: LMConfig) -> int:
    """Number of scalar parameters of :func:`init_params` (computed from shapes)."""
    check_config(config, LMConfig)
    d, V = config.dim, config.vocab_size
    layer = 4 * d + d * d + d * d + d + d * d  # 2 LayerNorms, U (K·d·p = d²), W_out, b_out, D
    head = (0 if config.tie_embedding else V * d) + V
    return config.embed_rows * d + config.context * d + config.depth * layer + 2 * d + head


def layer_params(params, layer):
    """The ``layers.<layer>.*`` entries as a dict keyed like :mod:`minicrate.layers.encoder`."""
    check_keys(params, ())
    layer = check_int(layer, "layer", minimum=0)
    prefix = f"layers.{layer}."
    out = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"params holds no layer {layer} (no key starts with {prefix!r})")
    return out


# ----------------------------------------------------------------------------------------
# Embedding: token + learned position
# ----------------------------------------------------------------------------------------


def _one_hot(xp, ids, n, like):
    """(M,) integer ids -> (M, n) one-hot rows with ``like``'s dtype and device."""
    classes = xp.arange(n, device=device_of(like))
    return xp.astype(xp.reshape(ids, (-1, 1)) == classes, like.dtype)


def _as_tokens(tokens, like, name="tokens"):
    """Integer ids ``(B, N)`` (host or any backend; never floats, which would be
    truncated silently) as int64 in ``like``'s namespace and device."""
    check_int_array(tokens, name, ndim=2)
    return asarray_like(tokens, like, dtype=namespace(like).int64)


def _as_weights(weights, like, B, N):
    """Loss weights ``(B, N)`` (host or any backend; bool, integer or float), finite
    and >= 0, as a ``(B·N, 1)`` column with ``like``'s namespace, dtype and device."""
    if not (hasattr(weights, "shape") and hasattr(weights, "dtype")):
        raise TypeError(f"weights must be an array (or None), got {describe(weights)}")
    if not namespace(weights).isdtype(weights.dtype, ("bool", "integral", "real floating")):
        raise TypeError(f"weights must be real numbers or booleans, got {describe(weights)}")
    if tuple(weights.shape) != (B, N):
        raise ValueError(f"weights must have the targets' shape ({B}, {N}), "
                         f"got {describe(weights)}")
    xp = namespace(like)
    w = xp.reshape(asarray_like(weights, like), (B * N, 1))
    if not bool(xp.all(xp.isfinite(w))) or not bool(xp.all(w >= 0)):
        raise ValueError(f"weights must be finite and >= 0, got {describe(weights)}")
    return w


def embed_forward(tokens, E, P):
    r"""Token plus position embedding: :math:`Z^0_{b,t} = E_{x_{b,t}} + P_t`.

    Args:
        tokens: integer ids ``(B, N)`` in ``[0, V')`` (host or backend array).
        E: token embedding ``(V', d)``.
        P: positional embedding ``(context, d)``, ``N <= context``.

    Returns:
        ``(Z0, cache)`` with Z0 ``(B, N, d)``.
    """
    check_array(E, "E", ndim=2)
    check_array(P, "P", ndim=2, shape=(None, E.shape[1]))
    check_same_kind(E=E, P=P)
    tokens = _as_tokens(tokens, E)
    xp = namespace(E)
    B, N = tokens.shape
    if N > P.shape[0]:
        raise ValueError(f"sequence of {N} tokens is longer than the context ({P.shape[0]})")
    if bool(xp.any(tokens < 0)) or bool(xp.any(tokens >= E.shape[0])):
        raise ValueError(f"token ids must lie in [0, {E.shape[0]})")
    flat = xp.reshape(tokens, (-1,))
    Z0 = xp.reshape(xp.take(E, flat, axis=0), (B, N, E.shape[1])) + P[:N, :]
    return Z0, {"flat": flat, "rows": E.shape[0], "context": P.shape[0], "like": E,
                "shape": tuple(Z0.shape)}


def embed_backward(dZ0, cache):
    r"""Backward of :func:`embed_forward`.

    A lookup's gradient is a scatter-add: row v of :math:`\bar E` sums the
    gradients of every position holding character v, written as the product
    :math:`\bar E = \mathrm{onehot}(x)^\top \bar Z^0` (the array API has no
    scatter-add).  :math:`\bar P_t = \sum_b \bar Z^0_{b,t}` for the N used
    rows and 0 for the rest.

    Returns:
        ``{"E": dE (V', d), "P": dP (context, d)}``.
    """
    check_cache(cache, "embed_forward", keys=("flat", "rows", "context", "like", "shape"))
    check_cotangent(dZ0, cache["shape"], cache["like"], name="dZ0")
    xp = namespace(dZ0)
    B, N, d = dZ0.shape
    onehot = _one_hot(xp, cache["flat"], cache["rows"], dZ0)  # (B·N, V')
    dE = xp.matrix_transpose(onehot) @ xp.reshape(dZ0, (B * N, d))
    dP = xp.sum(dZ0, axis=0)
    pad = cache["context"] - N
    if pad:
        dP = xp.concat([dP, xp.zeros((pad, d), dtype=dZ0.dtype, device=device_of(dZ0))], axis=0)
    return {"E": dE, "P": dP}


# ----------------------------------------------------------------------------------------
# Head: final LayerNorm + linear map to character logits
# ----------------------------------------------------------------------------------------


def head_forward(Z, gamma, beta, W, b, *, eps=1e-5):
    r"""Character logits :math:`\operatorname{LN}_f(Z)\,W^\top + b`.

    Args:
        Z: last layer's tokens ``(B, N, d)``.
        gamma, beta: final LayerNorm ``(d,)``.
        W: head weight ``(V, d)`` (the embedding's character rows when tied).
        b: head bias ``(V,)``.

    Returns:
        ``(logits, cache)``, logits ``(B, N, V)``.
    """
    check_array(Z, "Z", ndim=3)
    check_array(gamma, "gamma", ndim=1, shape=(Z.shape[-1],))
    check_array(beta, "beta", ndim=1, shape=(Z.shape[-1],))
    check_array(W, "W", ndim=2, shape=(None, Z.shape[-1]))
    check_array(b, "b", ndim=1, shape=(W.shape[0],))
    check_same_kind(Z=Z, gamma=gamma, beta=beta, W=W, b=b)
    X, ln = layernorm_forward(Z, gamma, beta, eps=eps)
    xp = namespace(X, W)
    logits = X @ xp.matrix_transpose(W) + b
    return logits, {"X": X, "ln": ln, "W": W, "shape": tuple(logits.shape)}


def head_backward(dlogits, cache):
    r"""Backward of :func:`head_forward`: :math:`\bar W = \sum \bar\ell^\top X`,
    :math:`\bar b = \sum \bar\ell`, :math:`\bar X = \bar\ell W`, then LN_f's backward.

    Returns:
        ``(dZ, {"gamma", "beta", "W", "b"})``.
    """
    check_cache(cache, "head_forward", keys=("X", "ln", "W", "shape"))
    X, W = cache["X"], cache["W"]
    check_cotangent(dlogits, cache["shape"], W, name="dlogits")
    xp = namespace(dlogits, W)
    V, d = W.shape
    dl2 = xp.reshape(dlogits, (-1, V))
    grads = {"W": xp.matrix_transpose(dl2) @ xp.reshape(X, (-1, d)), "b": xp.sum(dl2, axis=0)}
    dZ, g = layernorm_backward(dlogits @ W, cache["ln"])
    grads["gamma"], grads["beta"] = g["gamma"], g["beta"]
    return dZ, grads


# ----------------------------------------------------------------------------------------
# Loss: cross-entropy per character, optionally on selected positions only
# ----------------------------------------------------------------------------------------


def lm_loss_forward(logits, targets, weights=None):
    r"""Mean cross-entropy in nats per character over the selected positions.

    .. math:: L = \frac{\sum_i w_i\,(\log\sum_v e^{\ell_{iv}} - \ell_{i y_i})}{\sum_i w_i}

    with :math:`w_i = 1` everywhere for the causal model and :math:`w_i = 1`
    on masked positions (0 elsewhere) for the masked model.  No label
    smoothing (unlike the classifier's :mod:`minicrate.models.loss`): nats per
    character is the number language models report.

    Args:
        logits: ``(B, N, V)``.
        targets: integer ids ``(B, N)`` (host or backend array).
        weights: ``(B, N)`` 0/1 weights (host or backend), or ``None`` for all ones.

    Returns:
        ``(loss, cache)``, loss a 0-d array.
    """
    check_array(logits, "logits", ndim=3)
    xp = namespace(logits)
    B, N, V = logits.shape
    targets = _as_tokens(targets, logits, "targets")
    if tuple(targets.shape) != (B, N):
        raise ValueError(f"targets must have shape ({B}, {N}), got {tuple(targets.shape)}")
    if bool(xp.any(targets < 0)) or bool(xp.any(targets >= V)):
        raise ValueError(f"targets must lie in [0, {V})")
    if weights is None:
        w = xp.ones((B * N, 1), dtype=logits.dtype, device=device_of(logits))
    else:
        w = _as_weights(weights, logits, B, N)
    total = xp.sum(w)
    if float(total) <= 0:
        raise ValueError("weights select no position: at least one must be positive")
    L = xp.reshape(logits, (B * N, V))
    shifted = L - xp.max(L, axis=-1, keepdims=True)
    E = xp.exp(shifted)
    Ssum = xp.sum(E, axis=-1, keepdims=True)
    onehot = _one_hot(xp, targets, V, logits)
    nll = xp.log(Ssum) - xp.sum(shifted * onehot, axis=-1, keepdims=True)
    loss = xp.sum(w * nll) / total
    return loss, {"probs": E / Ssum, "onehot": onehot, "w": w, "total": total, "shape": (B, N, V)}


def lm_loss_backward(dloss, cache):
    r"""Backward of :func:`lm_loss_forward`:
    :math:`\partial L/\partial\ell_i
    = w_i(\mathrm{softmax}(\ell_i) - \mathrm{onehot}(y_i))/\sum_j w_j`
    (``dloss`` a finite real number, the upstream gradient of the 0-d loss)."""
    check_cache(cache, "lm_loss_forward", keys=("probs", "onehot", "w", "total", "shape"))
    dloss = check_real(dloss, "dloss")
    xp = namespace(cache["probs"])
    dL = dloss * cache["w"] * (cache["probs"] - cache["onehot"]) / cache["total"]
    return xp.reshape(dL, cache["shape"])


# ----------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------


def _head_weight(params, config):
    if config.tie_embedding:
        return params["tok_embedding"][: config.vocab_size, :]
    return params["head.W"]


def forward(params, tokens, config: LMConfig, *, fast=True):
    """Logits of every position.

    Args:
        params: from :func:`init_params`.
        tokens: integer ids ``(B, N)``, ``N <= config.context``.
        config: the :class:`LMConfig`.
        fast: run the layers with the fused :func:`minicrate.layers.fused.encoder.layer_forward`
            (same mathematics, tested equal; official form only); ``False`` runs
            the plain blocks of :mod:`minicrate.layers.encoder`.

    Returns:
        ``(logits, cache)``, logits ``(B, N, V)``: at position t the causal model
        scores character t+1, the masked model scores character t itself.
    """
    from minicrate.layers.fused import encoder as fused

    check_config(config, LMConfig)
    check_params_shapes(params, param_shapes(config))
    options = dict(scale=config.attn_scale, tie_out=config.tie_out,
                   use_layernorm=config.use_layernorm, eta=config.eta, lam=config.lam,
                   causal=config.causal, ln_eps=config.ln_eps)
    layer_forward = (fused.layer_forward if fast and fused.supports(**options)
                     else encoder_layer_forward)
    Z, emb = embed_forward(tokens, params["tok_embedding"], params["pos_embedding"])
    layers, outputs = [], []
    for layer in range(config.depth):
        Z, c = layer_forward(Z, layer_params(params, layer), **options)
        layers.append(c)
        outputs.append(Z)
    logits, head = head_forward(Z, params["ln_f.gamma"], params["ln_f.beta"],
                                _head_weight(params, config), params["head.b"], eps=config.ln_eps)
    return logits, {"embed": emb, "layers": layers, "outputs": outputs, "head": head,
                    "config": config, "keys": tuple(params)}


def backward(dlogits, cache):
    """Gradients of every parameter from the logits' gradient (same keys as params).

    Runs the pieces' backwards in reverse: head (and LN_f), the layers from
    last to first (spec §8.5), the embedding; with a tied head the head's
    weight gradient is added to the character rows of the embedding's.
    """
    from minicrate.layers.fused.encoder import FastLayerCache, layer_backward

    check_cache(cache, "forward", keys=("embed", "layers", "outputs", "head", "config", "keys"))
    config = cache["config"]
    xp = namespace(dlogits)
    grads = {}
    dZ, g = head_backward(dlogits, cache["head"])
    grads["ln_f.gamma"], grads["ln_f.beta"], grads["head.b"] = g["gamma"], g["beta"], g["b"]
    dW_head = g["W"]
    for layer in reversed(range(config.depth)):
        c = cache["layers"][layer]
        dZ, g = (layer_backward if isinstance(c, FastLayerCache) else encoder_layer_backward)(dZ, c)
        for key, value in g.items():
            grads[f"layers.{layer}.{key}"] = value
    g = embed_backward(dZ, cache["embed"])
    grads["pos_embedding"] = g["P"]
    dE = g["E"]
    if config.tie_embedding:
        extra = config.embed_rows - config.vocab_size  # the mask row gets no head gradient
        if extra:
            dW_head = xp.concat([dW_head, xp.zeros((extra, dE.shape[1]), dtype=dE.dtype,
                                                   device=device_of(dE))], axis=0)
        dE = dE + dW_head
    else:
        grads["head.W"] = dW_head
    grads["tok_embedding"] = dE
    return {k: grads[k] for k in cache["keys"]}


def loss_and_grads(params, inputs, targets, config: LMConfig, weights=None, *, fast=True):
    """One training step's loss (a float, nats/char), gradients and logits.

    Args:
        inputs: ids ``(B, N)`` the model reads.
        targets: ids ``(B, N)`` it must predict (next characters for the
            causal form; the original characters for the masked form).
        weights: ``(B, N)`` loss weights (the masked form passes its mask).
        fast: fused layers (see :func:`forward`).
    """
    logits, cache = forward(params, inputs, config, fast=fast)
    loss, lcache = lm_loss_forward(logits, targets, weights)
    grads = backward(lm_loss_backward(1.0, lcache), cache)
    return float(loss), grads, logits


def intermediates(cache):
    """Per-layer arrays for the layer-wise measurements (spec §6.1): the MSSA
    inputs LN₁(Z^ℓ) (``"mssa_inputs"``), the ISTA outputs Z^{ℓ+1}
    (``"ista_outputs"``) and the attention (``"attention"``, ``(B, K, N, N)``)."""
    layers = check_cache(cache, "forward", keys=("layers", "outputs"))["layers"]
    return {
        "mssa_inputs": [c["mssa_input"] for c in layers],
        "ista_outputs": cache["outputs"],
        "attention": [c["mssa"]["A"] for c in layers],
    }


# ----------------------------------------------------------------------------------------
# Using a trained model: sampling (causal) and filling in masks (masked)
# ----------------------------------------------------------------------------------------


def next_char_distribution(logits, *, temperature=1.0, top_k=None):
    r"""Sampling distribution from one position's logits ``(V,)``.

    :math:`p \propto \exp(\ell / T)` restricted to the ``top_k`` largest logits
    (ties at the k-th value are kept).  ``temperature`` must be > 0; greedy
    decoding is ``temperature=0`` in :func:`generate`.
    """
    check_array(logits, "logits", ndim=1)
    xp = namespace(logits)
    temperature = check_positive(temperature, "temperature")
    if top_k is not None:
        top_k = check_int(top_k, "top_k", minimum=1)
    scaled = logits / temperature
    V = scaled.shape[-1]
    if top_k is not None:
        if top_k < V:
            kth = xp.sort(scaled)[V - top_k]
            neg = xp.asarray(-xp.inf, dtype=scaled.dtype, device=device_of(scaled))
            scaled = xp.where(scaled >= kth, scaled, neg)
    shifted = xp.exp(scaled - xp.max(scaled))
    return shifted / xp.sum(shifted)


def _draw(probs, seed, step):
    """Inverse-CDF draw from host probabilities with a uniform number that depends
    only on ``(seed, step)``: the same seed gives the same text on every backend."""
    u = float(to_numpy(random_uniform((1,), seed=[int(seed), int(step)], low=0.0, high=1.0))[0])
    cdf = to_numpy(probs).astype("float64").cumsum()
    return int(min((cdf < u * cdf[-1]).sum(), cdf.size - 1))


def generate(params, config: LMConfig, vocab, prompt, length, *, temperature=1.0, top_k=None,
             seed=0):
    """Continue ``prompt`` by ``length`` characters with the causal model.

    Each step runs the model on the last ``config.context`` characters and
    draws the next one from :func:`next_char_distribution` (greedy argmax when
    ``temperature == 0``).  The random numbers are drawn on the host from
    ``seed`` and the step number, so a seed always gives the same text.

    Args:
        params, config: a causal model.
        vocab: the :class:`minicrate.data.text.Vocab` it was trained with.
        prompt: non-empty text of known characters (else ``ValueError``
            naming the unknown ones).
        length: number of characters to add.

    Returns:
        the prompt followed by the generated characters (a ``str``).
    """
    check_config(config, LMConfig)
    if not config.causal:
        raise ValueError("generate needs a causal model; a masked model fills in masks "
                         "(minicrate.models.lm.fill_masks)")
    _check_vocab(vocab, config)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {describe(prompt)}")
    if not prompt:
        raise ValueError("prompt must contain at least one character")
    length = check_int(length, "length", minimum=0)
    temperature = check_positive(temperature, "temperature", allow_zero=True)
    if top_k is not None:
        top_k = check_int(top_k, "top_k", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    check_params_shapes(params, param_shapes(config))
    ids = [int(i) for i in vocab.encode(prompt)]
    E = params["tok_embedding"]
    xp = namespace(E)
    for step in range(length):
        window = asarray_like([ids[-config.context:]], E, dtype=xp.int64)
        logits, _ = forward(params, window, config)
        last = logits[0, -1, :]
        if temperature == 0:
            ids.append(int(xp.argmax(last)))
        else:
            ids.append(_draw(next_char_distribution(last, temperature=temperature, top_k=top_k),
                             seed, step))
    return vocab.decode(ids)


def _check_vocab(vocab, config):
    """``vocab`` must be a :class:`minicrate.data.text.Vocab` of the model's size."""
    from minicrate.data.text import Vocab

    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a minicrate.data.text.Vocab, got {describe(vocab)}")
    if vocab.size != config.vocab_size:
        raise ValueError(f"vocab has {vocab.size} characters but the model's vocab_size is "
                         f"{config.vocab_size}")


def fill_masks(params, config: LMConfig, vocab, text, *, mask_char="_"):
    """Replace every ``mask_char`` in ``text`` by the masked model's most likely character.

    Returns ``(filled_text, positions)``.  ``text`` must fit the context and
    contain only known characters besides ``mask_char``.
    """
    check_config(config, LMConfig)
    if config.causal:
        raise ValueError("fill_masks needs a masked model; a causal model samples (generate)")
    _check_vocab(vocab, config)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {describe(text)}")
    if not (isinstance(mask_char, str) and len(mask_char) == 1):
        raise ValueError(f"mask_char must be one character, got {mask_char!r}")
    check_params_shapes(params, param_shapes(config))
    if len(text) > config.context:
        raise ValueError(f"text of {len(text)} characters is longer than the context "
                         f"({config.context})")
    positions = [i for i, c in enumerate(text) if c == mask_char]
    if not positions:
        raise ValueError(f"text contains no mask character {mask_char!r}")
    plain = "".join(vocab.chars[0] if c == mask_char else c for c in text)
    ids = [int(i) for i in vocab.encode(plain)]
    for i in positions:
        ids[i] = config.mask_id
    E = params["tok_embedding"]
    xp = namespace(E)
    logits, _ = forward(params, asarray_like([ids], E, dtype=xp.int64), config)
    best = to_numpy(xp.argmax(logits[0, ...], axis=-1))
    chars = list(text)
    for i in positions:
        chars[i] = vocab.chars[int(best[i])]
    return "".join(chars), positions


def layerwise(params, config: LMConfig, tokens, *, eps_sq=0.01):
    """The paper's layer-wise measurements (spec §6.1) on text windows.

    For each layer ℓ and each window (one window plays the part of one image):
    the measured compression R^c of the MSSA input LN₁(Z^ℓ) (unit-normalised
    head projections, ½ logdet(I + p/(N·eps_sq) ŴŴᵀ) summed over heads,
    :func:`minicrate.objective.rates.measured_compression_rate`) and the fraction of
    non-zero entries of the ISTA output Z^{ℓ+1}.

    Args:
        tokens: ids ``(B, N)`` (for the masked model, include mask ids if wanted).

    Returns:
        dict of lists over layers: ``rc``, ``rc_std``, ``nonzero``, ``nonzero_std``.
    """
    from minicrate.objective.rates import measured_compression_rate, nonzero_fraction

    eps_sq = check_positive(eps_sq, "eps_sq")
    _, cache = forward(params, tokens, config)
    inter = intermediates(cache)
    out = {"rc": [], "rc_std": [], "nonzero": [], "nonzero_std": []}
    for layer in range(config.depth):
        U = params[f"layers.{layer}.U"]
        rc = to_numpy(measured_compression_rate(inter["mssa_inputs"][layer], U, eps_sq=eps_sq,
                                                reduction="none")).astype("float64")
        nz = to_numpy(nonzero_fraction(inter["ista_outputs"][layer], reduction="none"))
        nz = nz.astype("float64")
        out["rc"].append(float(rc.mean()))
        out["rc_std"].append(float(rc.std()))
        out["nonzero"].append(float(nz.mean()))
        out["nonzero_std"].append(float(nz.std()))
    return out
