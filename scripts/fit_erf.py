"""Regenerate the Chebyshev coefficients of minicrate/ops/gelu.py (the exact, erf-based GELU).

The array API standard has no ``erf`` (NumPy has none either), so minicrate evaluates it from
two Chebyshev series, computed here with mpmath at 50 digits:

* ``x`` in [0, 1]:  erf(x) / x as a series in ``s = 2x² - 1`` (for erf near 0);
* ``x`` >= 0:       log(erfc(x)/t) + x² with ``t = 2/(2 + x)``, as a series in ``s = 2t - 1``
  (t runs over (0, 1], and the function is smooth in t up to x = ∞).

Each series is cut where its coefficients fall below 1e-17 (below double rounding).  Run ``python scripts/fit_erf.py`` (needs ``mpmath``) and paste the printed tuples into
minicrate/ops/gelu.py; ``tests/test_mlp.py`` checks the result against ``math.erf``/``math.erfc``.
"""

import mpmath

mpmath.mp.dps = 50


def chebyshev(f, n=60):
    """Chebyshev coefficients c_0..c_{n-1} of f on [-1, 1] (interpolation at first-kind nodes)."""
    nodes = [mpmath.cos(mpmath.pi * (k + 0.5) / n) for k in range(n)]
    values = [f(s) for s in nodes]
    coeffs = []
    for j in range(n):
        c = 2 * mpmath.fsum(v * mpmath.cos(mpmath.pi * j * (k + 0.5) / n) for k, v in enumerate(values)) / n
        coeffs.append(c / 2 if j == 0 else c)
    return coeffs


def cut(coeffs, tol=1e-17):
    last = max(j for j, c in enumerate(coeffs) if abs(c) > tol)
    return [float(c) for c in coeffs[: last + 1]]


def small(s):
    """erf(x)/x at x = sqrt((s + 1)/2)."""
    if s == -1:
        return 2 / mpmath.sqrt(mpmath.pi)
    x = mpmath.sqrt((s + 1) / 2)
    return mpmath.erf(x) / x


def tail(s):
    """log(erfc(x)/t) + x² at t = (s + 1)/2, x = 2(1 - t)/t."""
    t = (s + 1) / 2
    if t == 0:
        return mpmath.log(1 / (2 * mpmath.sqrt(mpmath.pi)))
    x = 2 * (1 - t) / t
    return mpmath.log(mpmath.erfc(x) / t) + x * x


SERIES = {"SMALL": small, "ERFC": tail}

if __name__ == "__main__":
    for name, f in SERIES.items():
        c = cut(chebyshev(f, 80))
        print(f"_{name} = (")
        for i in range(0, len(c), 3):
            print("    " + " ".join(f"{v!r}," for v in c[i : i + 3]))
        print(")")
