"""Learning-rate schedules, as plain functions of the step number.

The training loop asks for ``lr = warmup_cosine(step, ...)`` before every
update, so a resumed run (which knows its step) gets exactly the same rates as
an uninterrupted one.  The official CRATE code steps its schedule once per
*epoch* (``min((e+1)/20, ½(1+cos(πe/E)))`` in ``main.py``); minicrate steps it per
*update*, which is smoother on the small data sets used here and reduces to the
same shape when ``steps_per_epoch`` is 1.
"""

from __future__ import annotations

import math


def warmup_cosine(step, *, total_steps, warmup_steps=0, base_lr, min_lr=0.0):
    """Linear warm-up to ``base_lr``, then a cosine down to ``min_lr``.

    With s the (0-based) step, W the warm-up length and T the total::

        lr(s) = base_lr · (s+1)/W                                  for s < W
        lr(s) = min_lr + ½(base_lr − min_lr)(1 + cos(π (s−W)/(T−W)))  for s ≥ W

    so the first update already has a non-zero rate, the peak is reached at
    the end of warm-up and the rate reaches ``min_lr`` just after the last
    step.  Steps past ``total_steps`` stay at ``min_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def constant(step, *, base_lr, **_):
    """The same rate at every step."""
    return base_lr
