r"""minicrate's character language model written with PyTorch autograd: ``bench_lm.py``'s reference.

The model of :mod:`minicrate.models.lm` as an ordinary eager ``torch.nn.Module``,
rows as tokens:

* :math:`Z^0 = E[x] + P_{1:N}`: an ``nn.Embedding`` (one row per character, plus
  the mask symbol's row in the masked form) and a learned positional embedding;
* ``depth`` CRATE layers, the official form of :class:`benchmarks.torch_crate.Layer`
  (LN₁ → MSSA → residual, LN₂ → three-product ISTA), whose MSSA masks the
  softmax causally in the causal form (token i attends to tokens j <= i; the
  future scores are set to −∞, as :func:`minicrate.layers.mssa.mssa_forward`
  does) and attends everywhere in the masked form;
* the final LayerNorm and the head, :math:`\operatorname{LN}_f(Z)\,W_h^\top + b_h`,
  with :math:`W_h` the embedding's character rows (tied, the default) or a matrix
  of its own;
* the loss: the mean cross-entropy in nats per character over all positions
  (causal form), or over the positions of weight 1 (masked form), as
  :func:`minicrate.models.loss.lm_loss_forward`.

Weights come from minicrate (:func:`load_minicrate_params`) and gradients go
back in minicrate's keys and shapes (:func:`grads_as_minicrate`), so both
models can be compared number by number.  The layers' weight mapping is
:mod:`benchmarks.torch_crate`'s.

torch is only a benchmark/test dependency: nothing in ``minicrate`` imports
this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_crate


class CausalAttention(torch_crate.Attention):
    """The official MSSA (:class:`benchmarks.torch_crate.Attention`) with the causal mask.

    ``future`` ``(context, context)`` is True above the diagonal (j > i): those scores
    become −∞ before the softmax, so their weights are exactly 0."""

    def __init__(self, dim, heads, dim_head, context):
        super().__init__(dim, heads, dim_head)
        future = torch.ones(context, context, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)

    def forward(self, x):
        """(B, N, d) -> (B, N, d), N <= context."""
        B, N, _ = x.shape
        w = self.qkv(x).reshape(B, N, self.heads, -1).transpose(1, 2)  # (B, K, N, p)
        dots = torch.matmul(w, w.transpose(-1, -2)) * self.scale
        attn = dots.masked_fill(self.future[:N, :N], float("-inf")).softmax(dim=-1)
        out = torch.matmul(attn, w).transpose(1, 2).reshape(B, N, -1)  # 'b h n d -> b n (h d)'
        return self.to_out(out)


class CausalLayer(torch_crate.Layer):
    """:class:`benchmarks.torch_crate.Layer` with :class:`CausalAttention` (same parameter names)."""

    def __init__(self, dim, heads, dim_head, eta, lam, ln_eps, context):
        super().__init__(dim, heads, dim_head, eta, lam, ln_eps)
        self.attn = CausalAttention(dim, heads, dim_head, context)


class TorchLM(nn.Module):
    """Character CRATE language model, official layers, eager PyTorch.

    ``forward(tokens)`` gives logits ``(B, N, V)`` of int64 ids ``(B, N)``;
    ``loss(tokens, targets, weights=None)`` the mean cross-entropy (nats/char)."""

    def __init__(self, vocab_size, *, context, dim, depth, heads, dim_head=None, causal=True,
                 tie_embedding=True, eta=0.1, lam=0.1, ln_eps=1e-5):
        super().__init__()
        p = dim_head or dim // heads
        self.vocab_size = vocab_size
        rows = vocab_size + (0 if causal else 1)  # the masked form's mask symbol
        self.tok_embedding = nn.Embedding(rows, dim)
        self.pos_embedding = nn.Parameter(torch.zeros(context, dim))

        def layer():
            if causal:
                return CausalLayer(dim, heads, p, eta, lam, ln_eps, context)
            return torch_crate.Layer(dim, heads, p, eta, lam, ln_eps)

        self.layers = nn.ModuleList(layer() for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, eps=ln_eps)
        self.head_W = None if tie_embedding else nn.Parameter(torch.zeros(vocab_size, dim))
        self.head_b = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, tokens):
        N = tokens.shape[1]
        z = self.tok_embedding(tokens) + self.pos_embedding[:N]
        for layer in self.layers:
            z = layer(z)
        W = self.tok_embedding.weight[: self.vocab_size] if self.head_W is None else self.head_W
        return F.linear(self.ln_f(z), W, self.head_b)

    def loss(self, tokens, targets, weights=None):
        """Mean cross-entropy over all positions, or over those ``weights`` ``(B, N)`` select."""
        logits = self(tokens)
        flat = logits.reshape(-1, logits.shape[-1])
        if weights is None:
            return F.cross_entropy(flat, targets.reshape(-1))
        w = weights.reshape(-1).to(logits.dtype)
        return (F.cross_entropy(flat, targets.reshape(-1), reduction="none") * w).sum() / w.sum()


def from_config(config, *, device="cpu", dtype=None):
    """A :class:`TorchLM` with the shape of a ``minicrate.models.lm.LMConfig``."""
    official = (config.block == "crate" and not config.tie_out and config.use_layernorm
                and config.attn_scale is None and config.project_out)
    if not official:
        raise ValueError("the torch reference implements the official CRATE layer only "
                         "(block='crate', tie_out=False, use_layernorm=True, attn_scale=None, "
                         "project_out=True)")
    model = TorchLM(config.vocab_size, context=config.context, dim=config.dim, depth=config.depth,
                    heads=config.heads, dim_head=config.head_dim, causal=config.causal,
                    tie_embedding=config.tie_embedding, eta=config.eta, lam=config.lam,
                    ln_eps=config.ln_eps)
    return model.to(device=device, dtype=dtype or getattr(torch, config.dtype))


# --- weight mapping ----------------------------------------------------------------------------

def weight_mapping(model):
    """Pairs (minicrate key, torch parameter name) for every parameter of ``model``; the
    layers' pairs are :func:`benchmarks.torch_crate.weight_mapping`'s."""
    pairs = [("tok_embedding", "tok_embedding.weight"), ("pos_embedding", "pos_embedding"),
             ("ln_f.gamma", "ln_f.weight"), ("ln_f.beta", "ln_f.bias"), ("head.b", "head_b")]
    if model.head_W is not None:
        pairs.append(("head.W", "head_W"))
    return pairs + [pair for pair in torch_crate.weight_mapping(model) if pair[0].startswith("layers.")]


def load_minicrate_params(model, params):
    """Copy a minicrate LM parameter dict (arrays of any backend) into ``model`` in place
    (:func:`benchmarks.torch_crate.load_minicrate_params` with this model's pairs).

    Raises ``KeyError`` naming the keys that do not match."""
    return torch_crate.load_minicrate_params(model, params, weight_mapping(model))


def grads_as_minicrate(model, params):
    """The ``.grad`` of every parameter as NumPy arrays keyed and shaped like ``params``."""
    return torch_crate.grads_as_minicrate(model, params, weight_mapping(model))
