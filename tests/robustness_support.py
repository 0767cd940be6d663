"""Shared machinery of the robustness tests (tests/test_robustness_*.py).

Malformed input to every public function gives a documented error.

Each public function gets a :class:`Case`: a valid call on small arrays and,
for every argument, what may change without making the call invalid.  A
*mutation* then breaks one argument at a time -- not an array, an integer or
boolean dtype, the other float dtype, another backend, another device
(``array_api_strict.Device("device1")``), NaN/inf entries, an empty axis, one
axis more or less, one axis longer, a complex, float16 or object dtype, a
read-only or non-contiguous copy (which must give the same result), an
``np.matrix`` or masked array (refused), an entry near overflow (1e200 in
float64, 1e30 in float32: refused, or a finite result), or a bad scalar
(ε <= 0, η or λ < 0, NaN, a string, ...).  The rules below say for each mutation whether the call must
raise, must still work, or may do either; in every case the only exceptions
allowed are ``ValueError`` and ``TypeError`` (and their subclasses, such as
``CheckpointError``), and a call that returns must return finite arrays --
never an ``IndexError``, ``AttributeError``, ``LinAlgError``, an opaque
broadcasting error or a silent NaN.

* :func:`test_every_mutation` applies every mutation of every argument once
  (NumPy, and array_api_strict for the device mutation);
* :func:`test_random_mutations` lets Hypothesis pick the case, backend
  (NumPy, array_api_strict, torch), dtype, argument, mutation and axis;
* :func:`test_messages` checks that the messages name the argument, what it
  got and what was expected.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.core.backend import get_backend, host_to, to_numpy
from minicrate.core.validate import finite_checks  # noqa: F401  (the names below serve the case files)
from minicrate.data.text import Vocab
from minicrate.measure import probe  # noqa: F401
from minicrate.models import classifier as mc_model
from minicrate.models import loss as mc_loss  # noqa: F401
from minicrate.models import masking, sampling  # noqa: F401

HAS_TORCH = importlib.util.find_spec("torch") is not None
BASES = ["numpy", "array_api_strict"] + (["torch"] if HAS_TORCH else [])
DOCUMENTED = (ValueError, TypeError)


# ----------------------------------------------------------------------------
# Argument specifications


@dataclasses.dataclass
class Arr:
    """An array argument.

    ranks: the numbers of axes that are valid (for the rank mutations);
    free: axes (negative indices) whose length may change on their own;
    kind: "float", or "int" for integer labels;
    optional: deleting it from its dict is still valid;
    nonfinite_ok: the NaN/inf mutations that are valid ("neg_inf": softmax masks it);
    any_dtype: integer and boolean arrays are valid too (and so is the other float dtype);
    any_float: the other float dtype is valid too (it is cast, as host data are);
    passes_nonfinite: NaN/inf are valid and pass through to the output (a copy);
    empty_ok: an empty axis is valid;
    any_backend: it may come from another backend or device (it is copied to the host).
    """

    ranks: tuple = ()
    free: tuple = ()
    kind: str = "float"
    optional: bool = False
    nonfinite_ok: tuple = ()
    any_dtype: bool = False
    any_float: bool = False
    passes_nonfinite: bool = False
    empty_ok: bool = False
    any_backend: bool = False


@dataclasses.dataclass
class Num:
    """A scalar argument: "positive" (> 0), "nonneg" (>= 0), "real",
    "int1" (integer >= 1), "int0" (integer >= 0), "unit" ([0, 1)),
    "axis", "choice" (one of ``choices``), "bool" (True or False), "cache" (from a forward),
    "config" (a config object), "path" (a file name)."""

    kind: str
    none_ok: bool = False


BAD_SCALARS = {
    "positive": [0.0, -1.0, math.nan, math.inf, "x"],
    "nonneg": [-0.5, math.nan, math.inf, "x"],
    "real": [math.nan, math.inf, "x"],
    "int1": [0, -1, 2.5, "x", True],
    "int0": [-1, 2.5, "x"],
    "unit": [1.0, -0.1, math.nan, "x"],
    "axis": [7, -8, 1.5, "x"],
    "choice": ["bogus", 3],
    "bool": [1, "yes", 0.0],
    "cache": [None, {}, ()],
    "config": [None, {"dim": 4}, "digits"],
}


@dataclasses.dataclass
class Case:
    name: str
    build: Callable  # (xp, dtype) -> dict of keyword values (dicts of arrays allowed)
    call: Callable  # (kwargs) -> the arrays to check for finiteness (a list)
    args: dict  # path -> Arr | Num; a path "params/U" reaches into a dict
    coupled: bool = True  # arrays must share dtype/backend/device with each other
    skip: tuple = ()  # (path, mutation) pairs left out, each with a reason where the case is made
    mixed_dtypes_ok: bool = False  # ... except the dtype (float32 and float64 may meet)


def _host(xp, values, dtype):
    return host_to(xp, np.asarray(values), dtype)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(xp, dtype, shape, seed=0, scale=1.0):
    return _host(xp, scale * _rng(seed).standard_normal(shape), dtype)


def _away(xp, dtype, shape, seed=0):
    """Normal entries kept > 0.1 from zero (no ReLU kinks, no zero scales)."""
    x = _rng(seed).standard_normal(shape)
    return _host(xp, np.where(np.abs(x) < 0.1, 0.5, x), dtype)


def _bases(xp, dtype, K, d, p, seed=0):
    q = np.linalg.qr(_rng(seed).standard_normal((d, d)))[0]
    U = np.stack(
        [
            q[:, (k * p) % d : (k * p) % d + p] if (k * p) % d + p <= d else q[:, :p]
            for k in range(K)
        ]
    )
    return _host(xp, U, dtype)


def _ones(xp, dtype, n):
    return _host(xp, np.ones(n), dtype)


def _layer_params(xp, dtype, d=4, K=2, p=2, seed=1, tie=False, ln=True):
    params = {
        "U": _bases(xp, dtype, K, d, p, seed),
        "D": _host(xp, np.eye(d) + 0.1 * _rng(seed).standard_normal((d, d)), dtype),
    }
    if not tie:
        params["W_out"] = _normal(xp, dtype, (d, K * p), seed + 1, 0.5)
        params["b_out"] = _normal(xp, dtype, (d,), seed + 2, 0.1)
    if ln:
        for which in ("ln1", "ln2"):
            params[f"{which}_gamma"] = _host(xp, 1 + 0.1 * _rng(seed + 3).standard_normal(d), dtype)
            params[f"{which}_beta"] = _normal(xp, dtype, (d,), seed + 4, 0.1)
    return params


def _layer_specs(tie=False, ln=True, prefix="params/"):
    specs = {
        f"{prefix}U": Arr(ranks=(3,), free=((-3, -1) if tie else ())),
        f"{prefix}D": Arr(ranks=(2,)),
    }
    if not tie:
        specs[f"{prefix}W_out"] = Arr(ranks=(2,))
        specs[f"{prefix}b_out"] = Arr(ranks=(1,), optional=True)
    if ln:
        for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta"):
            specs[f"{prefix}{k}"] = Arr(ranks=(1,))
    return specs


TINY = mc.CRATEConfig(
    image_size=4,
    patch_size=2,
    channels=1,
    dim=4,
    depth=1,
    heads=2,
    num_classes=3,
    pool="cls",
    dtype="float64",
)


def _model_inputs(xp, dtype):
    params = mc.init_params(TINY, seed=0, backend=xp, dtype=dtype)
    images = _normal(xp, dtype, (2, 1, 4, 4), 3)
    labels = xp.asarray(np.array([0, 2]), dtype=xp.int64)
    return params, images, labels


def _param_specs(config, prefix="params/"):
    return {f"{prefix}{k}": Arr(ranks=(len(s),)) for k, s in mc_model.param_shapes(config).items()}


def _backward_case(name, forward, backward, out_name="dY", extra_arrays=()):
    """A backward function: the forward's output shape is the only valid dY."""

    def build(xp, dtype):
        out, cache = forward(xp, dtype)
        return {out_name: _normal(xp, dtype, tuple(out.shape), 9), "cache": cache}

    def call(kw):
        result = backward(kw[out_name], kw["cache"])
        dX, grads = result if isinstance(result, tuple) else (result, {})
        return [dX, *grads.values()]

    return Case(name, build, call, {out_name: Arr(ranks=()), "cache": Num("cache")})


def _init_case(name, init, config, dtype):
    """An ``init_params``-like function: ``init(config, seed=, backend=, dtype=)``."""
    return Case(
        name,
        lambda xp, dt: {"config": config, "seed": 0, "backend": "numpy", "dtype": dtype},
        lambda kw: list(
            init(kw["config"], seed=kw["seed"], backend=kw["backend"], dtype=kw["dtype"]).values()
        ),
        {
            "config": Num("config"),
            "seed": Num("int0"),
            "backend": Num("choice"),
            "dtype": Num("choice", none_ok=True),
        },
        coupled=False,
    )


def _intermediates_case(name, intermediates, run_forward):
    """``intermediates(cache)`` of the cache that ``run_forward(xp, dt)`` returns second."""
    return Case(
        name,
        lambda xp, dt: {"cache": run_forward(xp, dt)[1]},
        lambda kw: [a for v in intermediates(kw["cache"]).values() for a in v],
        {"cache": Num("cache")},
    )


def _config_case(name, fn, config):
    """A function of the config alone that returns a number."""
    return Case(
        name,
        lambda xp, dt: {"config": config},
        lambda kw: [np.asarray(float(fn(kw["config"])))],
        {"config": Num("config")},
    )


def ista_margin(layer_caches, config):
    """Smallest |pre-activation| of every ISTA ReLU over ``layer_caches`` (a model cache's
    list of per-layer caches, each with ``["ista"]["X"]`` and ``["ista"]["D"]``; ``config``
    gives η and λ): finite differences need it well above their step h.

    Shared by the FD tests of tests/test_mae.py and tests/test_selfsup.py.
    """
    out = []
    for c in layer_caches:
        X, D = mc.to_numpy(c["ista"]["X"]), mc.to_numpy(c["ista"]["D"])
        P = X + config.eta * ((X - X @ D.T) @ D) - config.eta * config.lam
        out.append(np.abs(P).min())
    return min(out)


# ----------------------------------------------------------------------------
# minicrate.models.lm (reached as mc.lm.<name>) and minicrate.models.mae

LM_TINY = mc.lm.LMConfig(vocab_size=5, context=4, dim=4, depth=1, heads=2, dtype="float64")
LM_MASKED = dataclasses.replace(LM_TINY, form="masked", tie_embedding=False)
LM_VOCAB = Vocab(list("abcde"))


def _ids(xp, values):
    return xp.asarray(np.array(values), dtype=xp.int64)


# token ids: integer arrays from the host or any backend (they are copied to the params' one)
TOKENS = Arr(ranks=(2,), kind="int", free=(-2, -1), any_backend=True)
TOKENS_FIXED = Arr(ranks=(2,), kind="int", any_backend=True)  # its shape is tied to another's
# loss weights / masks: host or any backend, bool, integer or float 0/1
WEIGHTS = Arr(ranks=(2,), any_dtype=True, any_backend=True)


MAE_TINY = mc.MAEConfig(
    image_size=4, patch_size=2, channels=1, dim=4, depth=1, heads=2, dtype="float64"
)
MAE_TIED = dataclasses.replace(MAE_TINY, tie_decoder=True)
# 4 patches of 2x2, 3 masked per image; a float 0/1 mask (bool, int and backend masks are
# valid too: the mutations try them)
MAE_MASK = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])

CHOICES_BAD = {"params": [None, ["U"], "U"]}


# ----------------------------------------------------------------------------
# Mutations and the rule for each


ARRAY_MUTATIONS = (
    "list",
    "int",
    "bool",
    "other_float",
    "other_backend",
    "other_device",
    "nan",
    "inf",
    "neg_inf",
    "empty",
    "rank_up",
    "rank_down",
    "resize",
    "missing",
    # array classes (issue 22); the numpy-only ones apply on the numpy backend only
    "complex",
    "float16",
    "object",
    "readonly",
    "noncontig",
    "matrix",
    "masked",
    "overflow",
)
NUMPY_ONLY = ("object", "readonly", "noncontig", "matrix", "masked")
# "same": the call must work and give the unmutated call's results
SAME_AS_VALID = ("readonly", "noncontig")


def _other_backend(base):
    return "array_api_strict" if base == "numpy" else "numpy"


def _get(kw, path):
    node = kw
    for part in path.split("/"):
        node = node[part]
    return node


def _set(kw, path, value, delete=False):
    """Copy ``kw`` with the entry at ``path`` replaced (dicts are copied, arrays shared)."""
    parts = path.split("/")
    out = dict(kw)
    node = out
    for part in parts[:-1]:
        node[part] = dict(node[part])
        node = node[part]
    if delete:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


def _arrays(kw):
    out = []
    for v in kw.values():
        if isinstance(v, dict):
            out += _arrays(v)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            out.append(v)
    return out


def _coupling(case, kw):
    """(dtype coupled, backend/device coupled): must the mutated array agree with others?
    A backward's dY must agree with the arrays of its forward (in the cache)."""
    if not case.coupled:
        return False, False
    arrays = _arrays(kw)
    floats = [a for a in arrays if "float" in str(a.dtype)]
    backward = "cache" in kw
    return (len(floats) > 1 or backward) and not case.mixed_dtypes_ok, len(arrays) > 1 or backward


def mutate_array(case, kw, path, spec, mutation, base, axis_choice=0):
    """Return ``(new_kwargs, expectation)`` with expectation "raise", "ok" or "either"
    (``None`` when the mutation does not apply)."""
    x = _get(kw, path)
    if x is None:
        return None
    xp = get_backend(base)
    host = to_numpy(x)
    dtype = str(host.dtype)
    dtype_coupled, coupled = _coupling(case, kw)
    back = lambda h, b=base, dt=dtype: host_to(get_backend(b), np.asarray(h), dt)
    is_float = spec.kind == "float"
    if mutation == "list":
        return _set(kw, path, host.tolist()), "raise"
    if mutation == "int":
        return _set(kw, path, back(host, dt="int64" if is_float else "float64")), (
            "ok" if spec.any_dtype else "raise"
        )
    if mutation == "bool":
        return _set(kw, path, xp.asarray(host > 0)), ("ok" if spec.any_dtype else "raise")
    if mutation == "other_float":
        if not is_float:
            return None
        other = "float32" if dtype == "float64" else "float64"
        cast = spec.any_dtype or spec.any_float
        return _set(kw, path, back(host, dt=other)), (
            "raise" if dtype_coupled and not cast else "ok"
        )
    if mutation == "other_backend":
        return _set(kw, path, back(host, b=_other_backend(base))), (
            "raise" if coupled and not spec.any_backend else "ok"
        )
    if mutation == "other_device":
        if base != "array_api_strict":
            return None
        import array_api_strict

        far = x.to_device(array_api_strict.Device("device1"))
        return _set(kw, path, far), ("raise" if coupled and not spec.any_backend else "ok")
    if mutation in ("nan", "inf", "neg_inf"):
        if not is_float or host.size == 0:
            return None
        h = host.copy()
        h.flat[axis_choice % h.size] = {"nan": np.nan, "inf": np.inf, "neg_inf": -np.inf}[mutation]
        if spec.passes_nonfinite:
            return _set(kw, path, back(h)), "passthrough"
        return _set(kw, path, back(h)), ("ok" if mutation in spec.nonfinite_ok else "raise")
    if mutation == "empty":
        if host.ndim == 0:
            return None
        shape = list(host.shape)
        shape[axis_choice % host.ndim] = 0
        return _set(kw, path, back(np.zeros(shape))), ("ok" if spec.empty_ok else "raise")
    if mutation == "rank_up":
        h = np.stack([host, host])
        return _set(kw, path, back(h)), (
            "either" if (not spec.ranks or h.ndim in spec.ranks) else "raise"
        )
    if mutation == "rank_down":
        if host.ndim == 0:
            return None
        h = host[0]
        return _set(kw, path, back(h)), (
            "either" if (not spec.ranks or h.ndim in spec.ranks) else "raise"
        )
    if mutation == "resize":
        if host.ndim == 0:
            return None
        axis = axis_choice % host.ndim
        h = np.concatenate([host, np.take(host, [0], axis=axis)], axis=axis)
        free = {a % host.ndim for a in spec.free if -host.ndim <= a < host.ndim}
        return _set(kw, path, back(h)), ("ok" if axis in free else "raise")
    if mutation == "missing":
        if "/" not in path:
            return None
        return _set(kw, path, None, delete=True), ("ok" if spec.optional else "raise")
    return _mutate_class(kw, path, spec, mutation, base, x, host, back)


def _matrix(host):
    with warnings.catch_warnings():  # NumPy's PendingDeprecationWarning of np.matrix
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(host)


def _mutate_class(kw, path, spec, mutation, base, x, host, back):
    """The array-class mutations: other dtypes (complex, float16, object), NumPy
    array flavours (read-only, strided, ``np.matrix``, masked) and huge values."""
    if mutation in NUMPY_ONLY and (base != "numpy" or not isinstance(x, np.ndarray)):
        return None
    is_float = spec.kind == "float"
    if mutation == "complex":  # the imaginary part would be dropped silently
        return _set(kw, path, back(host + 0.5j, dt="complex128")), "raise"
    if mutation == "float16":  # too coarse for the checks' tolerances: refused unless cast
        if not hasattr(get_backend(base), "float16"):  # array_api_strict has none
            return None
        cast = is_float and (spec.any_dtype or spec.any_float)
        return _set(kw, path, back(host, dt="float16")), ("either" if cast else "raise")
    if mutation == "object":
        return _set(kw, path, host.astype(object)), "raise"
    if mutation == "readonly":
        h = host.copy()
        h.setflags(write=False)
        return _set(kw, path, h), "same"
    if mutation == "noncontig":
        if host.ndim == 0:
            return None
        big = np.zeros(host.shape[:-1] + (2 * host.shape[-1],), host.dtype)
        big[..., ::2] = host
        view = big[..., ::2]  # same values, every other entry of a larger array
        if host.ndim >= 2:
            flipped = np.ascontiguousarray(np.swapaxes(host, -1, -2)).swapaxes(-1, -2)
            if not flipped.flags.c_contiguous:
                view = flipped  # a transposed copy's transpose (Fortran order)
        assert np.array_equal(view, host)
        return _set(kw, path, view), "same"
    if mutation == "matrix":  # 2-D only; `*` and reductions behave differently
        if host.ndim != 2:
            return None
        return _set(kw, path, _matrix(host)), "raise"
    if mutation == "masked":  # the mask would be ignored silently
        return _set(kw, path, np.ma.masked_array(host, mask=np.zeros(host.shape, bool))), "raise"
    if mutation == "overflow":  # one entry near overflow: refused, or a finite result
        if not is_float or host.size == 0 or host.dtype.kind != "f":
            return None
        h = host.copy()
        h.flat[0] = 1e30 if h.dtype == np.float32 else 1e200
        return _set(kw, path, back(h)), ("passthrough" if spec.passes_nonfinite else "either")
    raise AssertionError(mutation)


def mutate_scalar(case, kw, path, spec, bad):
    if spec.kind == "choice" and path in CHOICES_BAD:
        return _set(kw, path, bad), "raise"
    return _set(kw, path, bad), "raise"


def scalar_mutations(path, spec):
    bad = list(CHOICES_BAD.get(path, BAD_SCALARS.get(spec.kind, [])))
    if not spec.none_ok and spec.kind not in ("cache", "config"):
        bad.append(None)
    return bad


def check_outcome(case, kw, expectation, what, reference=None):
    """Call the case; only documented errors may come out, and results must be finite
    (and, for the expectation "same", equal to those of ``reference``, a thunk)."""
    if expectation == "same":
        outputs, want = case.call(kw), reference()
        got = [to_numpy(o) for o in outputs if o is not None and hasattr(o, "shape")]
        want = [to_numpy(o) for o in want if o is not None and hasattr(o, "shape")]
        assert len(got) == len(want), f"{case.name} {what}: {len(got)} outputs, not {len(want)}"
        for g, w in zip(got, want, strict=True):
            tol = 1e-4 if w.dtype == np.float32 else 1e-10
            assert g.shape == w.shape and np.allclose(g, w, rtol=tol, atol=tol, equal_nan=True), (
                f"{case.name} {what}: a different result than the plain array's"
            )
        return "ok"
    try:
        outputs = case.call(kw)
    except DOCUMENTED as err:
        assert str(err), f"{case.name} {what}: {type(err).__name__} with an empty message"
        assert expectation in ("raise", "either"), (
            f"{case.name} {what}: a valid call raised {type(err).__name__}: {err}"
        )
        return "raised"
    assert expectation in ("ok", "either", "passthrough"), f"{case.name} {what}: no error raised"
    if expectation == "passthrough":
        return "ok"
    for out in outputs:
        if out is None or not hasattr(out, "shape"):
            continue
        host = to_numpy(out)
        if host.dtype.kind == "f":
            assert np.all(np.isfinite(host)), f"{case.name} {what}: silent non-finite output"
    return "ok"


def all_mutations(case, base):
    """Every (path, mutation, axis) of a case, for the exhaustive test."""
    out = []
    for path, spec in case.args.items():
        if isinstance(spec, Arr):
            for m in ARRAY_MUTATIONS:
                axes = range(4) if m in ("resize", "empty") else [0]
                out += [("array", path, m, a) for a in axes if (path, m) not in case.skip]
        else:
            out += [
                ("scalar", path, bad, 0)
                for bad in scalar_mutations(path, spec)
                if (path, "*") not in case.skip
            ]
    return out


def run_mutation(case, base, dtype, kind, path, mutation, axis):
    kw = case.build(get_backend(base), dtype)
    spec = case.args[path]
    if kind == "array":
        if path.split("/")[0] not in kw:
            return None
        result = mutate_array(case, kw, path, spec, mutation, base, axis)
    else:
        result = mutate_scalar(case, kw, path, spec, mutation)
    if result is None:
        return None
    new_kw, expectation = result
    reference = lambda: case.call(case.build(get_backend(base), dtype))  # noqa: E731
    return check_outcome(
        case, new_kw, expectation, f"[{base} {dtype}] {path}: {mutation!r} (axis {axis})", reference
    )


# ----------------------------------------------------------------------------
# The three tests every case file runs on its own cases


def case_tests(cases):
    """``test_valid_call_works``, ``test_every_mutation`` and ``test_random_mutations`` over ``cases``."""

    @pytest.mark.parametrize("name", list(cases))
    def test_valid_call_works(name):
        """The baseline of every case is a valid call with finite results."""
        case = cases[name]
        for base in ("numpy", "array_api_strict"):
            assert check_outcome(case, case.build(get_backend(base), "float64"), "ok", f"[{base}] valid") == "ok"

    @pytest.mark.parametrize("name", list(cases))
    def test_every_mutation(name):
        case = cases[name]
        outcomes = []
        for kind, path, mutation, axis in all_mutations(case, "numpy"):
            base = "array_api_strict" if mutation == "other_device" else "numpy"
            outcomes.append(run_mutation(case, base, "float64", kind, path, mutation, axis))
        assert "raised" in outcomes  # every case has mutations that must be refused

    @given(data=st.data())
    @pytest.mark.parametrize("name", list(cases))
    def test_random_mutations(name, data):
        case = cases[name]
        base = data.draw(st.sampled_from(BASES), label="backend")
        dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
        kind, path, mutation, _ = data.draw(st.sampled_from(all_mutations(case, base)), label="mutation")
        axis = data.draw(st.integers(0, 7), label="axis")
        run_mutation(case, base, dtype, kind, path, mutation, axis)

    return test_valid_call_works, test_every_mutation, test_random_mutations


# every name above, underscored helpers too, for the case files' star import
__all__ = [n for n in dict(globals()) if not n.startswith("__") and n != "annotations"]
