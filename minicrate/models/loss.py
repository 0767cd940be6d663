r"""Softmax cross-entropy with label smoothing, the official classification loss.

With smoothing ε_ls over C classes the target is
:math:`q = (1-\varepsilon_{ls})\,\mathrm{onehot}(y) + \varepsilon_{ls}/C` and the
loss is :math:`-\frac1B\sum_b \langle q_b, \log\mathrm{softmax}(\ell_b)\rangle`
(timm's ``LabelSmoothingCrossEntropy``; smoothing 0.1 in the official recipe).

The language models' per-character cross-entropy (:func:`lm_loss_forward`, no
smoothing, optional 0/1 weights) and its integer-id helpers, and the masked
autoencoders' masked-patch MSE (:func:`masked_mse_forward`), live here too.
"""

from __future__ import annotations

from minicrate.core.backend import asarray_like, device_of, namespace, same_device
from minicrate.core.validate import (
    check_array,
    check_cache,
    check_int_array,
    check_plain,
    check_positive,
    check_real,
    check_same_kind,
    describe,
)
from minicrate.models.masking import mask_in
from minicrate.ops.functional import softmax


def _targets(xp, labels, C, smoothing, like):
    classes = xp.arange(C, device=device_of(like))
    onehot = xp.astype(xp.reshape(labels, (-1, 1)) == classes, like.dtype)
    return (1.0 - smoothing) * onehot + smoothing / C


def cross_entropy_forward(logits, labels, *, smoothing=0.1):
    r"""Mean label-smoothed cross-entropy.

    Args:
        logits: ``(B, C)``.
        labels: integer class indices ``(B,)`` in the same namespace.
        smoothing: ε_ls in [0, 1).

    Returns:
        ``(loss, cache)``: loss a 0-d array.
    """
    check_array(logits, "logits", ndim=2)
    check_array(labels, "labels", floating=False)
    xp = namespace(logits, labels)
    same_device(logits, labels, names=["logits", "labels"])
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    B, C = logits.shape
    if bool(xp.any(labels < 0)) or bool(xp.any(labels >= C)):
        raise ValueError(f"labels must lie in [0, {C}) for {C} classes")
    smoothing = check_positive(smoothing, "smoothing", allow_zero=True)
    if smoothing >= 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    q = _targets(xp, labels, C, smoothing, logits)
    loss = -xp.sum(q * log_probs) / B
    return loss, (softmax(logits), q)


def cross_entropy_backward(dloss, cache):
    r""":math:`\partial L/\partial \ell = (\mathrm{softmax}(\ell) - q)/B`, times ``dloss``."""
    probs, q = check_cache(cache, "cross_entropy_forward", length=2)
    return check_real(dloss, "dloss") * (probs - q) / probs.shape[0]


# ----------------------------------------------------------------------------------------
# Language models (minicrate.models.lm): integer ids, weights and the per-character loss
# ----------------------------------------------------------------------------------------


def one_hot(xp, ids, n, like):
    """(M,) integer ids -> (M, n) one-hot rows with ``like``'s dtype and device."""
    classes = xp.arange(n, device=device_of(like))
    return xp.astype(xp.reshape(ids, (-1, 1)) == classes, like.dtype)


def as_tokens(tokens, like, name="tokens"):
    """Integer ids ``(B, N)`` (host or any backend; never floats, which would be
    truncated silently) as int64 in ``like``'s namespace and device."""
    check_int_array(tokens, name, ndim=2)
    return asarray_like(tokens, like, dtype=namespace(like).int64)


def as_weights(weights, like, B, N):
    """Loss weights ``(B, N)`` (host or any backend; bool, integer or float), finite
    and >= 0, as a ``(B·N, 1)`` column with ``like``'s namespace, dtype and device."""
    if not (hasattr(weights, "shape") and hasattr(weights, "dtype")):
        raise TypeError(f"weights must be an array (or None), got {describe(weights)}")
    check_plain(weights, "weights")
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
    targets = as_tokens(targets, logits, "targets")
    if tuple(targets.shape) != (B, N):
        raise ValueError(f"targets must have shape ({B}, {N}), got {tuple(targets.shape)}")
    if bool(xp.any(targets < 0)) or bool(xp.any(targets >= V)):
        raise ValueError(f"targets must lie in [0, {V})")
    if weights is None:
        w = xp.ones((B * N, 1), dtype=logits.dtype, device=device_of(logits))
    else:
        w = as_weights(weights, logits, B, N)
    total = xp.sum(w)
    if float(total) <= 0:
        raise ValueError("weights select no position: at least one must be positive")
    L = xp.reshape(logits, (B * N, V))
    shifted = L - xp.max(L, axis=-1, keepdims=True)
    E = xp.exp(shifted)
    Ssum = xp.sum(E, axis=-1, keepdims=True)
    onehot = one_hot(xp, targets, V, logits)
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
# Masked autoencoders (minicrate.models.mae): mean squared error on the masked patches
# ----------------------------------------------------------------------------------------


def masked_mse_forward(pred, target, mask):
    r"""Mean squared error on masked patches only (the released CRATE-MAE loss):
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
    m = xp.astype(mask_in(mask, pred, *pred.shape[:2]), pred.dtype)
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
