r"""LayerNorm over each token's d features (Ba et al. 2016), with its backward.

.. math:: \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}},\qquad
          y = \gamma \odot \hat x + \beta

with the *biased* variance (divide by d), as ``torch.nn.LayerNorm``.
"""

from __future__ import annotations

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_cache, check_cotangent, check_positive, check_same_kind


def layernorm_forward(X, gamma, beta, *, eps=1e-5):
    """LayerNorm of every token.

    Args:
        X: tokens, shape ``(..., d)``.
        gamma, beta: affine parameters, shape ``(d,)``.
        eps: ε_LN > 0 added to the variance (1e-5 as in the official code).

    Returns:
        ``(Y, cache)``, Y of X's shape.
    """
    check_array(X, "X", min_ndim=1)
    d = X.shape[-1]
    check_array(gamma, "gamma", shape=(d,), ndim=1)
    check_array(beta, "beta", shape=(d,), ndim=1)
    check_same_kind(X=X, gamma=gamma, beta=beta)
    eps = check_positive(eps, "eps")
    xp = namespace(X)
    mu = xp.mean(X, axis=-1, keepdims=True)
    centred = X - mu
    inv_std = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    X_hat = centred * inv_std
    return gamma * X_hat + beta, (X_hat, inv_std, gamma)


def layernorm_backward(dY, cache):
    r"""Backward of :func:`layernorm_forward`, derived in the book's *Backpropagation by hand*.

    With :math:`\hat g = \gamma\odot\bar y` and means over the d features:

    .. math:: \bar x = \frac{1}{\sqrt{\sigma^2+\epsilon}}\big(\hat g - \overline{\hat g}
              - \hat x \odot \overline{\hat g \odot \hat x}\big),\quad
              \bar\gamma = \textstyle\sum_{\text{tokens}} \bar y \odot \hat x,\quad
              \bar\beta = \textstyle\sum_{\text{tokens}} \bar y

    Returns:
        ``(dX, {"gamma": dgamma, "beta": dbeta})``.
    """
    X_hat, inv_std, gamma = check_cache(cache, "layernorm_forward", length=3)
    check_cotangent(dY, X_hat.shape, X_hat)
    xp = namespace(dY, X_hat)
    g = gamma * dY
    dX = inv_std * (
        g - xp.mean(g, axis=-1, keepdims=True) - X_hat * xp.mean(g * X_hat, axis=-1, keepdims=True)
    )
    d = dY.shape[-1]
    dgamma = xp.sum(xp.reshape(dY * X_hat, (-1, d)), axis=0)
    dbeta = xp.sum(xp.reshape(dY, (-1, d)), axis=0)
    return dX, {"gamma": dgamma, "beta": dbeta}
