r"""The two self-distillation losses, forward and backward by hand (the book's chapter
*Learning without labels*).

Views are stacked on the first axis: the student's outputs ``S`` ``(V, B, m)`` for all
V views (the G global views first), the teacher's ``T`` ``(G, B, m)`` for the global
views.  Every (teacher view g, student view v) pair with v ≠ g is one term, so there are
:math:`P = GV - G` pairs.  The teacher is a constant: nothing flows back into it.

**DINO** (Caron et al. 2021, eq. 1 and §3.1).  The teacher's logits are centred and sharpened,
the student's softened:

.. math:: q_g = \operatorname{softmax}\big((T_g - c)/\tau_t\big),\qquad
          \log p_v = \operatorname{log\,softmax}(S_v/\tau_s),\qquad
          L = \frac1P\sum_{g}\sum_{v\ne g} \frac1B\sum_b -\langle q_{g,b}, \log p_{v,b}\rangle .

Since each :math:`q` sums to 1, :math:`\partial L/\partial S_v = \frac{1}{PB\tau_s}\sum_{g\ne v}(p_v - q_g)`.
The centre c is an exponential moving average of the teacher's batch mean (updated by the
training task after the step).

**SimDINO** (Wu et al. 2025).  Outputs are unit vectors; the loss pulls each student view
to each other view's teacher feature and pushes the global views' coding rate up:

.. math:: L = \frac1P\sum_g\sum_{v\ne g}\frac1B\sum_b \tfrac12\lVert S_{v,b} - T_{g,b}\rVert^2
          \;-\; \gamma\,\frac1G\sum_{g} R_\epsilon(S_g),\qquad
          R_\epsilon(Z) = \tfrac12\log\det\Big(I + \frac{m}{B\epsilon^2}Z^\top Z\Big),

:math:`\partial L/\partial S_v = \frac{1}{PB}\sum_{g\ne v}(S_v - T_g) - \frac{\gamma}{G}\nabla R_\epsilon(S_v)`
(the second term for global v only), with :math:`\nabla R_\epsilon` from
:func:`minicrate.objective.rates.coding_rate_grad`.  On the sphere
:math:`\tfrac12\lVert s - t\rVert^2 = 1 - \langle s, t\rangle`, the released code's cosine form.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import check_array, check_cache, check_positive, check_same_kind
from minicrate.objective.rates import coding_rate, coding_rate_grad

# SimDINO's released code: ε² = 0.5 (MCRLoss(eps=0.5) is ε²).
SIMDINO_EPS = math.sqrt(0.5)


def simdino_gamma(width, batch):
    r"""The released SimDINO code's balance :math:`\gamma = (m + B)/(mB)` for features of
    width m and a batch of B images (a heuristic its authors invite one to tune)."""
    return (width + batch) / (width * batch)


def _check_views(S, T):
    check_array(S, "student", ndim=3)
    check_array(T, "teacher", ndim=3)
    check_same_kind(student=S, teacher=T)
    V, B, m = S.shape
    G = T.shape[0]
    if tuple(T.shape[1:]) != (B, m) or not 1 <= G <= V or V < 2:
        raise ValueError(f"student (V, B, m) and teacher (G, B, m) need 1 <= G <= V, V >= 2 and the same "
                         f"B and m; got student {tuple(S.shape)}, teacher {tuple(T.shape)}")
    return V, B, m, G, G * V - G


def pair_sums(T, V):
    """For each student view v: how many teacher views it is paired with, ``(V, 1, 1)``,
    and the sum of those views, ``(V, B, m)`` (every teacher view but v's own)."""
    xp = namespace(T)
    G = T.shape[0]
    count = xp.asarray([G - 1.0] * G + [float(G)] * (V - G), dtype=T.dtype, device=device_of(T))
    own = xp.concat([T, xp.zeros((V - G, *T.shape[1:]), dtype=T.dtype, device=device_of(T))], axis=0)
    return xp.reshape(count, (V, 1, 1)), xp.sum(T, axis=0)[None, ...] - own


def _log_softmax(X):
    xp = namespace(X)
    shifted = X - xp.max(X, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def dino_loss_forward(student, teacher, center, *, student_temp=0.1, teacher_temp=0.04):
    """DINO's cross-entropy over view pairs.

    Args:
        student: ``(V, B, K)`` logits; teacher: ``(G, B, K)`` logits (constants); center ``(K,)``.
        student_temp, teacher_temp: τ_s and τ_t (the teacher's lower: sharpening).
    Returns:
        ``(loss, cache)``: loss a 0-d array.
    """
    V, B, K, G, P = _check_views(student, teacher)
    check_array(center, "center", shape=(K,), ndim=1)
    ts, tt = check_positive(student_temp, "student_temp"), check_positive(teacher_temp, "teacher_temp")
    xp = namespace(student)
    q = xp.exp(_log_softmax((teacher - center) / tt))  # (G, B, K)
    logp = _log_softmax(student / ts)  # (V, B, K)
    # sum over g of <q_g, log p_v>, minus the g = v terms
    cross = xp.sum(xp.sum(q, axis=0)[None, ...] * logp, axis=-1)  # (V, B)
    same = xp.sum(q * logp[:G, ...], axis=-1)  # (G, B)
    loss = -(xp.sum(cross) - xp.sum(same)) / (P * B)
    return loss, {"q": q, "p": xp.exp(logp), "tau": ts, "P": P}


def dino_loss_backward(dloss, cache):
    """∂L/∂student ``(V, B, K)`` (the teacher gets none)."""
    check_cache(cache, "dino_loss_forward", keys=("q", "p", "tau", "P"))
    q, p = cache["q"], cache["p"]
    count, others = pair_sums(q, p.shape[0])
    return (dloss / (cache["P"] * p.shape[1] * cache["tau"])) * (count * p - others)


def simdino_loss_forward(student, teacher, *, gamma, eps=SIMDINO_EPS):
    """SimDINO's loss: mean half squared distance over view pairs − γ · mean coding rate of the
    student's global views.

    Args:
        student: ``(V, B, m)`` unit vectors; teacher: ``(G, B, m)`` unit vectors (constants).
        gamma: γ ≥ 0 (0: no coding-rate term, and the features may collapse).
        eps: ε of the coding rate.
    Returns:
        ``(loss, cache)``: loss a 0-d array; the cache also holds the two terms.
    """
    V, B, m, G, P = _check_views(student, teacher)
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    xp = namespace(student)
    count, others = pair_sums(teacher, V)
    # sum_v sum_{g != v} |s_v - t_g|^2 = sum_v (count_v |s_v|^2 - 2 <s_v, others_v>) + (V - 1) sum_g |t_g|^2
    squares = xp.sum(count * student * student) - 2 * xp.sum(student * others)
    distance = (squares + (V - 1) * xp.sum(teacher * teacher)) / (2 * P * B)
    rate = xp.mean(coding_rate(student[:G, ...], eps))
    loss = distance - gamma * rate
    return loss, {"S": student, "T": teacher, "gamma": gamma, "eps": eps, "P": P,
                  "distance": distance, "rate": rate}


def simdino_loss_backward(dloss, cache):
    """∂L/∂student ``(V, B, m)``."""
    check_cache(cache, "simdino_loss_forward", keys=("S", "T", "gamma", "eps", "P"))
    S, T, P = cache["S"], cache["T"], cache["P"]
    xp = namespace(S)
    V, B, _ = S.shape
    G = T.shape[0]
    count, others = pair_sums(T, V)
    dS = (count * S - others) / (P * B)
    if cache["gamma"]:
        drate = coding_rate_grad(S[:G, ...], cache["eps"]) * (cache["gamma"] / G)
        dS = dS - xp.concat([drate, xp.zeros_like(S[G:, ...])], axis=0)
    return dloss * dS
