"""Input checks shared by every public function.

Each check raises ``ValueError`` or ``TypeError`` with a message that names the
argument, says what it got (shape, dtype) and what was expected, so a student
or a grader sees the real problem instead of an opaque traceback deep inside a
matrix product.

``finite_checks(False)`` switches the (one-pass, O(size)) non-finite scan off
inside hot loops such as training, where the loss is checked instead.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from collections.abc import Mapping

from minicrate.core.backend import namespace, same_device

_FINITE = [True]


@contextlib.contextmanager
def finite_checks(enabled: bool):
    """Temporarily turn the non-finite scan of array arguments on or off."""
    old, _FINITE[0] = _FINITE[0], enabled
    try:
        yield
    finally:
        _FINITE[0] = old


def finite_checks_enabled() -> bool:
    """Whether the non-finite scans are on (see :func:`finite_checks`)."""
    return _FINITE[0]


def describe(x) -> str:
    """``'shape (2, 3) float64'`` for an array, ``repr`` for anything else."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"shape {tuple(x.shape)} {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def check_array(x, name, *, ndim=None, min_ndim=None, shape=None, floating=True, finite=True):
    """Check one array argument.

    Args:
        x: the argument.
        name: its name, used in error messages.
        ndim: exact number of axes expected, or ``None``.
        min_ndim: least number of axes expected, or ``None``.
        shape: expected trailing shape; ``None`` entries match anything.
        floating: require a real floating dtype.
        finite: reject NaN and inf, and entries so large that arithmetic on them
            would overflow (beyond ``_LIMITS``), when finite checks are enabled.

    ``numpy.matrix`` and masked arrays are refused (:func:`check_plain`).
    """
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array, got {describe(x)}")
    check_plain(x, name)
    kind = _float_kind(x)
    if floating and kind is None:
        raise TypeError(f"{name} must have a real floating dtype (float32 or float64), got {describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got {describe(x)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got {describe(x)}")
    if shape is not None:
        tail = tuple(x.shape[x.ndim - len(shape) :]) if x.ndim >= len(shape) else None
        if tail is None or any(e is not None and e != t for e, t in zip(shape, tail, strict=True)):
            want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{name} must have trailing shape {want}, got {describe(x)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must not be empty, got {describe(x)}")
    if finite and _FINITE[0] and floating:
        xp, limit = namespace(x), _LIMITS[kind]
        if not bool(xp.all(xp.abs(x) <= limit)):  # one pass: NaN and inf fail it too
            if not bool(xp.all(xp.isfinite(x))):
                raise ValueError(f"{name} contains NaN or inf values ({describe(x)})")
            raise ValueError(f"{name} has entries beyond ±{limit:.0e}, where {x.dtype} arithmetic "
                             f"(squares, sums) would overflow to inf ({describe(x)})")
    return x


def _float_kind(x):
    """``"float32"``, ``"float64"`` or ``None`` (any other dtype) for an array.

    Cached per dtype: the check runs on every argument of every call, and naming a
    dtype (``str``) and finding the namespace cost more than a small layer's arithmetic."""
    # Keyed with the dtype's type first, so that dtypes of two libraries are never compared
    # (array_api_strict warns when its dtypes are compared with NumPy's).
    key = (type(x.dtype), x.dtype)
    try:
        return _KINDS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype: work it out every time
        return _work_out_kind(x)
    kind = _KINDS[key] = _work_out_kind(x)
    return kind


def _work_out_kind(x):
    name = str(x.dtype).rsplit(".", 1)[-1]
    real = namespace(x).isdtype(x.dtype, "real floating")
    return name if real and name in ("float32", "float64") else None


_KINDS: dict = {}

# The largest magnitude an array argument may hold: about sqrt(max) / 1000 of its
# dtype, so that a square, or a sum of a thousand products, of entries stays finite.
_LIMITS = {"float32": 1e16, "float64": 1e150}


def check_plain(x, name):
    """Refuse NumPy's array flavours whose semantics differ from a plain array's:
    a masked array (its mask would be ignored silently) and ``np.matrix``
    (``*`` is a matrix product and reductions keep two axes)."""
    kind = type(x).__name__
    if kind == "MaskedArray":
        raise TypeError(f"{name} must be a plain array, got a masked array ({describe(x)}); "
                        "fill or drop the masked entries first")
    if kind == "matrix":
        raise TypeError(f"{name} must be a plain array, got a numpy.matrix ({describe(x)}); "
                        "convert it with numpy.asarray first")
    return x


def _one_kind(arrays):
    """Cheap pre-pass of :func:`check_same_kind`: do all arrays share one Python
    type, dtype and ``device`` attribute?  Attribute reads only, about 1 µs an
    array, where finding the namespace and device through array_api_compat
    costs about 30 µs an array; a hot loop calls this dozens of times a step."""
    arrays = list(arrays)
    if not arrays or not hasattr(arrays[0], "dtype"):
        return not arrays
    first = arrays[0]
    kind = (type(first), first.dtype, getattr(first, "device", None))
    return all((type(a), getattr(a, "dtype", None), getattr(a, "device", None)) == kind for a in arrays[1:])


def check_same_kind(**arrays):
    """Arrays (``None`` skipped) must share namespace, dtype and device."""
    present = {k: v for k, v in arrays.items() if v is not None}
    if _one_kind(present.values()):
        return  # one type, dtype and device: nothing can be mixed
    namespace(*present.values())
    same_device(*present.values(), names=list(present))
    dtypes = {k: v.dtype for k, v in present.items()}
    if len(set(map(str, dtypes.values()))) > 1:
        listing = ", ".join(f"{k} {v}" for k, v in dtypes.items())
        raise TypeError(f"arguments must share one dtype, got {listing}")


def check_positive(value, name, *, allow_zero=False):
    """A real number > 0 (or >= 0 with ``allow_zero``), finite; a bool is not a number here."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got the bool {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {describe(value)}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        want = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {want}, got {value!r}")
    return v


def check_real(value, name):
    """A finite real number (any sign), returned as a float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {describe(value)}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_int(value, name, *, minimum=None):
    """An integer (not a float, not a bool) >= ``minimum``, returned as an int."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {describe(value)}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_keys(mapping, needed, name="params"):
    """``mapping`` must be a dict-like holding every key in ``needed``."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict of arrays, got {type(mapping).__name__}")
    missing = [k for k in needed if k not in mapping]
    if missing:
        raise ValueError(f"{name} is missing {missing}; expected the keys {list(needed)}")
    return mapping


def check_cache(cache, forward, *, keys=None, length=None):
    """``cache`` must look like what ``forward`` returned: a dict holding
    ``keys`` or a tuple of ``length`` entries.  Catches a backward called with
    the wrong (or no) cache before it fails somewhere inside."""
    ok = (keys is not None and isinstance(cache, Mapping) and all(k in cache for k in keys)) or (
        length is not None and isinstance(cache, tuple) and len(cache) == length
    )
    if not ok:
        raise TypeError(
            f"cache must be the cache returned by {forward}, got {type(cache).__name__}"
        )
    return cache


def check_cotangent(dY, shape, like, name="dY"):
    """An upstream gradient: a floating array of the forward output's ``shape``,
    with the namespace, dtype and device of ``like`` (an array of the forward)."""
    check_array(dY, name)
    if tuple(dY.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the forward output's shape {tuple(shape)}, got {describe(dY)}"
        )
    check_same_kind(**{name: dY, "the forward's arrays": like})
    return dY


def check_heads(U, d, name="U"):
    """``U`` must be ``(K, d, p)`` with the model width ``d``."""
    check_array(U, name, ndim=3)
    if U.shape[1] != d:
        raise ValueError(
            f"{name} must have shape (K, d, p) with d = {d} (the token width), got {describe(U)}"
        )
    return U.shape[0], U.shape[2]


def check_config(config, cls, name="config"):
    """``config`` must be an instance of the dataclass ``cls`` (not ``None``, a dict or a name)."""
    if not isinstance(config, cls):
        raise TypeError(f"{name} must be a {cls.__module__}.{cls.__name__}, got {describe(config)}")
    return config


def check_params_shapes(params, shapes, *, name="params", **like):
    """``params`` must hold every key of ``shapes`` with exactly that shape, all
    floating and finite, of one namespace, dtype and device -- those of the
    arrays given as keywords too (e.g. ``images=...``).  Extra keys are allowed.

    With the non-finite scans off (training), a quick pass compares shapes and
    Python type, dtype and device attributes only; the full checks run when it
    fails, to name the first offender.
    """
    check_keys(params, shapes, name)
    if not _FINITE[0] and _params_look_right(params, shapes, like):
        return params
    for key, shape in shapes.items():
        check_array(params[key], f"{name}[{key!r}]", ndim=len(shape), shape=shape)
    check_same_kind(**like, **{f"{name}[{k!r}]": params[k] for k in shapes})
    return params


def _params_look_right(params, shapes, like):
    arrays = [a for a in like.values() if a is not None] + [params[k] for k in shapes]
    if not arrays:
        return True
    first = arrays[0]
    return (
        all(tuple(getattr(params[k], "shape", ())) == tuple(s) for k, s in shapes.items())
        and _one_kind(arrays)
        and namespace(first).isdtype(first.dtype, "real floating")
    )


def check_int_array(x, name, *, ndim=None):
    """An integer array (host NumPy or any backend; not bool, not float: floats
    are never silently truncated to ids), non-empty, of ``ndim`` axes."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an integer array, got {describe(x)}")
    check_plain(x, name)
    if not namespace(x).isdtype(x.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got {describe(x)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must not be empty, got {describe(x)}")
    return x


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _or_list(values):
    items = [repr(v) for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def check_config_fields(
    config,
    *,
    ints=(),
    nonneg=(),
    positive=(),
    optional=(),
    open_unit=(),
    unit=(),
    bools=(),
    choices=None,
    dtypes=("float32", "float64"),
):
    """The field checks shared by the configuration dataclasses' ``__post_init__``.

    Every message names ``ClassName.field`` and the value it got.

    Args:
        config: the dataclass instance.
        ints: fields that must be integers >= 1 (not bools).
        nonneg: fields that must be finite reals >= 0; a tuple of names is a
            group reported together ("eta and lam must be >= 0 ...").
        positive: fields that must be finite reals > 0.
        optional: fields (among the above) for which ``None`` is valid too.
        open_unit: fields that must lie in (0, 1); ``unit``: in [0, 1).
        bools: fields that must be ``True`` or ``False``.
        choices: ``{field: allowed values}``.
        dtypes: the allowed values of ``config.dtype`` (``None``: no such field).
    """
    cls = type(config).__name__
    get = lambda f: getattr(config, f)  # noqa: E731
    for f in ints:
        value = get(f)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{cls}.{f} must be a positive integer, got {describe(value)}")
        if value < 1:
            raise ValueError(f"{cls}.{f} must be a positive integer, got {value!r}")

    def real(f):
        value = get(f)
        if value is None and f in optional:
            return None
        if not _is_real(value):
            raise TypeError(f"{cls}.{f} must be a real number, got {describe(value)}")
        return float(value)

    for group in nonneg:
        group = (group,) if isinstance(group, str) else tuple(group)
        for f in group:
            v = real(f)
            if v is not None and not (math.isfinite(v) and v >= 0):
                if len(group) == 1:
                    raise ValueError(f"{cls}.{f} must be >= 0 (and finite), got {get(f)!r}")
                got = ", ".join(f"{g}={get(g)!r}" for g in group)
                raise ValueError(f"{cls}.{f} is {get(f)!r}: {' and '.join(group)} must be >= 0 "
                                 f"(and finite), got {got}")
    for f in positive:
        if real(f) is not None:
            check_positive(get(f), f"{cls}.{f}")
    for f in open_unit:
        v = real(f)
        if v is not None and not 0 < v < 1:
            raise ValueError(f"{cls}.{f} must be in (0, 1), got {get(f)!r}")
    for f in unit:
        v = real(f)
        if v is not None and not 0 <= v < 1:
            raise ValueError(f"{cls}.{f} must be in [0, 1), got {get(f)!r}")
    for f in bools:
        if not isinstance(get(f), bool):
            raise TypeError(f"{cls}.{f} must be True or False, got {get(f)!r}")
    allowed = dict(choices or {})
    if dtypes is not None:
        allowed["dtype"] = tuple(dtypes)
    for f, values in allowed.items():
        value = get(f)
        if value not in values:
            raise ValueError(f"{cls}.{f} must be {_or_list(values)}, got {value!r}")
    return config
