r"""The official CRATE classifier written with PyTorch autograd: the benchmark's reference.

This is the architecture of the official ``model/crate.py`` (its ``Attention``,
``FeedForward`` and ``CRATE`` classes) as an ordinary eager ``torch.nn.Module``, written the way that file
writes it, so the benchmark compares minicrate's hand-written backward with
what a PyTorch user would run:

* patchify ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``, then
  LayerNorm → Linear → LayerNorm (the patch embedding);
* a learned class token prepended and a learned positional embedding added;
* ``depth`` layers :math:`Z^{\ell+1/2} = Z^\ell + \mathrm{MSSA}(\mathrm{LN}_1(Z^\ell))`,
  :math:`Z^{\ell+1} = \mathrm{ReLU}(X + \eta(XD - XD^\top D) - \eta\lambda)`
  with :math:`X = \mathrm{LN}_2(Z^{\ell+1/2})`; MSSA uses one bias-free ``qkv``
  map for query, key and value, temperature ``1/√p`` and an output Linear
  with bias; the ISTA step uses the official code's three ``F.linear`` calls;
* the head LayerNorm → Linear on the class token, and the label-smoothing
  cross-entropy (smoothing 0.1, timm's ``LabelSmoothingCrossEntropy``, which
  equals ``F.cross_entropy(..., label_smoothing=0.1)``).

Weights come from minicrate (:func:`load_minicrate_params`) and gradients go
back in minicrate's layout (:func:`grads_as_minicrate`), so both models can be
compared number by number.  Tokens are rows, as in minicrate.

torch is only a benchmark/test dependency: nothing in ``minicrate`` imports
this file.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def patchify(images, patch):
    """(B, C, H, W) -> (B, (H/P)·(W/P), P·P·C) in (row-in-patch, col-in-patch, channel) order."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


class Attention(nn.Module):
    """MSSA of the official code: ``w = qkv(x)``, ``softmax(w wᵀ/√p) w`` per head, ``to_out``."""

    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x):
        B, N, _ = x.shape
        # rearrange 'b n (h d) -> b h n d'
        w = self.qkv(x).reshape(B, N, self.heads, -1).transpose(1, 2)
        dots = torch.matmul(w, w.transpose(-1, -2)) * self.scale
        attn = dots.softmax(dim=-1)
        out = torch.matmul(attn, w)
        out = out.transpose(1, 2).reshape(B, N, -1)  # 'b h n d -> b n (h d)'
        return self.to_out(out)


class ISTA(nn.Module):
    """The official ``FeedForward``: ``relu(x + η(x D − x Dᵀ D) − ηλ)`` with three products."""

    def __init__(self, dim, eta=0.1, lam=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size = eta
        self.lambd = lam

    def forward(self, x):
        x1 = F.linear(x, self.weight, bias=None)  # x Dᵀ
        grad_1 = F.linear(x1, self.weight.t(), bias=None)  # x Dᵀ D
        grad_2 = F.linear(x, self.weight.t(), bias=None)  # x D
        grad_update = self.step_size * (grad_2 - grad_1) - self.step_size * self.lambd
        return F.relu(x + grad_update)


class Layer(nn.Module):
    def __init__(self, dim, heads, dim_head, eta, lam, ln_eps):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, heads, dim_head)
        self.ln2 = nn.LayerNorm(dim, eps=ln_eps)
        self.ista = ISTA(dim, eta, lam)

    def forward(self, z):
        z_half = self.attn(self.ln1(z)) + z
        return self.ista(self.ln2(z_half))


class TorchCRATE(nn.Module):
    """CRATE classifier, official form, eager PyTorch.  ``forward`` gives logits."""

    def __init__(self, image_size, patch_size, channels, dim, depth, heads, num_classes, *,
                 eta=0.1, lam=0.1, label_smoothing=0.1, pool="cls", ln_eps=1e-5):
        super().__init__()
        if image_size % patch_size or dim % heads:
            raise ValueError("image_size must be a multiple of patch_size and dim of heads")
        self.patch_size = patch_size
        self.pool = pool
        self.label_smoothing = label_smoothing
        patch_dim = patch_size * patch_size * channels
        num_patches = (image_size // patch_size) ** 2
        self.embed_ln_in = nn.LayerNorm(patch_dim, eps=ln_eps)
        self.embed = nn.Linear(patch_dim, dim)
        self.embed_ln_out = nn.LayerNorm(dim, eps=ln_eps)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.layers = nn.ModuleList(
            Layer(dim, heads, dim // heads, eta, lam, ln_eps) for _ in range(depth)
        )
        self.head_ln = nn.LayerNorm(dim, eps=ln_eps)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images):
        x = self.embed_ln_out(self.embed(self.embed_ln_in(patchify(images, self.patch_size))))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embedding
        for layer in self.layers:
            x = layer(x)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.head(self.head_ln(x))

    def loss(self, images, labels):
        """Mean label-smoothing cross-entropy of the batch."""
        return F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)


def from_config(config, *, device="cpu", dtype=None):
    """A :class:`TorchCRATE` with the shape of a ``minicrate.CRATEConfig``."""
    if getattr(config, "tie_out", False) or not getattr(config, "use_layernorm", True):
        raise ValueError("the torch reference implements the official form only "
                         "(tie_out=False, use_layernorm=True)")
    if getattr(config, "attn_scale", None) is not None:
        raise ValueError("the torch reference uses the official temperature 1/sqrt(p)")
    dtype = dtype or getattr(torch, config.dtype)
    model = TorchCRATE(config.image_size, config.patch_size, config.channels, config.dim,
                       config.depth, config.heads, config.num_classes, eta=config.eta,
                       lam=config.lam, label_smoothing=config.label_smoothing, pool=config.pool)
    return model.to(device=device, dtype=dtype)


# --- weight mapping ----------------------------------------------------------------------------
# minicrate key -> (torch parameter name, how to convert minicrate -> torch).  U is (K, d, p) in
# minicrate and the rows of qkv.weight (K·p, d) in torch: qkv.weight[k·p + j, i] = U[k, i, j].

def u_to_qkv(U):
    K, d, p = U.shape
    return U.transpose(0, 2, 1).reshape(K * p, d)


def qkv_to_u(W, K):
    Kp, d = W.shape
    return W.reshape(K, Kp // K, d).transpose(0, 2, 1)


def weight_mapping(model):
    """Pairs (minicrate key, torch parameter name) for every parameter of ``model``."""
    pairs = [
        ("embed.ln_in_gamma", "embed_ln_in.weight"), ("embed.ln_in_beta", "embed_ln_in.bias"),
        ("embed.W", "embed.weight"), ("embed.b", "embed.bias"),
        ("embed.ln_out_gamma", "embed_ln_out.weight"), ("embed.ln_out_beta", "embed_ln_out.bias"),
        ("cls_token", "cls_token"), ("pos_embedding", "pos_embedding"),
        ("head.ln_gamma", "head_ln.weight"), ("head.ln_beta", "head_ln.bias"),
        ("head.W", "head.weight"), ("head.b", "head.bias"),
    ]
    for i in range(len(model.layers)):
        t = f"layers.{i}."
        pairs += [
            (t + "ln1_gamma", t + "ln1.weight"), (t + "ln1_beta", t + "ln1.bias"),
            (t + "U", t + "attn.qkv.weight"),
            (t + "W_out", t + "attn.to_out.weight"), (t + "b_out", t + "attn.to_out.bias"),
            (t + "ln2_gamma", t + "ln2.weight"), (t + "ln2_beta", t + "ln2.bias"),
            (t + "D", t + "ista.weight"),
        ]
    return pairs


def load_minicrate_params(model, params, pairs=None):
    """Copy a minicrate parameter dict (arrays of any backend) into ``model`` in place.

    ``pairs``: the ``(minicrate key, torch name)`` list (default :func:`weight_mapping`'s; the
    language model's twin passes its own).  Raises ``KeyError`` naming the keys that do not
    match, so a change of minicrate's parameter names is caught instead of silently ignored.
    """
    from minicrate.core.backend import to_numpy

    pairs = weight_mapping(model) if pairs is None else pairs
    wanted = {m for m, _ in pairs}
    if set(params) != wanted:
        raise KeyError(f"parameter keys differ: only in minicrate {sorted(set(params) - wanted)}, "
                       f"only in the torch reference {sorted(wanted - set(params))}")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for mkey, tkey in pairs:
            value = to_numpy(params[mkey])
            if mkey.endswith(".U"):
                value = u_to_qkv(value)
            target = named[tkey]
            value = np.ascontiguousarray(value).reshape(tuple(target.shape))
            target.copy_(torch.from_numpy(value).to(dtype=target.dtype, device=target.device))
    return model


def grads_as_minicrate(model, params, pairs=None):
    """The ``.grad`` of every parameter as NumPy arrays keyed and shaped like ``params``
    (``pairs`` as for :func:`load_minicrate_params`)."""
    out = {}
    for mkey, tkey in (weight_mapping(model) if pairs is None else pairs):
        g = dict(model.named_parameters())[tkey].grad
        g = g.detach().cpu().numpy()
        shape = tuple(params[mkey].shape)
        if mkey.endswith(".U"):
            g = qkv_to_u(g, shape[0])
        out[mkey] = g.reshape(shape)
    return out
