"""Comparing a student's output with the reference, and saying how they differ.

Host-side, like the finite-difference checker: every output is copied to a
float64 NumPy array first, whatever backend produced it.  The error is
CS231n's relative error with a floor scaled to the largest expected entry.
"""

from __future__ import annotations

import math
import os
import traceback

import numpy as np

from minicrate.core.backend import to_numpy
from minicrate.grading.types import FLOOR, RTOL

ERROR_MEASURE = (
    "relative error = |yours - expected| / max(|yours| + |expected|, 1e-6 * largest |expected|), "
    "entry by entry (CS231n's measure): 0 is equal, 1e-6 is the tolerance, 1.0 means unrelated "
    "(e.g. a sign flip or a zero where a value belongs), and 0.333 is a factor 2 "
    "(|2x - x| / (|2x| + |x|) = 1/3)."
)
"""How :func:`compare` measures a difference, said once at the end of a report."""


def as_host(x, name="output"):
    """A float64 NumPy copy of an array-like output (raises ``TypeError`` if it is not one)."""
    if x is None:
        raise TypeError(f"{name} is None (did the function forget to return it?)")
    if isinstance(x, (bool, int, float, np.number, np.ndarray)):
        return np.asarray(x, dtype=np.float64)
    if isinstance(x, (tuple, list, dict, str)):
        raise TypeError(f"{name} should be an array, got a {type(x).__name__}")
    try:
        return np.asarray(to_numpy(x), dtype=np.float64)
    except Exception as err:  # not an array of any backend we know
        raise TypeError(f"{name} should be an array, got {type(x).__name__}") from err


def dtype_name(x):
    """The dtype name of an array of any backend (``"float32"``), ``None`` for anything else."""
    if isinstance(x, (bool, int, float)) or not hasattr(x, "dtype"):
        return None
    try:
        return np.asarray(to_numpy(x)).dtype.name
    except Exception:
        return None


def dtype_problem(name, have, want):
    """Why an output of dtype ``have`` breaks the contract of the reference's ``want``, or ``None``."""
    if not have or not want or have == want or np.dtype(want).kind != "f":
        return None
    return (
        f"{name} has dtype {have}, but the inputs (and the reference) are {want}: return "
        f"{want} (a {have} result is not accurate to {want} precision)"
    )


def compare(got, expected, rtol=RTOL):
    """Entrywise comparison.  Returns ``None`` when equal within ``rtol``,
    else a dict with ``index``, ``got``, ``expected``, ``error`` and ``why``."""
    g = np.asarray(got, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if g.shape != e.shape:
        return {"why": "shape", "got_shape": g.shape, "expected_shape": e.shape}
    if g.size == 0:
        return None
    bad = ~np.isfinite(g)
    if bad.any() and not (~np.isfinite(e)[bad]).all():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return {
            "why": "nonfinite",
            "index": idx,
            "got": float(g[idx]),
            "expected": float(e[idx]),
            "error": math.inf,
        }
    scale = max(1.0, float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0)))
    gf, ef = g.reshape(-1), e.reshape(-1)
    with np.errstate(invalid="ignore"):
        err = np.abs(gf - ef) / np.maximum(FLOOR * scale, np.abs(gf) + np.abs(ef))
    err[~np.isfinite(gf) & ~np.isfinite(ef)] = 0.0
    flat = int(np.argmax(err))
    if err[flat] <= rtol:
        return None
    idx = tuple(int(i) for i in np.unravel_index(flat, g.shape))
    worst = flat
    g, e = gf, ef
    return {
        "why": "value",
        "index": idx,
        "got": float(g[worst]),
        "expected": float(e[worst]),
        "error": float(err[worst]),
    }


def matches(got, expected, rtol=RTOL) -> bool:
    """True when :func:`compare` finds no difference."""
    try:
        return compare(got, expected, rtol) is None
    except Exception:
        return False


def describe_difference(name, diff, case, i, n):
    where = f"case {i + 1} of {n} ({case.label})"
    if diff["why"] == "shape":
        return (
            f"{name} has shape {diff['got_shape']} on {where}; expected shape "
            f"{diff['expected_shape']}"
        )
    if diff["why"] == "nonfinite":
        return (
            f"{name} is {diff['got']} at index {diff['index']} on {where}; expected "
            f"{diff['expected']:.6g}"
        )
    msg = (
        f"{name} is off on {where}: relative error {diff['error']:.2e} at index "
        f"{diff['index']}: yours {diff['got']:.8g}, expected {diff['expected']:.8g}"
    )
    return msg


def ratio_hint(got, expected):
    """Generic hints: a constant factor, a sign flip, float32-level round-off."""
    g = np.asarray(got, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if g.shape != e.shape or g.size == 0 or not np.all(np.isfinite(g)):
        return None
    if not np.any(g):
        return "your result is all zeros on this case: is the function finished?"
    mask = np.abs(e) > 1e-8 * max(1.0, float(np.max(np.abs(e))))
    if not mask.any():
        return None
    r = g[mask] / e[mask]
    if np.allclose(r, r[0], rtol=1e-6, atol=0) and abs(r[0] - 1) > 1e-6:
        if abs(r[0] + 1) < 1e-6:
            return "your result is exactly minus the expected one: check the sign"
        return (
            f"your result is the expected one times a constant ({r[0]:.6g}) on this case: "
            "look for a wrong constant factor"
        )
    err = np.max(np.abs(g - e)) / max(1e-300, float(np.max(np.abs(e))))
    if err < 1e-4:
        return (
            "close but not to float64 accuracy (relative difference "
            f"{err:.1e}): did you compute in float32, or change an epsilon?"
        )
    return None


def _library_file(filename):
    """True for a file of Python itself, an installed package or minicrate (not a student's)."""
    import sysconfig

    roots = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(os.path.abspath(sysconfig.get_path(key)))
        except (KeyError, TypeError):
            pass
    path = os.path.abspath(filename)
    return filename.startswith("<frozen") or any(path.startswith(r + os.sep) for r in roots)


def format_exception(err: BaseException) -> str:
    """``"ValueError: message (line 12: the line)"``, the line being the student's own: the
    innermost frame outside Python, installed packages and minicrate (else the innermost
    frame outside the grader)."""
    tb = traceback.extract_tb(err.__traceback__)
    inside = os.path.join("minicrate", "grading") + os.sep
    frames = [f for f in reversed(tb) if not _library_file(f.filename)]
    frames = frames or [f for f in reversed(tb) if inside not in f.filename]
    where = ""
    if frames:
        frame = frames[0]
        where = f" (line {frame.lineno}: {frame.line})" if frame.line else f" (line {frame.lineno})"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}{where}"
