r"""Multi-crop views for self-supervised training (DINO, SimDINO), on host image batches.

Each view of an image is one random *affine* resampling of it: a random resized
crop (an area fraction ``s`` of the image, aspect ratio between 3/4 and 4/3, placed
anywhere inside the image), a small rotation, then a contrast jitter.  Crop and
rotation are one map from output pixels to source points,

.. math:: p_{\text{src}} = c + R(\theta)\begin{bmatrix} u\,w_c\\ v\,h_c\end{bmatrix},
          \qquad u, v \in [-\tfrac12, \tfrac12],

sampled bilinearly (points outside the image read the background ``fill``), so a view
always has the image's own size: the model sees every view at its input size.
*Global* views cover most of the digit (DINO's large crops), *local* views a small
part; the student sees all of them, the teacher the global ones only.

Everything is drawn from a ``numpy.random.Generator``, so the training task derives
one generator per (seed, epoch, batch) and a resumed run sees the same views.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from minicrate.data.augment import check_host_images


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How views are drawn.

    ``global_scale`` / ``local_scale``: ranges of the crop's area fraction;
    ``max_rotation``: largest rotation in degrees; ``contrast``: the contrast factor
    is uniform in ``[1 - contrast, 1 + contrast]`` around the background value.
    """

    n_global: int = 2
    n_local: int = 4
    global_scale: tuple = (0.5, 1.0)
    local_scale: tuple = (0.15, 0.45)
    max_rotation: float = 15.0
    contrast: float = 0.3

    def __post_init__(self):
        if not isinstance(self.n_global, int) or self.n_global < 1:
            raise ValueError(f"n_global must be an integer >= 1, got {self.n_global!r}")
        if not isinstance(self.n_local, int) or self.n_local < 0:
            raise ValueError(f"n_local must be an integer >= 0, got {self.n_local!r}")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= 1, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if not 0 <= self.max_rotation <= 180:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {self.max_rotation!r}")
        if not 0 <= self.contrast < 1:
            raise ValueError(f"contrast must be in [0, 1), got {self.contrast!r}")

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local


def affine_sample(x, centre, size, angle, *, fill=0.0):
    """Resample every image through its own crop-and-rotate map (bilinear).

    Args:
        x: images ``(B, C, H, W)``.
        centre: ``(B, 2)`` crop centres (row, column) in pixel-edge units (0..H, 0..W).
        size: ``(B, 2)`` crop heights and widths in pixels.
        angle: ``(B,)`` rotations in radians.
        fill: the value read outside the image.
    Returns:
        ``(B, C, H, W)``, ``x``'s dtype.
    """
    check_host_images(x)
    B, C, H, W = x.shape
    v = (np.arange(H) + 0.5) / H - 0.5  # output rows in [-1/2, 1/2]
    u = (np.arange(W) + 0.5) / W - 0.5
    dy = v[None, :, None] * size[:, 0, None, None]  # (B, H, 1) offsets before rotation
    dx = u[None, None, :] * size[:, 1, None, None]  # (B, 1, W)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    rows = centre[:, 0, None, None] + cos * dy - sin * dx - 0.5  # index coordinates (centres at k)
    cols = centre[:, 1, None, None] + sin * dy + cos * dx - 0.5
    padded = np.full((B, C, H + 2, W + 2), fill, dtype=x.dtype)  # one ring of background
    padded[:, :, 1:-1, 1:-1] = x
    rows, cols = np.clip(rows + 1, 0, H), np.clip(cols + 1, 0, W)  # outside -> the ring
    r0, c0 = np.minimum(np.floor(rows).astype(np.int64), H), np.minimum(np.floor(cols).astype(np.int64), W)
    fr, fc = (rows - r0)[:, None], (cols - c0)[:, None]
    b = np.arange(B)[:, None, None]

    def at(r, c):
        return padded.transpose(0, 2, 3, 1)[b, r, c].transpose(0, 3, 1, 2)  # (B, C, H, W)

    r1, c1 = np.minimum(r0 + 1, H + 1), np.minimum(c0 + 1, W + 1)
    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    return np.ascontiguousarray((top * (1 - fr) + bottom * fr).astype(x.dtype, copy=False))


def random_views(x, rng, scale, spec: ViewSpec, *, fill=0.0):
    """One random resized, rotated, contrast-jittered view of every image ``(B, C, H, W)``."""
    B, _, H, W = x.shape
    area = rng.uniform(scale[0], scale[1], size=B) * H * W
    ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), size=B))  # width / height
    h = np.minimum(np.sqrt(area / ratio), H)
    w = np.minimum(np.sqrt(area * ratio), W)
    centre = np.stack([h / 2 + rng.uniform(0, 1, size=B) * (H - h),
                       w / 2 + rng.uniform(0, 1, size=B) * (W - w)], axis=1)
    angle = np.deg2rad(rng.uniform(-spec.max_rotation, spec.max_rotation, size=B))
    view = affine_sample(x, centre, np.stack([h, w], axis=1), angle, fill=fill)
    factor = rng.uniform(1 - spec.contrast, 1 + spec.contrast, size=(B, 1, 1, 1)).astype(x.dtype)
    return fill + factor * (view - fill)


def multi_crop(x, rng, spec: ViewSpec, *, fill=0.0):
    """``spec.n_global`` global then ``spec.n_local`` local views of a batch.

    Args:
        x: host images ``(B, C, H, W)`` (standardised; ``fill`` is their background value).
        rng: a ``numpy.random.Generator`` (the task's per-batch generator).
        spec: :class:`ViewSpec`.
    Returns:
        ``(V, B, C, H, W)`` with V = ``spec.n_views``, globals first.
    """
    check_host_images(x)
    if not isinstance(spec, ViewSpec):
        raise TypeError(f"spec must be a ViewSpec, got {type(spec).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    views = [random_views(x, rng, spec.global_scale, spec, fill=fill) for _ in range(spec.n_global)]
    views += [random_views(x, rng, spec.local_scale, spec, fill=fill) for _ in range(spec.n_local)]
    return np.stack(views)
