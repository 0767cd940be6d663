"""Pieces every chapter's tasks share: host copies, output normalisers, case labels.

An *output normaliser* turns what a student's function returned into named
arrays (``{"Y": ...}``, ``{"dZ": ..., "grads['U']": ...}``) and raises
``TypeError`` with a message when the structure is wrong; the check engine
compares those names with the reference's.
"""

from __future__ import annotations

import importlib

import numpy as np

from minicrate.core.backend import to_numpy


def host(x):
    """A float64 NumPy copy of an array of any backend."""
    return np.asarray(to_numpy(x), dtype=np.float64)


def T(x):
    """Swap the last two axes (NumPy)."""
    return np.swapaxes(x, -1, -2)


def batch_count(X):
    """Number of samples: the product of the axes before ``(N, d)``."""
    return int(np.prod(X.shape[:-2])) if X.ndim > 2 else 1


def label(**arrays):
    """``"Z (2, 3, 4), eps=0.5"``: shapes of arrays, values of the rest."""
    parts = []
    for k, v in arrays.items():
        parts.append(f"{k} {tuple(v.shape)}" if hasattr(v, "shape") else f"{k}={v}")
    return ", ".join(parts)


def lead(spec):
    """The batch axes of a spec with ``"B"``: ``()`` for a single sample, else ``(B,)``."""
    return (spec["B"],) if spec["B"] else ()


def only(outputs, keys):
    """The entries of ``outputs`` named in ``keys`` (a mistake changes only some outputs)."""
    return {k: v for k, v in outputs.items() if k in keys}


def grad_names(*names):
    """``grad_names("U", "D")`` -> ``("grads['U']", "grads['D']")``."""
    return tuple(f"grads[{n!r}]" for n in names)


def one(name):
    """Normaliser of a function returning one array."""

    def outputs(returned):
        if isinstance(returned, (tuple, list)):
            raise TypeError(
                f"should return one array ({name}), got a {type(returned).__name__} "
                f"of length {len(returned)}"
            )
        return {name: returned}

    return outputs


def pair(first, second):
    """Normaliser of a function returning a tuple of two arrays."""

    def outputs(returned):
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise TypeError(
                f"should return a tuple ({first}, {second}), got {type(returned).__name__}"
            )
        return {first: returned[0], second: returned[1]}

    return outputs


def forward_output(name="Y"):
    """Normaliser of a forward function returning ``(out, cache)``: only ``out`` is graded."""

    def outputs(returned):
        if isinstance(returned, tuple) and len(returned) == 2:
            return {name: returned[0]}
        raise TypeError(
            f"should return a tuple ({name}, cache), got {type(returned).__name__}"
            + (f" of length {len(returned)}" if isinstance(returned, (tuple, list)) else "")
        )

    return outputs


def backward_outputs(dname, keys):
    """Normaliser of a backward function returning ``(d_input, grads)`` with ``grads`` keyed ``keys``."""

    def outputs(returned):
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise TypeError(
                f"should return a tuple ({dname}, grads), got {type(returned).__name__}"
            )
        dx, grads = returned
        if not isinstance(grads, dict):
            raise TypeError(
                f"grads should be a dict keyed {list(keys)}, got {type(grads).__name__}"
            )
        out = {dname: dx}
        for k in keys:
            if k in grads:
                out[f"grads[{k!r}]"] = grads[k]
        return out

    return outputs


def named_backward(dname, keys, dx, grads):
    """A backward's ``(dx, grads)`` under the names :func:`backward_outputs` gives them."""
    out = {dname: dx}
    out.update({f"grads[{k!r}]": grads[k] for k in keys if k in grads})
    return out


def solution_of(module, name):
    """minicrate's ``module.name`` (e.g. ``("objective.rates", "coding_rate")``), imported when
    first called: a full-marks submission with the student's signature."""

    def solution(*args, **kwargs):
        return getattr(importlib.import_module(f"minicrate.{module}"), name)(*args, **kwargs)

    solution.__name__ = name
    return solution
