"""Which patches a masked autoencoder hides (:mod:`minicrate.models.mae`), on the host.

Per-image seeded random masks (:func:`random_masking`, exactly ``Np − ⌊(1 − r)·Np⌋``
masked patches per image), the all-visible mask (:func:`no_masking`) and the checks
that turn a host or backend mask into a bool array beside the data (:func:`mask_in`).
NumPy is imported locally: masks are drawn on the host so that every backend sees
the same ones.
"""

from __future__ import annotations

import math

from minicrate.core.backend import device_of, namespace, to_numpy
from minicrate.core.validate import check_int, check_plain, check_real, describe


def num_visible(num_patches, mask_ratio):
    """Patches kept per image: ⌊(1 − r)·Np⌋ as in the release (with a guard
    against float round-off, so 10 patches at r = 0.9 keep exactly one)."""
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    mask_ratio = _check_ratio(mask_ratio)
    return int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))


def _check_ratio(mask_ratio):
    if isinstance(mask_ratio, bool):
        raise TypeError(f"mask_ratio must be a real number, got {mask_ratio!r}")
    r = check_real(mask_ratio, "mask_ratio")
    if not 0 < r < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
    return r


def host_ints(values, name):
    """Host NumPy integers from a NumPy or backend integer array (never floats,
    which would be truncated silently)."""
    import numpy as np

    if not (hasattr(values, "shape") and hasattr(values, "dtype")):
        raise TypeError(f"{name} must be an integer array, got {describe(values)}")
    check_plain(values, name)
    host = to_numpy(values)
    if not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {describe(values)}")
    return host


def random_masking(keys, num_patches, mask_ratio, *, seed):
    """Per-image seeded random masks (host NumPy bool, True = masked).

    Image ``i`` masks ``Np − num_visible(Np, r)`` patches chosen uniformly at
    random by ``numpy.random.default_rng([seed, *keys[i]])``: the mask of an
    image depends only on the seed and its key, never on the batch it is in.
    Training uses keys ``(epoch, image index)`` (new masks each epoch),
    evaluation the image index alone (the same masks every time).

    Args:
        keys: ``(B,)`` or ``(B, k)`` non-negative integers.
        num_patches: Np.
        mask_ratio: r in (0, 1).
        seed: the run's seed.

    Returns:
        ``(B, Np)`` bool.
    """
    import numpy as np

    keys = host_ints(keys, "keys").astype(np.int64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.ndim != 2 or keys.size == 0 or np.any(keys < 0):
        raise ValueError(f"keys must be (B,) or (B, k) non-negative integers, B, k >= 1, "
                         f"got {describe(keys)}")
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    keep = num_visible(num_patches, mask_ratio)
    if keep == num_patches:  # the masked-patch loss would then have nothing to average
        raise ValueError(f"mask_ratio {mask_ratio!r} masks none of {num_patches} patches "
                         f"(⌊(1 − r)·{num_patches}⌋ = {num_patches} stay visible); use a larger ratio")
    mask = np.ones((len(keys), num_patches), dtype=bool)
    for i, key in enumerate(keys):
        order = np.argsort(np.random.default_rng([int(seed), *map(int, key)]).random(num_patches))
        mask[i, order[:keep]] = False
    return mask


def no_masking(batch, num_patches):
    """All patches visible: ``(B, Np)`` False (for features and the linear probe)."""
    import numpy as np

    batch = check_int(batch, "batch", minimum=1)
    num_patches = check_int(num_patches, "num_patches", minimum=1)
    return np.zeros((batch, num_patches), dtype=bool)


def mask_in(mask, like, B, Np):
    """The mask (host or any backend; bool, or integers/floats that are all 0 or 1)
    as a bool array in ``like``'s namespace and device, checked."""
    import numpy as np

    xp = namespace(like)
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
        raise TypeError(f"mask must be a bool (or 0/1) array, got {describe(mask)}")
    check_plain(mask, "mask")
    if tuple(mask.shape) != (B, Np):
        raise ValueError(f"mask must have shape (B, Np) = ({B}, {Np}), got {describe(mask)}")
    m = to_numpy(mask)
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise TypeError(f"mask must be a bool (or 0/1) array, got {describe(mask)}")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"mask must hold only 0/1 (or False/True) values, got {describe(mask)}")
    return xp.asarray(m.astype(bool), device=device_of(like))
