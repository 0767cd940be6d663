r"""Finite-difference check of hand-written backward passes.

A backward pass computes a vector-Jacobian product: given the upstream
gradient (cotangent) ``dout`` of a function's output, it returns
:math:`\bar x = J^\top \bar y` for every input x.  :func:`check_vjp` estimates
the same quantity numerically, one input entry at a time, as the derivative of
the scalar :math:`\phi(x) = \langle \bar y, f(x)\rangle`:

.. math:: \frac{\partial\phi}{\partial x_i} \approx
          \frac{-\phi(x+2he_i) + 8\phi(x+he_i) - 8\phi(x-he_i) + \phi(x-2he_i)}{12h}

This fourth-order central difference has truncation error O(h⁴): with the
default h = 1e-3 in float64 both truncation and round-off are near 1e-12, so
a correct gradient shows relative errors around 1e-9 -- orders of magnitude
below the 1e-6 tolerance -- and a wrong one shows errors near 1.  Inputs must
stay further than 2h from kinks (ReLU, max) for the estimate to be valid.

The error reported per argument is CS231n's relative error, taken entrywise,

.. math:: \max_i \frac{|a_i - n_i|}{\max(\text{floor}, |a_i| + |n_i|)},

with the floor scaled by the argument's largest gradient entry
(``floor = 1e-6 · max(1, max_i |a_i|)``): entries smaller than a millionth of
the largest are judged by their absolute error against that scale, so entries
that are zero up to round-off (≈1e-13) do not dominate.  CS231n's fixed floor
of 1e-8 flags such entries on some backends; ``rel_error`` keeps it.
The function is evaluated in the inputs' own
namespace (NumPy, torch, CuPy, array_api_strict).

Entries that fail at step h are estimated once more, at h/2, and the two
estimates are combined by Richardson extrapolation,
:math:`n = (16\,n_{h/2} - n_h)/15`, which cancels the h⁴ term.  A correct
gradient whose function has large higher derivatives at that point (a sharp
softmax, say) then passes, while a wrong one still fails: both estimates agree
with each other and with the true derivative, not with the wrong analytic
value.  Only entries that miss by less than ``REFINE_BELOW`` (1e-2) are
refined: a larger miss is far beyond the truncation error at these steps, and
a wrong gradient (every entry of a graded mistake) then costs no extra calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from minicrate.core.backend import asarray_like, device_of, namespace, to_numpy

DEFAULT_H = 1e-3
DEFAULT_RTOL = 1e-6
FLOOR = 1e-6
REFINE_BELOW = 1e-2


def rel_error(a, b, floor=1e-8):
    """CS231n's relative error ``max |a-b| / max(floor, |a|+|b|)`` (a float)."""
    from minicrate.core.validate import check_array

    xp = namespace(check_array(a, "a"), check_array(b, "b"))
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    scale = max(1.0, float(xp.max(xp.abs(a)))) if a.ndim else max(1.0, abs(float(a)))
    denom = xp.maximum(xp.abs(a) + xp.abs(b), asarray_like(floor * scale, a))
    return float(xp.max(xp.abs(a - b) / denom))


@dataclasses.dataclass
class ArgReport:
    """Result for one argument: its worst entry and the error there."""

    name: str
    max_rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    checked: int


@dataclasses.dataclass
class VJPReport:
    """All arguments' results; ``passed`` when every error is <= ``rtol``."""

    args: dict
    rtol: float

    @property
    def passed(self) -> bool:
        return all(r.max_rel_error <= self.rtol for r in self.args.values())

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.args.values()), default=0.0)

    def __str__(self) -> str:
        lines = [f"VJP check ({'passed' if self.passed else 'FAILED'}, rtol {self.rtol:g}):"]
        for r in self.args.values():
            flag = "ok " if r.max_rel_error <= self.rtol else "BAD"
            # Two short lines per input, so the report fits a book page and a terminal.
            lines.append(
                f"  {flag} {r.name}: max rel error {r.max_rel_error:.2e} at index {r.worst_index}\n"
                f"       analytic {r.analytic:.10g}, numeric {r.numeric:.10g}; {r.checked} entries"
            )
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise ``AssertionError`` with the full report unless it passed."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _scalar(f, kwargs, cotangent):
    xp = namespace(cotangent)
    out = f(**kwargs)
    if isinstance(out, tuple):  # a *_forward function: (out, cache)
        out = out[0]
    squeezed = [tuple(n for n in x.shape if n != 1) for x in (out, cotangent)]
    if squeezed[0] != squeezed[1]:  # equal up to axes of length 1, e.g. () and (1,)
        raise ValueError(
            f"cotangent must have the output's shape {tuple(out.shape)}, got {tuple(cotangent.shape)}"
        )
    return float(xp.sum(out * xp.reshape(cotangent, out.shape)))


def numerical_vjp(f, inputs: Mapping, cotangent, name: str, *, h=DEFAULT_H, indices=None):
    """Numerical ``∂⟨cotangent, f(**inputs)⟩/∂inputs[name]`` at ``indices``.

    Returns a NumPy float64 array of the argument's shape (entries not in
    ``indices`` are NaN).  ``indices`` defaults to every entry.
    """
    import numpy as np

    x = inputs[name]
    xp = namespace(x)
    host = to_numpy(x).astype(np.float64)
    grad = np.full(host.shape, np.nan)
    flat_indices = range(host.size) if indices is None else indices
    for flat in flat_indices:
        idx = np.unravel_index(flat, host.shape)
        values = []
        for step in (2, 1, -1, -2):
            bumped = host.copy()
            bumped[idx] += step * h
            kwargs = dict(inputs)
            kwargs[name] = xp.asarray(bumped, dtype=x.dtype, device=device_of(x))
            values.append(_scalar(f, kwargs, cotangent))
        grad[idx] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
    return grad


def _entry_errors(a, n):
    """Entrywise relative errors with the scaled floor (0 where n is NaN, i.e. unchecked)."""
    import numpy as np

    mask = ~np.isnan(n)
    scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
    err = np.zeros_like(a)
    err[mask] = np.abs(a[mask] - n[mask]) / np.maximum(FLOOR * scale, np.abs(a[mask]) + np.abs(n[mask]))
    return err


def check_vjp(
    f: Callable,
    inputs: Mapping,
    cotangent,
    grads: Mapping,
    *,
    h: float = DEFAULT_H,
    rtol: float = DEFAULT_RTOL,
    max_entries: int | None = None,
    seed: int = 0,
) -> VJPReport:
    """Compare analytic gradients with finite differences of ``f``.

    Args:
        f: called as ``f(**inputs)``; returns the output array, or
            ``(output, cache)`` as the ``*_forward`` functions do.
        inputs: argument name -> value (arrays and any fixed keywords).
        cotangent: upstream gradient, the output's shape.
        grads: argument name -> analytic gradient (the backward pass's
            result) for each argument to check.
        h: finite-difference step (inputs must be > 2h from any kink).
        rtol: tolerance on the relative error (1e-6 for float64 checks).
        max_entries: check at most this many randomly chosen entries per
            argument (``None``: all of them).
        seed: seed for that choice.

    Returns:
        a :class:`VJPReport`; call ``.raise_if_failed()`` in tests.
    """
    import numpy as np

    from minicrate.core.validate import check_array, check_int, check_positive, check_same_kind

    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(inputs, Mapping) or not isinstance(grads, Mapping):
        raise TypeError("inputs and grads must be dicts (argument name -> value)")
    check_array(cotangent, "cotangent")
    h, rtol = check_positive(h, "h"), check_positive(rtol, "rtol")
    if max_entries is not None:
        check_int(max_entries, "max_entries", minimum=1)
    for name in grads:
        if name in inputs:
            check_array(inputs[name], name)
        check_array(grads[name], f"grads[{name!r}]")
    checked = {name: inputs[name] for name in grads if name in inputs}
    checked.update({f"grads[{name!r}]": g for name, g in grads.items()}, cotangent=cotangent)
    for name, x in checked.items():
        if "float64" not in str(x.dtype):
            raise TypeError(
                f"check_vjp needs float64 inputs (round-off in float32 swamps the "
                f"finite difference); {name} is {getattr(x, 'dtype', type(x).__name__)}"
            )
    # f is called on the inputs and its output meets the cotangent: one backend and device for
    # them (the analytic gradients are only read back to the host, so any backend will do)
    check_same_kind(**{k: v for k, v in checked.items() if not k.startswith("grads[")})
    rng = np.random.default_rng(seed)
    reports = {}
    for name, analytic in grads.items():
        if name not in inputs:
            raise ValueError(f"grads names {name!r}, which is not among the inputs {list(inputs)}")
        a = to_numpy(analytic).astype(np.float64)
        if a.shape != tuple(inputs[name].shape):
            raise ValueError(
                f"gradient for {name} has shape {a.shape}, but {name} has shape "
                f"{tuple(inputs[name].shape)}: a gradient must have its input's shape"
            )
        size = a.size
        picked = None
        if max_entries is not None and size > max_entries:
            picked = np.sort(rng.choice(size, size=max_entries, replace=False))
        n = numerical_vjp(f, inputs, cotangent, name, h=h, indices=picked)
        err = _entry_errors(a, n)
        failing = np.flatnonzero((err > rtol) & (err < REFINE_BELOW))
        if failing.size:  # truncation-limited entries: cancel the h^4 term (module docstring)
            half = numerical_vjp(f, inputs, cotangent, name, h=h / 2, indices=failing)
            n.flat[failing] = (16 * half.flat[failing] - n.flat[failing]) / 15
            err = _entry_errors(a, n)
        mask = ~np.isnan(n)
        worst = np.unravel_index(int(np.argmax(err)), a.shape) if a.size else ()
        reports[name] = ArgReport(
            name=name,
            max_rel_error=float(err[worst]) if a.size else 0.0,
            worst_index=tuple(int(i) for i in worst),
            analytic=float(a[worst]) if a.size else math.nan,
            numeric=float(n[worst]) if a.size else math.nan,
            checked=int(mask.sum()),
        )
    return VJPReport(args=reports, rtol=rtol)
