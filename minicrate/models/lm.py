r"""Character-level CRATE language models: causal (GPT-style) and masked (BERT-style).

The JMLR paper's language models (Yu et al. 2024) use
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
backward is written by hand (:func:`backward`), checked by finite differences in
``tests/test_lm.py``.  Token ids are integer arrays; host ids move to the parameters' backend.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from minicrate.core.backend import (
    device_of,
    namespace,
    random_normal,
    random_uniform,
)
from minicrate.core.validate import (
    check_cache,
    check_config,
    check_config_fields,
    check_int,
    check_params_shapes,
    check_positive,
    describe,
)
from minicrate.layers.options import LayerOptions
from minicrate.layers.transformer import transformer_layer_shapes
from minicrate.models.embedding import embed_backward, embed_forward, head_backward, head_forward
from minicrate.models.loss import lm_loss_backward, lm_loss_forward
from minicrate.models.stack import (  # noqa: F401  (layer_params re-exported: lm.layer_params)
    encoder_stack_backward,
    encoder_stack_forward,
    layer_params,
    layer_readouts,
)

FORMS = ("causal", "masked")
POS_INITS = ("normal", "sinusoidal")


# ----------------------------------------------------------------------------------------
# Configuration and parameters
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LMConfig(LayerOptions):
    """A character language model's shape and switches.

    ``vocab_size`` counts the characters only (the masked form adds the mask
    row to the embedding itself).  The layer switches come from
    :class:`~minicrate.layers.options.LayerOptions` (keyword-only,
    official-code defaults); ``block="transformer"`` makes the causal form a GPT and
    the masked form a BERT (pre-norm transformer blocks,
    :mod:`minicrate.layers.transformer`), everything else unchanged.
    """

    vocab_size: int
    form: str = "causal"
    context: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 4
    tie_embedding: bool = True
    mask_rate: float = 0.15
    embed_std: float = 0.02
    pos_init: str = "normal"
    dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self,
            ints=("vocab_size", "context", "dim", "depth", "heads"),
            nonneg=("embed_std",),
            open_unit=("mask_rate",),
            bools=("tie_embedding",),
            choices={"form": FORMS, "pos_init": POS_INITS},
        )
        if self.dim_head is None and self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        self.check_heads(self.dim, self.heads)

    @property
    def head_dim(self) -> int:
        """The head width p (``dim_head``, or ``dim // heads``)."""
        return self.head_width(self.dim, self.heads)

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
    LayerNorm γ = 1, β = 0.  A transformer block: every nn.Linear U(±1/√fan_in) the same way."""
    if config.block == "transformer":
        return _transformer_init(config, seed, xp, name)
    d, K = config.dim, config.heads
    p = config.head_dim
    bound_in = 1.0 / math.sqrt(d)
    bound_out = 1.0 / math.sqrt(K * p)
    ones = xp.ones((d,), dtype=getattr(xp, name))
    zeros = xp.zeros((d,), dtype=getattr(xp, name))
    # qkv is nn.Linear(d, K·p) with weight (K·p, d); U_k is its k-th block of rows, transposed.
    qkv = random_uniform((K, p, d), seed=seed, low=-bound_in, high=bound_in, xp=xp, dtype=name)
    layer = {
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
    if not config.project_out:
        del layer["W_out"], layer["b_out"]
    return layer


def _layer_shapes(config):
    d, K, p = config.dim, config.heads, config.head_dim
    if config.block == "transformer":
        return transformer_layer_shapes(d, K, p, config.mlp_hidden(d), project_out=config.project_out)
    shapes = {"ln1_gamma": (d,), "ln1_beta": (d,), "U": (K, d, p), "W_out": (d, K * p),
              "b_out": (d,), "ln2_gamma": (d,), "ln2_beta": (d,), "D": (d, d)}
    if not config.project_out:
        del shapes["W_out"], shapes["b_out"]
    return shapes


def _transformer_init(config, seed, xp, name):
    """nn.Linear's default U(±1/√fan_in) for every map and bias of a block; LayerNorm 1, 0."""
    shapes, layer = _layer_shapes(config), {}
    for i, (key, shape) in enumerate(shapes.items()):
        if key.startswith("ln"):
            layer[key] = (xp.ones if key.endswith("gamma") else xp.zeros)(shape, dtype=getattr(xp, name))
        else:  # a weight (out, in) has fan-in `in`; a bias that of its weight
            bound = 1.0 / math.sqrt(shapes[key if key.startswith("W") else "W" + key[1:]][1])
            layer[key] = random_uniform(shape, seed=seed + i, low=-bound, high=bound, xp=xp, dtype=name)
    return layer


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
    d, V = config.dim, config.vocab_size
    shapes = {"tok_embedding": (config.embed_rows, d), "pos_embedding": (config.context, d)}
    layer = _layer_shapes(config)
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
    return sum(math.prod(s) for s in param_shapes(config).values())


# ----------------------------------------------------------------------------------------
# The whole model (embedding and head: minicrate.models.embedding; loss: minicrate.models.loss)
# ----------------------------------------------------------------------------------------


def _head_weight(params, config):
    if config.tie_embedding:
        return params["tok_embedding"][: config.vocab_size, :]
    return params["head.W"]


def forward(params, tokens, config: LMConfig, *, fast=True, keep_cache=True):
    """Logits of every position (``keep_cache=False``: the inference path, cache ``None``).

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
    check_config(config, LMConfig)
    check_params_shapes(params, param_shapes(config))
    Z, emb = embed_forward(tokens, params["tok_embedding"], params["pos_embedding"])
    Z, layers, outputs = encoder_stack_forward(Z, params, config.depth, config.layer_options(causal=config.causal),
                                               fast=fast, keep_cache=keep_cache)
    logits, head = head_forward(Z, params["ln_f.gamma"], params["ln_f.beta"],
                                _head_weight(params, config), params["head.b"], eps=config.ln_eps)
    if not keep_cache:
        return logits, None
    return logits, {"embed": emb, "layers": layers, "outputs": outputs, "head": head,
                    "config": config, "keys": tuple(params)}


def predict(params, tokens, config: LMConfig, *, fast=True):
    """Logits ``(B, N, V)`` without a cache: :func:`forward`'s inference path."""
    return forward(params, tokens, config, fast=fast, keep_cache=False)[0]


def backward(dlogits, cache):
    """Gradients of every parameter from the logits' gradient (same keys as params).

    Runs the pieces' backwards in reverse: head (and LN_f), the layers from
    last to first, the embedding; with a tied head the head's
    weight gradient is added to the character rows of the embedding's.
    """
    check_cache(cache, "forward", keys=("embed", "layers", "outputs", "head", "config", "keys"))
    config = cache["config"]
    xp = namespace(dlogits)
    grads = {}
    dZ, g = head_backward(dlogits, cache["head"])
    grads["ln_f.gamma"], grads["ln_f.beta"], grads["head.b"] = g["gamma"], g["beta"], g["b"]
    dW_head = g["W"]
    dZ = encoder_stack_backward(dZ, cache["layers"], grads)
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
    """Per-layer arrays for the layer-wise measurements (as the paper's figure): the MSSA
    inputs LN₁(Z^ℓ) (``"mssa_inputs"``), the ISTA outputs Z^{ℓ+1}
    (``"ista_outputs"``), the attention (``"attention"``, ``(B, K, N, N)``) and each layer's
    bases (``"U"``; the value maps for a transformer, :func:`minicrate.models.stack.layer_readouts`)."""
    layers = [layer_readouts(c) for c in check_cache(cache, "forward", keys=("layers", "outputs"))["layers"]]
    return {
        "mssa_inputs": [r["mixing_input"] for r in layers],
        "ista_outputs": cache["outputs"],
        "attention": [r["attention"] for r in layers],
        "U": [r["bases"] for r in layers],
    }

