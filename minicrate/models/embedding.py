r"""From images to tokens, as ``model/crate.py`` does it (and back, for the MAE).

* :func:`patchify` cuts ``(B, C, H, W)`` images into non-overlapping P×P
  patches, each flattened in (row-in-patch, col-in-patch, channel) order as
  the official ``Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')``.
* The patch embedding (f^pre) is LayerNorm → Linear → LayerNorm.
* A learned class token is prepended and a learned positional embedding added.
"""

from __future__ import annotations

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_cotangent,
    check_int,
    check_keys,
    check_same_kind,
)
from minicrate.models.loss import as_tokens, one_hot
from minicrate.ops.functional import linear_backward, linear_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

EMBED_KEYS = ("ln_in_gamma", "ln_in_beta", "W", "b", "ln_out_gamma", "ln_out_beta")


def patchify(images, patch_size):
    """``(B, C, H, W)`` -> ``(B, (H/P)(W/P), P·P·C)`` patches (a pure reshape).

    Raises ``ValueError`` when H or W is not a multiple of ``patch_size``.
    """
    check_array(images, "images", ndim=4)
    B, C, H, W = images.shape
    P = check_int(patch_size, "patch_size", minimum=1)
    if H % P or W % P:
        raise ValueError(
            f"image size {H}x{W} must be divisible by patch_size {patch_size} "
            f"(images have shape {tuple(images.shape)})"
        )
    xp = namespace(images)
    x = xp.reshape(images, (B, C, H // P, P, W // P, P))
    x = xp.permute_dims(x, (0, 2, 4, 3, 5, 1))  # B, h, w, p1, p2, C
    return xp.reshape(x, (B, (H // P) * (W // P), P * P * C))


def unpatchify(patches, patch_size, channels, height, width):
    """Inverse of :func:`patchify`: ``(B, Np, P·P·C)`` -> ``(B, C, H, W)``."""
    check_array(patches, "patches", ndim=3)
    P = check_int(patch_size, "patch_size", minimum=1)
    C = check_int(channels, "channels", minimum=1)
    height, width = check_int(height, "height", minimum=1), check_int(width, "width", minimum=1)
    B = patches.shape[0]
    h, w = height // P, width // P
    if height % P or width % P or tuple(patches.shape[1:]) != (h * w, P * P * C):
        raise ValueError(
            f"patches must have shape (B, {h * w}, {P * P * C}) for {C}-channel "
            f"{height}x{width} images cut into {P}x{P} patches (sizes divisible by {P}), got {tuple(patches.shape)}"
        )
    xp = namespace(patches)
    x = xp.reshape(patches, (B, h, w, P, P, C))
    x = xp.permute_dims(x, (0, 5, 1, 3, 2, 4))  # B, C, h, p1, w, p2
    return xp.reshape(x, (B, C, h * P, w * P))


def patch_embed_forward(patches, params, *, ln_eps=1e-5):
    r"""LayerNorm → Linear → LayerNorm on each patch (the official ``to_patch_embedding``).

    Args:
        patches: ``(B, Np, P·P·C)``.
        params: ``ln_in_gamma, ln_in_beta`` ``(P·P·C,)``; ``W`` ``(d, P·P·C)``,
            ``b`` ``(d,)``; ``ln_out_gamma, ln_out_beta`` ``(d,)``.

    Returns:
        ``(tokens, cache)``, tokens ``(B, Np, d)``.
    """
    check_keys(params, EMBED_KEYS)
    X, c1 = layernorm_forward(patches, params["ln_in_gamma"], params["ln_in_beta"], eps=ln_eps)
    T, c2 = linear_forward(X, params["W"], params["b"])
    Y, c3 = layernorm_forward(T, params["ln_out_gamma"], params["ln_out_beta"], eps=ln_eps)
    return Y, (c1, c2, c3)


def patch_embed_backward(dY, cache):
    """Backward of :func:`patch_embed_forward` -> ``(dpatches, grads)``."""
    c1, c2, c3 = check_cache(cache, "patch_embed_forward", length=3)
    dT, g3 = layernorm_backward(dY, c3)
    dX, g2 = linear_backward(dT, c2)
    dP, g1 = layernorm_backward(dX, c1)
    grads = {"ln_in_gamma": g1["gamma"], "ln_in_beta": g1["beta"], "W": g2["W"], "b": g2["b"],
             "ln_out_gamma": g3["gamma"], "ln_out_beta": g3["beta"]}
    return dP, grads


def add_cls_pos_forward(tokens, cls_token, pos_embedding):
    r"""Prepend the class token and add the positional embedding:
    :math:`Z^0 = [z_{\text{cls}}; T] + E_{\text{pos}}`.

    Args:
        tokens: ``(B, Np, d)``.
        cls_token: ``(d,)``, or ``None`` for no class token (mean pooling
            without it, or the language models).
        pos_embedding: ``(Np + 1, d)`` (``(Np, d)`` without a class token).

    Returns:
        ``(Z, cache)``: Z ``(B, Np + 1, d)``.
    """
    check_array(tokens, "tokens", ndim=3)
    B, Np, d = tokens.shape
    if cls_token is not None:
        check_array(cls_token, "cls_token", ndim=1, shape=(d,))
    check_array(pos_embedding, "pos_embedding", ndim=2)
    check_same_kind(tokens=tokens, cls_token=cls_token, pos_embedding=pos_embedding)
    xp = namespace(tokens, pos_embedding)
    n_total = Np + (cls_token is not None)
    if tuple(pos_embedding.shape) != (n_total, d):
        raise ValueError(
            f"pos_embedding must have shape ({n_total}, {d}) for tokens of shape "
            f"{tuple(tokens.shape)}, got {tuple(pos_embedding.shape)}"
        )
    if cls_token is not None:
        cls = xp.broadcast_to(xp.reshape(cls_token, (1, 1, d)), (B, 1, d))
        tokens = xp.concat([cls, tokens], axis=1)
    Z = tokens + pos_embedding
    # Backward needs only has_cls; the shape and pos_embedding let it check dZ.
    cache = {"has_cls": cls_token is not None, "shape": tuple(Z.shape), "pos_embedding": pos_embedding}
    return Z, cache


def add_cls_pos_backward(dZ, cache):
    """Backward of :func:`add_cls_pos_forward` -> ``(dtokens, grads)``; the
    class token gets column 0's gradient summed over the batch, the positional
    embedding the token gradient summed over the batch."""
    check_cache(cache, "add_cls_pos_forward", keys=("has_cls", "shape", "pos_embedding"))
    check_cotangent(dZ, cache["shape"], cache["pos_embedding"], name="dZ")
    xp = namespace(dZ)
    has_cls = cache["has_cls"]
    grads = {"pos_embedding": xp.sum(dZ, axis=0)}
    if has_cls:
        grads["cls_token"] = xp.sum(dZ[:, 0, :], axis=0)
        return dZ[:, 1:, :], grads
    return dZ, grads


# ----------------------------------------------------------------------------------------
# Language models (minicrate.models.lm): token + learned position embedding
# ----------------------------------------------------------------------------------------


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
    tokens = as_tokens(tokens, E)
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
    onehot = one_hot(xp, cache["flat"], cache["rows"], dZ0)  # (B·N, V')
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
