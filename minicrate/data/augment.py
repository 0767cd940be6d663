"""Seeded data augmentation on host (NumPy) image batches.

Small vision transformers over-fit small data sets quickly; random shifts
(equivalently: pad, then take a random crop of the original size) are the
cheapest augmentation that keeps digits recognisable.  Flips are not offered:
a flipped 2 is not a 2.

Everything takes a ``numpy.random.Generator`` so the training loop can derive
one generator per (seed, epoch, batch) and a resumed run augments exactly as
an uninterrupted one.
"""

from __future__ import annotations

import numpy as np


def check_host_images(x):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        got = f"shape {x.shape}" if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"images must be a NumPy array of shape (B, C, H, W), got {got}")


def shift(x, dy, dx, *, fill=0.0):
    """Shift each image by whole pixels, filling the uncovered border.

    Args:
        x: images ``(B, C, H, W)``.
        dy, dx: integer arrays ``(B,)``; positive moves content down/right.
        fill: value of the uncovered pixels.  For standardised images pass the
            standardised value of a black pixel, ``(0 − mean)/std`` (what the
            training loop does), so the border looks like background.
    Returns:
        a new array of ``x``'s shape and dtype.
    """
    check_host_images(x)
    B, C, H, W = x.shape
    dy = np.asarray(dy, dtype=np.int64).reshape(B)
    dx = np.asarray(dx, dtype=np.int64).reshape(B)
    pad = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    if pad == 0:
        return x.copy()
    padded = np.full((B, C, H + 2 * pad, W + 2 * pad), fill, dtype=x.dtype)
    padded[:, :, pad : pad + H, pad : pad + W] = x
    # Output pixel (i, j) of image b reads padded pixel (pad + i − dy_b, pad + j − dx_b).
    rows = pad - dy[:, None] + np.arange(H)[None, :]  # (B, H)
    cols = pad - dx[:, None] + np.arange(W)[None, :]  # (B, W)
    b = np.arange(B)[:, None, None]
    out = padded.transpose(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def random_shift(x, max_shift, rng, *, fill=0.0):
    """Shift every image by independent uniform integers in [−max_shift, max_shift].

    Equivalent to torchvision's ``RandomCrop(H, padding=max_shift)`` with a
    constant fill.  ``max_shift = 0`` returns a copy.
    """
    check_host_images(x)
    if int(max_shift) != max_shift or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    B = x.shape[0]
    dy = rng.integers(-max_shift, max_shift + 1, size=B)
    dx = rng.integers(-max_shift, max_shift + 1, size=B)
    return shift(x, dy, dx, fill=fill)


def batch_rng(seed, epoch, batch):
    """The generator for one batch: a pure function of (seed, epoch, batch index)."""
    return np.random.default_rng([int(seed), int(epoch), int(batch), 0xA06])
