r"""Softmax cross-entropy with label smoothing, spec §4.1 step 7 and §8.6.

With smoothing ε_ls over C classes the target is
:math:`q = (1-\varepsilon_{ls})\,\mathrm{onehot}(y) + \varepsilon_{ls}/C` and the
loss is :math:`-\frac1B\sum_b \langle q_b, \log\mathrm{softmax}(\ell_b)\rangle`
(timm's ``LabelSmoothingCrossEntropy``; smoothing 0.1 in the official recipe).
"""

from __future__ import annotations

from minicrate.core.backend import device_of, namespace, same_device
from minicrate.core.validate import check_array, check_cache, check_positive, check_real
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
