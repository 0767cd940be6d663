r"""Known mistakes of a training step (tasks 9.1–9.4), built from the library's loss and optimiser.

Each builder calls :mod:`minicrate.models.loss` or :mod:`minicrate.training.optim`
with inputs changed so that the result is exactly the mistaken one:

* a wrong smoothing target is the library's loss at another smoothing (the
  target (1 − ε)·onehot + ε/(C − 1) off the true class is the library's at
  smoothing εC/(C − 1));
* a missing bias correction is the library's AdamW update at a step so far on
  that 1 − βᵗ is exactly 1; Adam + L2 is its update of the gradient g + wd·θ
  without decay; a decay not scaled by lr is its decay wd/lr;
* a wrong clipping factor min(1, c/‖g‖) is the library's clipping at
  max_norm = c.

Outputs are host NumPy arrays (float64).
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import to_numpy
from minicrate.models.loss import cross_entropy_backward, cross_entropy_forward
from minicrate.training.optim import AdamW, clip_by_global_norm, global_norm


def _host(x):
    return np.asarray(to_numpy(x), dtype=np.float64)


# --------------------------------------------------------------------------
# Cross-entropy (9.1, 9.2)
# --------------------------------------------------------------------------


def loss_at(logits, labels, smoothing):
    """The library's mean label-smoothed cross-entropy (a float64 0-d array)."""
    return _host(cross_entropy_forward(logits, labels, smoothing=smoothing)[0])


def loss_smoothed_over_others(logits, labels, smoothing):
    """Loss with the target (1 − ε)·onehot + ε/(C − 1) on the C − 1 other classes: the
    library's target at smoothing εC/(C − 1) puts ε/(C − 1) on every class, 1 − ε on the true one."""
    C = logits.shape[-1]
    return loss_at(logits, labels, smoothing * C / (C - 1))


def loss_without_one_minus(logits, labels, smoothing):
    """Loss with the target onehot + ε/C = q + ε·onehot: the reference plus ε times the unsmoothed loss."""
    return loss_at(logits, labels, smoothing) + smoothing * loss_at(logits, labels, 0.0)


def loss_unstable(logits, labels, smoothing):
    """−⟨q, log(exp ℓ / Σ exp ℓ)⟩ averaged over the batch, q the library's target: the
    exponentials of unshifted logits overflow when the logits are large."""
    _, (_, q) = cross_entropy_forward(logits, labels, smoothing=smoothing)
    L = _host(logits)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(L)
        return -np.sum(_host(q) * np.log(e / e.sum(-1, keepdims=True))) / L.shape[0]


def dlogits_at(logits, labels, dloss, smoothing):
    """The library's dlogits for the upstream gradient ``dloss`` at ``smoothing``."""
    _, cache = cross_entropy_forward(logits, labels, smoothing=smoothing)
    return _host(cross_entropy_backward(dloss, cache))


# --------------------------------------------------------------------------
# AdamW (9.3)
# --------------------------------------------------------------------------

NO_BIAS_CORRECTION_STEP = 10**6
"""A step at which βᵗ < 1e-16 for every β < 0.9999, so 1 − βᵗ rounds to exactly 1: the
library's update there is the update without bias correction."""


def adamw_update(theta, g, m, v, t, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    """Update ``t`` (counted from 1) of :class:`minicrate.training.optim.AdamW` for one
    parameter whose moments after ``t − 1`` updates are ``m, v``: returns ``(theta, m, v)``."""
    opt = AdamW(lr, betas=betas, eps=eps, weight_decay=weight_decay)
    opt.t = t - 1
    opt.state = {"m": {"w": m}, "v": {"w": v}}
    params = opt.step({"w": theta}, {"w": g})
    return params["w"], opt.state["m"]["w"], opt.state["v"]["w"]


def adam_l2(theta, g, m, v, t, *, weight_decay, **hyper):
    """Adam + L2: wd·θ added to the gradient and no decoupled decay (θ, m and v all change)."""
    return adamw_update(theta, g + weight_decay * theta, m, v, t, weight_decay=0.0, **hyper)


def adamw_decay_not_times_lr(theta, g, m, v, t, *, lr, weight_decay, **hyper):
    """θ decayed by wd·θ, not lr·wd·θ: the library's decay lr·(wd/lr)·θ."""
    return adamw_update(theta, g, m, v, t, lr=lr, weight_decay=weight_decay / lr, **hyper)


def adamw_eps_inside(theta, g, m, v, t, *, lr, betas, eps, weight_decay):
    """The library's θ with the step's denominator √v̂ + ε replaced by √(v̂ + ε)."""
    new, m1, v1 = (_host(a) for a in adamw_update(theta, g, m, v, t, lr=lr, betas=betas, eps=eps,
                                                    weight_decay=weight_decay))
    m_hat, v_hat = m1 / (1 - betas[0] ** t), v1 / (1 - betas[1] ** t)
    return new + lr * (m_hat / (np.sqrt(v_hat) + eps) - m_hat / np.sqrt(v_hat + eps))


# --------------------------------------------------------------------------
# Clipping by the global norm (9.4): each returns (clipped dict, norm)
# --------------------------------------------------------------------------


def clip_at(grads, max_norm, norm=None):
    """The library's clipping at ``max_norm`` (its factor is min(1, max_norm/‖g‖)); ``norm``,
    if given, replaces the norm it returns."""
    clipped, true_norm = clip_by_global_norm(grads, max_norm)
    return {k: _host(g) for k, g in clipped.items()}, true_norm if norm is None else norm


def clip_per_tensor(grads, max_norm):
    """Each array clipped by its own norm (the library's clipping of one array at a time)."""
    clipped = {k: _host(clip_by_global_norm({k: g}, max_norm)[0][k]) for k, g in grads.items()}
    return clipped, global_norm(grads)


def clip_always(grads, max_norm):
    """Every array scaled by max_norm/‖g‖, even when ‖g‖ <= max_norm."""
    norm = global_norm(grads)
    return {k: _host(g) * (max_norm / norm) for k, g in grads.items()}, norm


def clip_torch_style(grads, max_norm):
    """torch's ``clip_grad_norm_``: factor min(1, max_norm/(‖g‖ + 1e-6))."""
    norm = global_norm(grads)
    scale = min(1.0, max_norm / (norm + 1e-6))
    return {k: _host(g) * scale for k, g in grads.items()}, norm


def clip_squared_norm(grads, max_norm):
    """Norm Σg² and factor min(1, max_norm/Σg²) = min(1, (max_norm/‖g‖)/‖g‖)."""
    norm = global_norm(grads)
    return clip_at(grads, max_norm / norm, norm=norm**2)


def clip_inverted(grads, max_norm):
    """Factor min(1, ‖g‖/max_norm) = min(1, (‖g‖²/max_norm)/‖g‖)."""
    return clip_at(grads, global_norm(grads) ** 2 / max_norm)
