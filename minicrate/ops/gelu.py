r"""The exact GELU, :math:`\operatorname{GELU}(x) = x\,\Phi(x)`, and its derivative by hand.

:math:`\Phi` is the standard normal distribution function,

.. math:: \Phi(x) = \tfrac12\operatorname{erfc}(-x/\sqrt2),\qquad
          \operatorname{GELU}'(x) = \Phi(x) + x\,\varphi(x),\qquad
          \varphi(x) = e^{-x^2/2}/\sqrt{2\pi}.

This is the GELU of ``torch.nn.GELU()`` (``approximate="none"``), the MLP
activation of ViT, GPT-2's successors and BERT; the tanh approximation is not used.

The array API standard has no ``erf`` (and NumPy has none), so it is computed
here from two Chebyshev series whose coefficients were fitted with 50-digit
arithmetic (``scripts/fit_erf.py`` regenerates them):

* for :math:`z \ge 0`, :math:`\operatorname{erfc}(z) = t\,\exp(-z^2 + F(2t - 1))` with
  :math:`t = 2/(2 + z) \in (0, 1]`: F is smooth in t all the way to :math:`z = \infty`,
  so one series serves every z, and erfc keeps its relative accuracy where it is tiny;
* for :math:`|x| < 1`, :math:`\operatorname{erf}(x) = x\,S(2x^2 - 1)` (``1 - erfc`` would
  lose erf's relative accuracy near 0).

Each series is summed only as far as the dtype resolves (float32 keeps 14 of the
28 terms).  Accuracy, against ``math.erfc`` (tests/test_mlp.py): in float64 the
relative error is below 5e-14 for erfc and 4e-16 for erf (most of it the
rounding of :math:`z^2` inside the exponential); in float32 below 1e-5 for erfc.
"""

from __future__ import annotations

import math

from minicrate.core.backend import namespace
from minicrate.core.validate import check_array, check_same_kind

# Chebyshev coefficients on [-1, 1] (scripts/fit_erf.py).
_SMALL = (
    0.9754769393826541, -0.14226120510371365, 0.010035582187599796,
    -0.0005768764699767485, 2.741993125219606e-05, -1.1043175507344507e-06,
    3.8488755420345036e-08, -1.1808582533875466e-09, 3.2334215826050907e-11,
    -7.991015947004549e-13, 1.7990725113961456e-14, -3.718635487818693e-16,
)
_ERFC = (
    -0.6513268598908547, 0.6419697923564902, 0.019476473204185836,
    -0.009561514786808632, -0.0009465953444820369, 0.00036683949785276145,
    4.252332480690777e-05, -2.0278578112534242e-05, -1.6242900046470256e-06,
    1.3036558355805232e-06, 1.5626441722066142e-08, -8.523809591492654e-08,
    6.5290544390988515e-09, 5.059343495551469e-09, -9.91364156493033e-10,
    -2.273651222931836e-10, 9.646791102015527e-11, 2.3940380830391146e-12,
    -6.886027526497553e-12, 8.944879273090725e-13, 3.130921399342958e-13,
    -1.1270822361367252e-13, 3.810905255189232e-16, 7.106097613609237e-15,
    -1.5230282014571043e-15, -9.457494571291233e-17, 1.210237189224279e-16,
    -2.816663087747177e-17,
)
_EPS = {"float32": 2.0**-23, "float64": 2.0**-52}
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _chebyshev(xp, coeffs, s):
    r""":math:`\sum_k c_k T_k(s)` by Clenshaw's recurrence (``s`` in [-1, 1]), summed only over
    the terms above 1/10 of the dtype's rounding (the series' values are of order one)."""
    eps = _EPS.get(str(s.dtype).rsplit(".", 1)[-1], _EPS["float64"])
    n = max(k for k, c in enumerate(coeffs) if abs(c) >= 0.1 * eps) + 1
    b1, b2 = xp.zeros_like(s), xp.zeros_like(s)
    two_s = 2.0 * s
    for c in coeffs[n - 1:0:-1]:
        b = two_s * b1
        b -= b2
        b += c
        b1, b2 = b, b1
    return s * b1 - b2 + coeffs[0]


def _erfc_nonneg(xp, z):
    """erfc(z) for z >= 0 (one series; relative accuracy also where erfc is tiny)."""
    t = 2.0 / (2.0 + z)
    return t * xp.exp(_chebyshev(xp, _ERFC, 2.0 * t - 1.0) - z * z)


def _erf_small(xp, z):
    """erf(z) = z·S(2z² − 1) for 0 <= z <= 1 (z is clipped to [0, 1])."""
    zc = xp.clip(z, 0.0, 1.0)
    return zc * _chebyshev(xp, _SMALL, 2.0 * zc * zc - 1.0)


def erfc(X):
    r"""The complementary error function :math:`\operatorname{erfc}(x) = 1 - \operatorname{erf}(x)`,
    elementwise, for any array-API backend (``erfc(-x) = 2 - erfc(x)``)."""
    check_array(X, "X")
    xp = namespace(X)
    e = _erfc_nonneg(xp, xp.abs(X))
    return e + xp.astype(X < 0, X.dtype) * (2.0 - 2.0 * e)


def erf(X):
    r"""The error function :math:`\operatorname{erf}(x) = \frac{2}{\sqrt\pi}\int_0^x e^{-t^2}dt`,
    elementwise (odd: computed on ``|x|``, sign restored)."""
    check_array(X, "X")
    xp = namespace(X)
    z = xp.abs(X)
    small = xp.astype(z < 1.0, X.dtype)
    r = small * _erf_small(xp, z) + (1.0 - small) * (1.0 - _erfc_nonneg(xp, z))
    return r - 2.0 * xp.astype(X < 0, X.dtype) * r


def normal_cdf(X):
    r""":math:`\Phi(x) = \tfrac12\operatorname{erfc}(-x/\sqrt2)`, elementwise; accurate in relative
    terms far into the left tail (where ``1 + erf`` would cancel)."""
    check_array(X, "X")
    xp = namespace(X)
    half = 0.5 * _erfc_nonneg(xp, xp.abs(X) * _INV_SQRT_2)
    return half + xp.astype(X > 0, X.dtype) * (1.0 - 2.0 * half)


def gelu(X):
    r"""The exact GELU :math:`x\,\Phi(x)`, elementwise; ``X`` any shape, returned in its shape."""
    return X * normal_cdf(X)


def gelu_backward(dY, X, cdf=None):
    r"""Vector-Jacobian product of :func:`gelu`:
    :math:`\bar X = \bar Y \odot (\Phi(X) + X\,\varphi(X))`, with
    :math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}`.

    Args:
        dY: the gradient of the output, X's shape.
        X: the forward's input.
        cdf: :math:`\Phi(X)` if the forward kept it (:func:`normal_cdf`), else ``None``.

    Returns:
        dX, of X's shape.
    """
    check_array(X, "X")
    check_array(dY, "dY")
    if tuple(dY.shape) != tuple(X.shape):
        raise ValueError(f"dY must have the shape of X {tuple(X.shape)}, got {tuple(dY.shape)}")
    if cdf is not None:
        check_array(cdf, "cdf")
        if tuple(cdf.shape) != tuple(X.shape):
            raise ValueError(f"cdf must have the shape of X {tuple(X.shape)}, got {tuple(cdf.shape)}")
    check_same_kind(dY=dY, X=X, cdf=cdf)
    xp = namespace(X)
    cdf = normal_cdf(X) if cdf is None else cdf
    return dY * (cdf + X * (_INV_SQRT_2PI * xp.exp(-0.5 * X * X)))

