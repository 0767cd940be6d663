"""Malformed input to every public function gives a documented error (issue 9).

Each public function gets a :class:`Case`: a valid call on small arrays and,
for every argument, what may change without making the call invalid.  A
*mutation* then breaks one argument at a time -- not an array, an integer or
boolean dtype, the other float dtype, another backend, another device
(``array_api_strict.Device("device1")``), NaN/inf entries, an empty axis, one
axis more or less, one axis longer, or a bad scalar (ε <= 0, η or λ < 0, NaN,
a string, ...).  The rules below say for each mutation whether the call must
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
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.core.backend import get_backend, host_to, to_numpy
from minicrate.core.validate import finite_checks
from minicrate.data.text import Vocab
from minicrate.models import classifier as mc_model

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


# ----------------------------------------------------------------------------
# The cases: one per public function (and per form where forms differ)


def _rates_cases():
    Z = lambda xp, dt: _away(xp, dt, (2, 5, 4), 0)
    U = lambda xp, dt: _bases(xp, dt, 2, 4, 2, 1)
    z_any = Arr(ranks=(2, 3, 4), free=(-4, -3, -2, -1))
    z_tok = Arr(ranks=(2, 3, 4), free=(-4, -3, -2))
    u = Arr(ranks=(3,), free=(-3, -1))
    out = lambda r: [r] if not isinstance(r, tuple) else list(r)
    return [
        Case(
            "coding_rate",
            lambda xp, dt: {"Z": Z(xp, dt), "eps": 0.5},
            lambda kw: out(mc.coding_rate(kw["Z"], kw["eps"])),
            {"Z": z_any, "eps": Num("positive")},
            coupled=False,
        ),
        Case(
            "coding_rate_grad",
            lambda xp, dt: {"Z": Z(xp, dt), "eps": 0.5},
            lambda kw: out(mc.coding_rate_grad(kw["Z"], kw["eps"])),
            {"Z": z_any, "eps": Num("positive")},
            coupled=False,
        ),
        Case(
            "compression_rate",
            lambda xp, dt: {"Z": Z(xp, dt), "U": U(xp, dt), "eps": 0.5},
            lambda kw: out(mc.compression_rate(kw["Z"], kw["U"], kw["eps"])),
            {"Z": z_tok, "U": u, "eps": Num("positive")},
        ),
        Case(
            "compression_rate_grad",
            lambda xp, dt: {"Z": Z(xp, dt), "U": U(xp, dt), "eps": 0.5},
            lambda kw: out(mc.compression_rate_grad(kw["Z"], kw["U"], kw["eps"])),
            {"Z": z_tok, "U": u, "eps": Num("positive")},
        ),
        Case(
            "rate_reduction",
            lambda xp, dt: {"Z": Z(xp, dt), "U": U(xp, dt), "eps": 0.5},
            lambda kw: out(mc.rate_reduction(kw["Z"], kw["U"], kw["eps"])),
            {"Z": z_tok, "U": u, "eps": Num("positive")},
        ),
        Case(
            "sparse_rate_reduction",
            lambda xp, dt: {"Z": Z(xp, dt), "U": U(xp, dt), "eps": 0.5, "lam": 0.1},
            lambda kw: out(mc.sparse_rate_reduction(kw["Z"], kw["U"], kw["eps"], kw["lam"])),
            {"Z": z_tok, "U": u, "eps": Num("positive"), "lam": Num("nonneg")},
        ),
        Case(
            "measured_compression_rate",
            lambda xp, dt: {"X": Z(xp, dt), "U": U(xp, dt), "eps_sq": 0.01, "reduction": "none"},
            lambda kw: out(
                mc.measured_compression_rate(
                    kw["X"], kw["U"], eps_sq=kw["eps_sq"], reduction=kw["reduction"]
                )
            ),
            {"X": z_tok, "U": u, "eps_sq": Num("positive"), "reduction": Num("choice")},
        ),
        Case(
            "nonzero_fraction",
            lambda xp, dt: {"Z": Z(xp, dt), "reduction": "mean"},
            lambda kw: out(mc.nonzero_fraction(kw["Z"], reduction=kw["reduction"])),
            {"Z": z_any, "reduction": Num("choice")},
            coupled=False,
        ),
    ]


def _block_cases():
    cases = []
    lin_build = lambda xp, dt: {
        "X": _normal(xp, dt, (2, 3, 4), 0),
        "W": _normal(xp, dt, (5, 4), 1),
        "b": _normal(xp, dt, (5,), 2),
    }
    cases.append(
        Case(
            "linear_forward",
            lin_build,
            lambda kw: [mc.linear_forward(kw["X"], kw["W"], kw["b"])[0]],
            {
                "X": Arr(ranks=(1, 2, 3, 4), free=(-3, -2)),
                "W": Arr(ranks=(2,)),
                "b": Arr(ranks=(1,)),
            },
        )
    )
    cases.append(
        _backward_case(
            "linear_backward",
            lambda xp, dt: mc.linear_forward(**lin_build(xp, dt)),
            mc.linear_backward,
        )
    )
    cases.append(
        Case(
            "softmax",
            lambda xp, dt: {"S": _normal(xp, dt, (2, 3, 4), 0, 3.0), "axis": -1},
            lambda kw: [mc.softmax(kw["S"], axis=kw["axis"])],
            {
                "S": Arr(ranks=(1, 2, 3, 4), free=(-3, -2, -1), nonfinite_ok=("neg_inf",)),
                "axis": Num("axis"),
            },
            coupled=False,
        )
    )

    def softmax_pair(xp, dt):
        A = mc.softmax(_normal(xp, dt, (2, 3, 4), 0))
        return {"dA": _normal(xp, dt, (2, 3, 4), 1), "A": A, "axis": -1}

    cases.append(
        Case(
            "softmax_backward",
            softmax_pair,
            lambda kw: [mc.softmax_backward(kw["dA"], kw["A"], axis=kw["axis"])],
            {"dA": Arr(ranks=(3,)), "A": Arr(ranks=(3,)), "axis": Num("axis")},
        )
    )
    cases.append(
        Case(
            "relu",
            lambda xp, dt: {"X": _away(xp, dt, (2, 3), 0)},
            lambda kw: [mc.relu(kw["X"])],
            {"X": Arr(ranks=(1, 2, 3), free=(-2, -1))},
            coupled=False,
        )
    )

    ln_build = lambda xp, dt: {
        "X": _normal(xp, dt, (2, 3, 4), 0),
        "gamma": _normal(xp, dt, (4,), 1),
        "beta": _normal(xp, dt, (4,), 2),
        "eps": 1e-5,
    }
    cases.append(
        Case(
            "layernorm_forward",
            ln_build,
            lambda kw: [mc.layernorm_forward(kw["X"], kw["gamma"], kw["beta"], eps=kw["eps"])[0]],
            {
                "X": Arr(ranks=(1, 2, 3, 4), free=(-3, -2)),
                "gamma": Arr(ranks=(1,)),
                "beta": Arr(ranks=(1,)),
                "eps": Num("positive"),
            },
        )
    )
    cases.append(
        _backward_case(
            "layernorm_backward",
            lambda xp, dt: mc.layernorm_forward(**{k: v for k, v in ln_build(xp, dt).items()}),
            mc.layernorm_backward,
        )
    )

    def mssa_build(xp, dt, tie=False):
        kw = {
            "Z": _normal(xp, dt, (2, 3, 4), 0),
            "U": _bases(xp, dt, 2, 4, 2, 1),
            "W_out": None,
            "b_out": None,
            "scale": None,
            "tied_scale": 1.0,
            "causal": False,
        }
        if not tie:
            kw["W_out"], kw["b_out"] = (
                _normal(xp, dt, (4, 4), 2, 0.5),
                _normal(xp, dt, (4,), 3, 0.1),
            )
        return kw

    def mssa_call(kw):
        return [
            mc.mssa_forward(
                kw["Z"],
                kw["U"],
                kw["W_out"],
                kw["b_out"],
                scale=kw["scale"],
                causal=kw["causal"],
                tied_scale=kw["tied_scale"],
            )[0]
        ]

    z3 = Arr(ranks=(2, 3, 4), free=(-4, -3, -2))
    cases.append(
        Case(
            "mssa_forward",
            mssa_build,
            mssa_call,
            {
                "Z": z3,
                "U": Arr(ranks=(3,)),
                "W_out": Arr(ranks=(2,)),
                "b_out": Arr(ranks=(1,)),
                "scale": Num("positive", none_ok=True),
                "tied_scale": Num("real"),
            },
        )
    )
    cases.append(
        Case(
            "mssa_forward[tied,causal]",
            lambda xp, dt: {**mssa_build(xp, dt, tie=True), "causal": True},
            mssa_call,
            {
                "Z": z3,
                "U": Arr(ranks=(3,), free=(-3, -1)),
                "scale": Num("positive", none_ok=True),
                "tied_scale": Num("real"),
            },
        )
    )
    cases.append(
        _backward_case(
            "mssa_backward", lambda xp, dt: mssa_call_full(mssa_build(xp, dt)), mc.mssa_backward
        )
    )
    cases.append(
        _backward_case(
            "mssa_backward[tied]",
            lambda xp, dt: mssa_call_full(mssa_build(xp, dt, tie=True)),
            mc.mssa_backward,
        )
    )

    ista_build = lambda xp, dt: {
        "X": _away(xp, dt, (2, 3, 4), 0),
        "D": _host(xp, np.eye(4) + 0.1 * _rng(1).standard_normal((4, 4)), dt),
        "eta": 0.1,
        "lam": 0.1,
    }
    cases.append(
        Case(
            "ista_forward",
            ista_build,
            lambda kw: [mc.ista_forward(kw["X"], kw["D"], eta=kw["eta"], lam=kw["lam"])[0]],
            {
                "X": Arr(ranks=(1, 2, 3, 4), free=(-3, -2)),
                "D": Arr(ranks=(2,)),
                "eta": Num("nonneg"),
                "lam": Num("nonneg"),
            },
        )
    )
    cases.append(
        _backward_case(
            "ista_backward", lambda xp, dt: mc.ista_forward(**ista_build(xp, dt)), mc.ista_backward
        )
    )
    cases.append(
        Case(
            "lasso_objective",
            lambda xp, dt: {
                **{k: v for k, v in ista_build(xp, dt).items() if k in ("X", "D", "lam")},
                "A": _away(xp, dt, (2, 3, 4), 5),
            },
            lambda kw: [mc.lasso_objective(kw["A"], kw["X"], kw["D"], kw["lam"])],
            {
                "A": Arr(ranks=(3,)),
                "X": Arr(ranks=(3,)),
                "D": Arr(ranks=(2,)),
                "lam": Num("nonneg"),
            },
        )
    )
    return cases


def mssa_call_full(kw):
    return mc.mssa_forward(
        kw["Z"],
        kw["U"],
        kw["W_out"],
        kw["b_out"],
        scale=kw["scale"],
        causal=kw["causal"],
        tied_scale=kw["tied_scale"],
    )


def _embed_params(xp, dt, Pd=4, d=4):
    return {
        "ln_in_gamma": _ones(xp, dt, Pd),
        "ln_in_beta": _normal(xp, dt, (Pd,), 1, 0.1),
        "W": _normal(xp, dt, (d, Pd), 2),
        "b": _normal(xp, dt, (d,), 3),
        "ln_out_gamma": _ones(xp, dt, d),
        "ln_out_beta": _normal(xp, dt, (d,), 4, 0.1),
    }


def _embedding_cases():
    cases = []
    cases.append(
        Case(
            "patchify",
            lambda xp, dt: {"images": _normal(xp, dt, (2, 1, 4, 6), 0), "patch_size": 2},
            lambda kw: [mc.patchify(kw["images"], kw["patch_size"])],
            {"images": Arr(ranks=(4,), free=(-4, -3)), "patch_size": Num("int1")},
            coupled=False,
        )
    )
    cases.append(
        Case(
            "unpatchify",
            lambda xp, dt: {
                "patches": _normal(xp, dt, (2, 6, 4), 0),
                "patch_size": 2,
                "channels": 1,
                "height": 4,
                "width": 6,
            },
            lambda kw: [
                mc.unpatchify(
                    kw["patches"], kw["patch_size"], kw["channels"], kw["height"], kw["width"]
                )
            ],
            {
                "patches": Arr(ranks=(3,), free=(-3,)),
                "patch_size": Num("int1"),
                "channels": Num("int1"),
                "height": Num("int1"),
                "width": Num("int1"),
            },
            coupled=False,
        )
    )
    pe_build = lambda xp, dt: {
        "patches": _normal(xp, dt, (2, 3, 4), 0),
        "params": _embed_params(xp, dt),
        "ln_eps": 1e-5,
    }
    pe_specs = {"patches": Arr(ranks=(2, 3, 4), free=(-4, -3, -2)), "ln_eps": Num("positive")}
    pe_specs.update(
        {
            f"params/{k}": Arr(ranks=(len(s),))
            for k, s in {
                "ln_in_gamma": (4,),
                "ln_in_beta": (4,),
                "W": (4, 4),
                "b": (4,),
                "ln_out_gamma": (4,),
                "ln_out_beta": (4,),
            }.items()
        }
    )
    cases.append(
        Case(
            "patch_embed_forward",
            pe_build,
            lambda kw: [
                mc.patch_embed_forward(kw["patches"], kw["params"], ln_eps=kw["ln_eps"])[0]
            ],
            pe_specs,
        )
    )
    cases.append(
        _backward_case(
            "patch_embed_backward",
            lambda xp, dt: mc.patch_embed_forward(**pe_build(xp, dt)),
            mc.patch_embed_backward,
        )
    )
    acp_build = lambda xp, dt: {
        "tokens": _normal(xp, dt, (2, 3, 4), 0),
        "cls_token": _normal(xp, dt, (4,), 1),
        "pos_embedding": _normal(xp, dt, (4, 4), 2),
    }
    cases.append(
        Case(
            "add_cls_pos_forward",
            acp_build,
            lambda kw: [
                mc.add_cls_pos_forward(kw["tokens"], kw["cls_token"], kw["pos_embedding"])[0]
            ],
            {
                "tokens": Arr(ranks=(3,), free=(-3,)),
                "cls_token": Arr(ranks=(1,)),
                "pos_embedding": Arr(ranks=(2,)),
            },
        )
    )
    cases.append(
        _backward_case(
            "add_cls_pos_backward",
            lambda xp, dt: mc.add_cls_pos_forward(**acp_build(xp, dt)),
            mc.add_cls_pos_backward,
            out_name="dZ",
        )
    )
    ce_build = lambda xp, dt: {
        "logits": _normal(xp, dt, (3, 5), 0, 2.0),
        "labels": xp.asarray(np.array([0, 4, 2]), dtype=xp.int64),
        "smoothing": 0.1,
    }
    cases.append(
        Case(
            "cross_entropy_forward",
            ce_build,
            lambda kw: [
                mc.cross_entropy_forward(kw["logits"], kw["labels"], smoothing=kw["smoothing"])[0]
            ],
            {
                "logits": Arr(ranks=(2,), free=(-1,)),
                "labels": Arr(ranks=(1,), kind="int"),
                "smoothing": Num("unit"),
            },
        )
    )

    def ce_backward_build(xp, dt):
        _, cache = mc.cross_entropy_forward(**ce_build(xp, dt))
        return {"dloss": 1.0, "cache": cache}

    cases.append(
        Case(
            "cross_entropy_backward",
            ce_backward_build,
            lambda kw: [mc.cross_entropy_backward(kw["dloss"], kw["cache"])],
            {"dloss": Num("real"), "cache": Num("cache")},
        )
    )
    return cases


def _encoder_cases():
    cases = []

    def build(xp, dt, tie=False, ln=True):
        return {
            "Z": _normal(xp, dt, (2, 3, 4), 0),
            "params": _layer_params(xp, dt, tie=tie, ln=ln),
            "scale": None,
            "eta": 0.1,
            "lam": 0.1,
            "ln_eps": 1e-5,
            "tied_scale": 1.0,
        }

    def call_full(kw, tie=False, ln=True, causal=False):
        return mc.encoder_layer_forward(
            kw["Z"],
            kw["params"],
            scale=kw["scale"],
            tie_out=tie,
            use_layernorm=ln,
            eta=kw["eta"],
            lam=kw["lam"],
            ln_eps=kw["ln_eps"],
            tied_scale=kw["tied_scale"],
            causal=causal,
        )

    opts = {
        "scale": Num("positive", none_ok=True),
        "eta": Num("nonneg"),
        "lam": Num("nonneg"),
        "ln_eps": Num("positive"),
        "tied_scale": Num("real"),
    }
    z3 = Arr(ranks=(2, 3, 4), free=(-4, -3, -2))
    cases.append(
        Case(
            "encoder_layer_forward",
            build,
            lambda kw: [call_full(kw)[0]],
            {"Z": z3, **_layer_specs(), **opts, "params": Num("choice")},
        )
    )
    cases.append(
        Case(
            "encoder_layer_forward[paper form]",
            lambda xp, dt: build(xp, dt, tie=True, ln=False),
            lambda kw: [call_full(kw, tie=True, ln=False, causal=True)[0]],
            {"Z": z3, **_layer_specs(tie=True, ln=False), **opts},
        )
    )
    cases.append(
        _backward_case(
            "encoder_layer_backward",
            lambda xp, dt: call_full(build(xp, dt)),
            mc.encoder_layer_backward,
        )
    )
    return cases


def _model_cases():
    cases = []

    def fwd_build(xp, dt):
        params, images, _ = _model_inputs(xp, dt)
        return {"params": params, "images": images, "config": TINY}

    specs = {"images": Arr(ranks=(4,), free=(-4,)), "config": Num("config"), **_param_specs(TINY)}
    cases.append(
        Case(
            "forward",
            fwd_build,
            lambda kw: [mc.forward(kw["params"], kw["images"], kw["config"])[0]],
            specs,
        )
    )
    cases.append(
        _backward_case(
            "backward",
            lambda xp, dt: mc.forward(*_model_inputs(xp, dt)[:2], TINY),
            lambda dl, cache: (None, mc.backward(dl, cache)),
            out_name="dlogits",
        )
    )

    def lag_build(xp, dt):
        params, images, labels = _model_inputs(xp, dt)
        return {"params": params, "images": images, "labels": labels, "config": TINY}

    def lag_call(kw):
        loss, grads, logits = mc.loss_and_grads(
            kw["params"], kw["images"], kw["labels"], kw["config"]
        )
        return [np.asarray(loss), logits, *grads.values()]

    cases.append(
        Case(
            "loss_and_grads",
            lag_build,
            lag_call,
            {**specs, "images": Arr(ranks=(4,)), "labels": Arr(ranks=(1,), kind="int")},
        )
    )
    cases.append(_init_case("init_params", mc.init_params, TINY, "float64"))
    cases.append(_config_case("param_count", mc.param_count, TINY))

    cases.append(
        _intermediates_case("intermediates", mc.intermediates,
                            lambda xp, dt: mc.forward(*_model_inputs(xp, dt)[:2], TINY))
    )
    cases.append(
        Case(
            "preset",
            lambda xp, dt: {"name": "digits"},
            lambda kw: [np.asarray(mc.preset(kw["name"]).dim)],
            {"name": Num("choice")},
        )
    )
    return cases


def _config_cases():
    """CRATEConfig fields: each bad value must be refused at construction."""
    good = dataclasses.asdict(TINY)
    kinds = {
        "image_size": "int1",
        "patch_size": "int1",
        "channels": "int1",
        "dim": "int1",
        "depth": "int1",
        "heads": "int1",
        "num_classes": "int1",
        "pool": "choice",
        "eta": "nonneg",
        "lam": "nonneg",
        "attn_scale": "positive",
        "ln_eps": "positive",
        "label_smoothing": "unit",
        "tie_out": "bool",
        "use_layernorm": "bool",
        "dtype": "choice",
    }
    specs = {k: Num(v, none_ok=(k == "attn_scale")) for k, v in kinds.items()}
    return [
        Case(
            "CRATEConfig",
            lambda xp, dt: dict(good),
            lambda kw: [np.asarray(mc.CRATEConfig(**kw).dim)],
            specs,
        )
    ]


def _backend_cases():
    return [
        Case(
            "get_backend",
            lambda xp, dt: {"name": "numpy"},
            lambda kw: [mc.get_backend(kw["name"]).ones(1)],
            {"name": Num("choice")},
        ),
        Case(
            "to_numpy",
            lambda xp, dt: {"x": _normal(xp, dt, (2, 3), 0)},
            lambda kw: [mc.to_numpy(kw["x"])],
            {
                "x": Arr(
                    ranks=(0, 1, 2, 3),
                    free=(-2, -1),
                    any_dtype=True,
                    passes_nonfinite=True,
                    empty_ok=True,
                )
            },
            coupled=False,
        ),
    ]


def _gradcheck_cases():
    f = lambda x: x * x

    def build(xp, dt):
        x = _normal(xp, "float64", (2, 3), 0)
        return {
            "x": x,
            "cotangent": _normal(xp, "float64", (2, 3), 1),
            "grad": 2 * x * _normal(xp, "float64", (2, 3), 1),
            "h": 1e-3,
            "rtol": 1e-6,
            "max_entries": 4,
        }

    def call(kw):
        report = mc.check_vjp(
            f,
            {"x": kw["x"]},
            kw["cotangent"],
            {"x": kw["grad"]},
            h=kw["h"],
            rtol=kw["rtol"],
            max_entries=kw["max_entries"],
        )
        return [np.asarray(report.max_rel_error)]

    return [
        Case(
            "check_vjp",
            build,
            call,
            {
                "x": Arr(ranks=(2,)),
                "cotangent": Arr(ranks=(2,)),
                "grad": Arr(ranks=(2,), any_backend=True),
                "h": Num("positive"),
                "rtol": Num("positive"),
                "max_entries": Num("int1", none_ok=True),
            },
        ),
        Case(
            "rel_error",
            lambda xp, dt: {"a": _normal(xp, dt, (2, 3), 0), "b": _normal(xp, dt, (2, 3), 1)},
            lambda kw: [np.asarray(mc.rel_error(kw["a"], kw["b"]))],
            {"a": Arr(ranks=(2,)), "b": Arr(ranks=(2,))},
            mixed_dtypes_ok=True,
        ),
    ]


def _decoder_cases():
    cases = []

    def build(xp, dt):
        params = _layer_params(xp, dt)
        params = {k: v for k, v in params.items() if k != "D"}
        params["E"] = _host(xp, np.eye(4) + 0.1 * _rng(7).standard_normal((4, 4)), dt)
        return {"Z": _normal(xp, dt, (2, 3, 4), 0), "params": params}

    specs = {
        "Z": Arr(ranks=(2, 3, 4), free=(-4, -3, -2)),
        **{k: v for k, v in _layer_specs().items() if k != "params/D"},
        "params/E": Arr(ranks=(2,)),
    }
    cases.append(
        Case(
            "decoder_layer_forward",
            build,
            lambda kw: [mc.decoder_layer_forward(kw["Z"], kw["params"])[0]],
            specs,
        )
    )
    backward = _backward_case(
        "decoder_layer_backward",
        lambda xp, dt: mc.decoder_layer_forward(**build(xp, dt)),
        mc.decoder_layer_backward,
    )
    cases.append(backward)

    def dlp_build(xp, dt):
        layer = build(xp, dt)["params"]
        return {"params": {f"decoder.0.{k}": v for k, v in layer.items()}, "i": 0, "depth": 1}

    cases.append(
        Case(
            "decoder_layer_params",
            dlp_build,
            lambda kw: list(
                mc.decoder_layer_params(kw["params"], kw["i"], kw["depth"])[0].values()
            ),
            {"params": Num("choice"), "i": Num("int0"), "depth": Num("int1")},
        )
    )
    cases.append(
        Case(
            "mssa_roundtrip",
            lambda xp, dt: {
                "Z": _normal(xp, dt, (2, 3, 4), 0),
                "U": _bases(xp, dt, 2, 4, 2, 1),
                "kappa": 0.1,
            },
            lambda kw: [mc.mssa_roundtrip(kw["Z"], kw["U"], kw["kappa"])],
            {
                "Z": Arr(ranks=(2, 3, 4), free=(-4, -3, -2)),
                "U": Arr(ranks=(3,), free=(-3, -1)),
                "kappa": Num("nonneg"),
            },
        )
    )
    cases.append(
        Case(
            "synthesize",
            lambda xp, dt: {"A": _away(xp, dt, (2, 3, 4), 0), "D": _normal(xp, dt, (4, 4), 1)},
            lambda kw: [mc.synthesize(kw["A"], kw["D"])],
            {"A": Arr(ranks=(1, 2, 3, 4), free=(-3, -2)), "D": Arr(ranks=(2,), free=(-2,))},
        )
    )
    return cases


# ----------------------------------------------------------------------------
# minicrate.models.lm (reached as mc.lm.<name>) and minicrate.models.mae

LM_TINY = mc.lm.LMConfig(vocab_size=5, context=4, dim=4, depth=1, heads=2, dtype="float64")
LM_MASKED = dataclasses.replace(LM_TINY, form="masked", tie_embedding=False)
LM_VOCAB = Vocab(list("abcde"))


def _ids(xp, values):
    return xp.asarray(np.array(values), dtype=xp.int64)


def _lm_tokens(xp, seed=0, high=5, shape=(2, 3)):
    return _ids(xp, _rng(seed).integers(0, high, size=shape))


def _lm_param_specs(config, prefix="params/"):
    return {f"{prefix}{k}": Arr(ranks=(len(s),)) for k, s in mc.lm.param_shapes(config).items()}


# token ids: integer arrays from the host or any backend (they are copied to the params' one)
TOKENS = Arr(ranks=(2,), kind="int", free=(-2, -1), any_backend=True)
TOKENS_FIXED = Arr(ranks=(2,), kind="int", any_backend=True)  # its shape is tied to another's
# loss weights / masks: host or any backend, bool, integer or float 0/1
WEIGHTS = Arr(ranks=(2,), any_dtype=True, any_backend=True)


def _lm_cases():
    lm = mc.lm
    cases = []
    kinds = {
        "vocab_size": "int1", "form": "choice", "context": "int1", "dim": "int1", "depth": "int1",
        "heads": "int1", "tie_embedding": "bool", "mask_rate": "unit", "eta": "nonneg",
        "lam": "nonneg", "tie_out": "bool", "attn_scale": "positive", "use_layernorm": "bool",
        "ln_eps": "positive", "embed_std": "nonneg", "pos_init": "choice", "dtype": "choice",
    }
    good = dataclasses.asdict(LM_TINY)
    cases.append(
        Case(
            "lm.LMConfig",
            lambda xp, dt: dict(good),
            lambda kw: [np.asarray(lm.LMConfig(**kw).dim)],
            {k: Num(v, none_ok=(k == "attn_scale")) for k, v in kinds.items()},
        )
    )
    cases.append(_init_case("lm.init_params", lm.init_params, LM_TINY, "float64"))
    cases.append(_config_case("lm.param_count", lm.param_count, LM_TINY))
    cases.append(_config_case("lm.param_shapes", lambda c: len(lm.param_shapes(c)), LM_TINY))
    cases.append(
        Case(
            "lm.layer_params",
            lambda xp, dt: {"params": lm.init_params(LM_TINY, backend=xp, dtype=dt), "layer": 0},
            lambda kw: list(lm.layer_params(kw["params"], kw["layer"]).values()),
            {"params": Num("choice"), "layer": Num("int0")},
        )
    )
    cases.append(
        Case(
            "lm.sinusoidal_positions",
            lambda xp, dt: {"n": 4, "d": 4, "xp": "numpy", "dtype": "float64", "rms": 1.0},
            lambda kw: [
                lm.sinusoidal_positions(
                    kw["n"], kw["d"], xp=kw["xp"], dtype=kw["dtype"], rms=kw["rms"]
                )
            ],
            {
                "n": Num("int1"),
                "d": Num("int1"),
                "xp": Num("choice"),
                "dtype": Num("choice"),
                "rms": Num("nonneg"),
            },
            coupled=False,
        )
    )

    emb_build = lambda xp, dt: {
        "tokens": _lm_tokens(xp, 0, high=6),
        "E": _normal(xp, dt, (6, 4), 1),
        "P": _normal(xp, dt, (4, 4), 2),
    }
    cases.append(
        Case(
            "lm.embed_forward",
            emb_build,
            lambda kw: [lm.embed_forward(kw["tokens"], kw["E"], kw["P"])[0]],
            {"tokens": TOKENS, "E": Arr(ranks=(2,), free=(-2,)), "P": Arr(ranks=(2,), free=(-2,))},
        )
    )
    cases.append(
        _backward_case(
            "lm.embed_backward",
            lambda xp, dt: lm.embed_forward(**emb_build(xp, dt)),
            lambda dZ0, cache: (None, lm.embed_backward(dZ0, cache)),
            out_name="dZ0",
        )
    )

    head_build = lambda xp, dt: {
        "Z": _normal(xp, dt, (2, 3, 4), 0),
        "gamma": _host(xp, 1 + 0.1 * _rng(1).standard_normal(4), dt),
        "beta": _normal(xp, dt, (4,), 2, 0.1),
        "W": _normal(xp, dt, (5, 4), 3),
        "b": _normal(xp, dt, (5,), 4),
        "eps": 1e-5,
    }
    cases.append(
        Case(
            "lm.head_forward",
            head_build,
            lambda kw: [
                lm.head_forward(
                    kw["Z"], kw["gamma"], kw["beta"], kw["W"], kw["b"], eps=kw["eps"]
                )[0]
            ],
            {
                "Z": Arr(ranks=(3,), free=(-3, -2)),
                "gamma": Arr(ranks=(1,)),
                "beta": Arr(ranks=(1,)),
                "W": Arr(ranks=(2,)),
                "b": Arr(ranks=(1,)),
                "eps": Num("positive"),
            },
        )
    )
    cases.append(
        _backward_case(
            "lm.head_backward",
            lambda xp, dt: lm.head_forward(**head_build(xp, dt)),
            lm.head_backward,
            out_name="dlogits",
        )
    )

    def loss_build(xp, dt):
        weights = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
        return {
            "logits": _normal(xp, dt, (2, 3, 5), 0, 2.0),
            "targets": _lm_tokens(xp, 1),
            "weights": _host(xp, weights, dt),
        }

    cases.append(
        Case(
            "lm.lm_loss_forward",
            loss_build,
            lambda kw: [lm.lm_loss_forward(kw["logits"], kw["targets"], kw["weights"])[0]],
            {
                "logits": Arr(ranks=(3,), free=(-1,)),
                "targets": TOKENS_FIXED,
                "weights": WEIGHTS,
            },
            # targets and weights may come from the host or another backend (they are
            # copied to the logits'), and the weights may have any real dtype
            coupled=False,
        )
    )

    def loss_backward_build(xp, dt):
        _, cache = lm.lm_loss_forward(**loss_build(xp, dt))
        return {"dloss": 1.0, "cache": cache}

    cases.append(
        Case(
            "lm.lm_loss_backward",
            loss_backward_build,
            lambda kw: [lm.lm_loss_backward(kw["dloss"], kw["cache"])],
            {"dloss": Num("real"), "cache": Num("cache")},
        )
    )

    def fwd_build(xp, dt, config=LM_TINY):
        return {
            "params": lm.init_params(config, seed=0, backend=xp, dtype=dt),
            "tokens": _lm_tokens(xp, 2, high=config.embed_rows),
            "config": config,
        }

    fwd_call = lambda kw: [lm.forward(kw["params"], kw["tokens"], kw["config"])[0]]
    cases.append(
        Case(
            "lm.forward",
            fwd_build,
            fwd_call,
            {"tokens": TOKENS, "config": Num("config"), **_lm_param_specs(LM_TINY)},
        )
    )
    cases.append(
        Case(
            "lm.forward[masked, untied head, plain layers]",
            lambda xp, dt: fwd_build(xp, dt, LM_MASKED),
            lambda kw: [lm.forward(kw["params"], kw["tokens"], kw["config"], fast=False)[0]],
            {"tokens": TOKENS, "config": Num("config"), **_lm_param_specs(LM_MASKED)},
        )
    )
    cases.append(
        _backward_case(
            "lm.backward",
            lambda xp, dt: lm.forward(**fwd_build(xp, dt)),
            lambda dl, cache: (None, lm.backward(dl, cache)),
            out_name="dlogits",
        )
    )

    def lag_build(xp, dt):
        kw = fwd_build(xp, dt, LM_MASKED)
        return {
            "params": kw["params"],
            "inputs": kw["tokens"],
            "targets": _lm_tokens(xp, 3),
            "config": LM_MASKED,
            "weights": _host(xp, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), dt),
        }

    def lag_call(kw):
        loss, grads, logits = lm.loss_and_grads(
            kw["params"], kw["inputs"], kw["targets"], kw["config"], kw["weights"]
        )
        return [np.asarray(loss), logits, *grads.values()]

    cases.append(
        Case(
            "lm.loss_and_grads",
            lag_build,
            lag_call,
            {
                "inputs": TOKENS_FIXED,
                "targets": TOKENS_FIXED,
                "weights": WEIGHTS,
                "config": Num("config"),
                **_lm_param_specs(LM_MASKED),
            },
        )
    )

    cases.append(
        _intermediates_case("lm.intermediates", lm.intermediates, lambda xp, dt: lm.forward(**fwd_build(xp, dt)))
    )
    cases.append(
        Case(
            "lm.next_char_distribution",
            lambda xp, dt: {
                "logits": _normal(xp, dt, (5,), 0, 2.0),
                "temperature": 0.7,
                "top_k": 3,
            },
            lambda kw: [
                lm.next_char_distribution(
                    kw["logits"], temperature=kw["temperature"], top_k=kw["top_k"]
                )
            ],
            {
                # (rank 0 listed because the host copy of a 0-d slice comes back (1,): a valid
                # one-character distribution)
                "logits": Arr(ranks=(0, 1), free=(-1,)),
                "temperature": Num("positive"),
                "top_k": Num("int1", none_ok=True),
            },
            coupled=False,
        )
    )

    def gen_build(xp, dt):
        return {
            "params": lm.init_params(LM_TINY, seed=0, backend=xp, dtype=dt),
            "config": LM_TINY,
            "vocab": LM_VOCAB,
            "prompt": "abc",
            "length": 2,
            "temperature": 0.8,
            "top_k": 3,
            "seed": 0,
        }

    def gen_call(kw):
        text = mc.lm.generate(
            kw["params"], kw["config"], kw["vocab"], kw["prompt"], kw["length"],
            temperature=kw["temperature"], top_k=kw["top_k"], seed=kw["seed"],
        )
        assert isinstance(text, str) and len(text) == 3 + kw["length"]
        return []

    cases.append(
        Case(
            "lm.generate",
            gen_build,
            gen_call,
            {
                "config": Num("config"),
                "vocab": Num("choice"),
                "prompt": Num("choice"),
                "length": Num("int0"),
                "temperature": Num("nonneg"),
                "top_k": Num("int1", none_ok=True),
                "seed": Num("int0"),
                **_lm_param_specs(LM_TINY),
            },
        )
    )

    def fill_build(xp, dt):
        return {
            "params": lm.init_params(LM_MASKED, seed=0, backend=xp, dtype=dt),
            "config": LM_MASKED,
            "vocab": LM_VOCAB,
            "text": "a_c",
            "mask_char": "_",
        }

    def fill_call(kw):
        text, where = lm.fill_masks(
            kw["params"], kw["config"], kw["vocab"], kw["text"], mask_char=kw["mask_char"]
        )
        assert where == [1] and len(text) == 3
        return []

    cases.append(
        Case(
            "lm.fill_masks",
            fill_build,
            fill_call,
            {
                "config": Num("config"),
                "vocab": Num("choice"),
                "text": Num("choice"),
                "mask_char": Num("choice"),
                **_lm_param_specs(LM_MASKED),
            },
        )
    )

    def lw_build(xp, dt):
        return {**fwd_build(xp, dt), "eps_sq": 0.01}

    cases.append(
        Case(
            "lm.layerwise",
            lw_build,
            lambda kw: [
                np.asarray(v)
                for v in lm.layerwise(
                    kw["params"], kw["config"], kw["tokens"], eps_sq=kw["eps_sq"]
                ).values()
            ],
            {
                "tokens": TOKENS,
                "config": Num("config"),
                "eps_sq": Num("positive"),
                **_lm_param_specs(LM_TINY),
            },
        )
    )
    return cases


MAE_TINY = mc.MAEConfig(
    image_size=4, patch_size=2, channels=1, dim=4, depth=1, heads=2, dtype="float64"
)
MAE_TIED = dataclasses.replace(MAE_TINY, tie_decoder=True)
# 4 patches of 2x2, 3 masked per image; a float 0/1 mask (bool, int and backend masks are
# valid too: the mutations try them)
MAE_MASK = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])


def _mae_param_specs(config, prefix="params/"):
    shapes = mc.mae.mae_param_shapes(config)
    return {f"{prefix}{k}": Arr(ranks=(len(s),)) for k, s in shapes.items()}


# host images of the evaluation helpers: NumPy or any backend, either float dtype
HOST_IMAGES = Arr(ranks=(4,), any_backend=True, any_float=True)


def _mae_cases():
    mae = mc.mae
    cases = []
    kinds = {
        "image_size": "int1", "patch_size": "int1", "channels": "int1", "dim": "int1",
        "depth": "int1", "heads": "int1", "mask_ratio": "unit", "eta": "nonneg", "lam": "nonneg",
        "tie_decoder": "bool", "tie_out": "bool", "attn_scale": "positive",
        "use_layernorm": "bool", "ln_eps": "positive", "final_ln_eps": "positive",
        "head_init_std": "nonneg", "dtype": "choice",
    }
    good = dataclasses.asdict(MAE_TINY)
    cases.append(
        Case(
            "MAEConfig",
            lambda xp, dt: dict(good),
            lambda kw: [np.asarray(mae.MAEConfig(**kw).dim)],
            {k: Num(v, none_ok=k in ("attn_scale", "head_init_std")) for k, v in kinds.items()},
        )
    )
    for name, fn in (("mae_preset", mae.mae_preset), ("mae_recipe", mae.mae_recipe)):
        cases.append(
            Case(
                name,
                lambda xp, dt, name=name: {"name": "digits"},
                lambda kw, fn=fn: [np.asarray(str(fn(kw["name"])))],
                {"name": Num("choice")},
            )
        )
    cases.append(_init_case("init_mae_params", mae.init_mae_params, MAE_TINY, None))
    for name, fn in (
        ("mae_param_count", mae.mae_param_count),
        ("mae_param_shapes", lambda c: len(mae.mae_param_shapes(c))),
    ):
        cases.append(_config_case(name, fn, MAE_TINY))
    cases.append(
        Case(
            "sincos_pos_embedding",
            lambda xp, dt: {"dim": 8, "grid_size": 3, "cls_token": True},
            lambda kw: [mae.sincos_pos_embedding(kw["dim"], kw["grid_size"], kw["cls_token"])],
            {"dim": Num("int1"), "grid_size": Num("int1"), "cls_token": Num("bool")},
        )
    )
    cases.append(
        Case(
            "num_visible",
            lambda xp, dt: {"num_patches": 16, "mask_ratio": 0.75},
            lambda kw: [np.asarray(float(mae.num_visible(kw["num_patches"], kw["mask_ratio"])))],
            {"num_patches": Num("int1"), "mask_ratio": Num("unit")},
        )
    )
    cases.append(
        Case(
            "random_masking",
            lambda xp, dt: {
                "keys": _ids(xp, [[3, 1], [0, 1], [7, 2]]),  # (image, epoch) keys
                "num_patches": 4,
                "mask_ratio": 0.75,
                "seed": 1,
            },
            lambda kw: [
                np.asarray(
                    mae.random_masking(
                        kw["keys"], kw["num_patches"], kw["mask_ratio"], seed=kw["seed"]
                    ),
                    dtype=float,
                )
            ],
            {
                "keys": Arr(ranks=(1, 2), kind="int", free=(-2, -1), any_backend=True),
                "num_patches": Num("int1"),
                "mask_ratio": Num("unit"),
                "seed": Num("int0"),
            },
            coupled=False,
        )
    )
    cases.append(
        Case(
            "no_masking",
            lambda xp, dt: {"batch": 2, "num_patches": 4},
            lambda kw: [np.asarray(mae.no_masking(kw["batch"], kw["num_patches"]), dtype=float)],
            {"batch": Num("int1"), "num_patches": Num("int1")},
        )
    )

    def model_build(xp, dt, config=MAE_TINY):
        return {
            "params": mae.init_mae_params(config, seed=0, backend=xp, dtype=dt),
            "images": _normal(xp, dt, (2, 1, 4, 4), 3),
            "mask": _host(xp, MAE_MASK, dt),
            "config": config,
        }

    def model_specs(config=MAE_TINY):
        return {
            "images": Arr(ranks=(4,)),
            "mask": WEIGHTS,
            "config": Num("config"),
            **_mae_param_specs(config),
        }

    args = lambda kw: (kw["params"], kw["images"], kw["mask"], kw["config"])
    cases.append(
        Case("mae_encode", model_build, lambda kw: [mae.mae_encode(*args(kw))[0]], model_specs())
    )
    cases.append(
        Case("mae_forward", model_build, lambda kw: [mae.mae_forward(*args(kw))[0]], model_specs())
    )
    cases.append(
        Case(
            "mae_forward[tied, fused layers]",
            lambda xp, dt: model_build(xp, dt, MAE_TIED),
            lambda kw: [mae.mae_forward(*args(kw), fast=True)[0]],
            model_specs(MAE_TIED),
        )
    )
    cases.append(
        _backward_case(
            "mae_backward",
            lambda xp, dt: mae.mae_forward(*args(model_build(xp, dt))),
            lambda dpred, cache: (None, mae.mae_backward(dpred, cache)),
            out_name="dpred",
        )
    )

    def lag_call(kw):
        loss, grads, pred = mae.mae_loss_and_grads(*args(kw))
        return [np.asarray(loss), pred, *grads.values()]

    cases.append(Case("mae_loss_and_grads", model_build, lag_call, model_specs()))
    cases.append(Case("mae_loss", model_build, lambda kw: [mae.mae_loss(*args(kw))], model_specs()))
    cases.append(
        Case("reconstruct", model_build, lambda kw: list(mae.reconstruct(*args(kw))), model_specs())
    )

    mse_build = lambda xp, dt: {
        "pred": _normal(xp, dt, (2, 4, 4), 0),
        "target": _normal(xp, dt, (2, 4, 4), 1),
        "mask": _host(xp, MAE_MASK, dt),
    }
    cases.append(
        Case(
            "masked_mse_forward",
            mse_build,
            lambda kw: [mae.masked_mse_forward(kw["pred"], kw["target"], kw["mask"])[0]],
            {"pred": Arr(ranks=(3,)), "target": Arr(ranks=(3,)), "mask": WEIGHTS},
        )
    )

    def mse_backward_build(xp, dt):
        _, cache = mae.masked_mse_forward(**mse_build(xp, dt))
        return {"dloss": 1.0, "cache": cache}

    cases.append(
        Case(
            "masked_mse_backward",
            mse_backward_build,
            lambda kw: [mae.masked_mse_backward(kw["dloss"], kw["cache"])],
            {"dloss": Num("real"), "cache": Num("cache")},
        )
    )

    def eval_build(xp, dt):
        return {
            "params": mae.init_mae_params(MAE_TINY, seed=0, backend=xp, dtype=dt),
            "config": MAE_TINY,
            "images": _normal(xp, dt, (3, 1, 4, 4), 4),
            "seed": 0,
            "batch_size": 2,
            "keys": _ids(xp, [5, 1, 2]),
        }

    cases.append(
        Case(
            "evaluate_masked_mse",
            eval_build,
            lambda kw: [
                np.asarray(
                    mae.evaluate_masked_mse(
                        kw["params"], kw["config"], kw["images"], seed=kw["seed"],
                        batch_size=kw["batch_size"], keys=kw["keys"],
                    )
                )
            ],
            {
                "images": HOST_IMAGES,
                "keys": Arr(ranks=(1, 2), kind="int", any_backend=True),
                "config": Num("config"),
                "seed": Num("int0"),
                "batch_size": Num("int1"),
                **_mae_param_specs(MAE_TINY),
            },
        )
    )
    cases.append(
        Case(
            "encoder_features",
            lambda xp, dt: {
                **{k: v for k, v in eval_build(xp, dt).items() if k not in ("seed", "keys")},
                "pool": "both",
            },
            lambda kw: [
                mae.encoder_features(
                    kw["params"], kw["config"], kw["images"], pool=kw["pool"],
                    batch_size=kw["batch_size"],
                )
            ],
            {
                "images": Arr(ranks=(4,), free=(-4,), any_backend=True, any_float=True),
                "pool": Num("choice"),
                "config": Num("config"),
                "batch_size": Num("int1"),
                **_mae_param_specs(MAE_TINY),
            },
        )
    )
    cases.append(
        Case(
            "mean_patch_baseline",
            lambda xp, dt: {"train_images": _normal(xp, dt, (3, 1, 4, 6), 0), "patch_size": 2},
            lambda kw: [mae.mean_patch_baseline(kw["train_images"], kw["patch_size"])],
            {
                "train_images": Arr(ranks=(4,), free=(-4, -3), any_backend=True, any_float=True),
                "patch_size": Num("int1"),
            },
            coupled=False,
        )
    )
    cases.append(
        Case(
            "baseline_masked_mse",
            lambda xp, dt: {
                "baseline": _normal(xp, dt, (4, 4), 0),
                "images": _normal(xp, dt, (3, 1, 4, 4), 1),
                "config": MAE_TINY,
                "seed": 0,
                "keys": _ids(xp, [0, 1, 2]),
            },
            lambda kw: [
                np.asarray(
                    mae.baseline_masked_mse(
                        kw["baseline"], kw["images"], kw["config"], seed=kw["seed"],
                        keys=kw["keys"],
                    )
                )
            ],
            {
                "baseline": Arr(ranks=(2,)),
                "images": Arr(ranks=(4,)),
                "keys": Arr(ranks=(1, 2), kind="int"),
                "config": Num("config"),
                "seed": Num("int0"),
            },
            coupled=False,  # host-side: each array may come from any backend, in either dtype
        )
    )

    def probe_build(xp, dt):
        y_train, y_test = np.arange(12) % 3, np.arange(6) % 3
        x = lambda y, seed: 0.3 * _rng(seed).standard_normal((len(y), 3)) + np.eye(3)[y]
        return {
            "train_x": _host(xp, x(y_train, 0), dt),
            "train_y": _ids(xp, y_train),
            "test_x": _host(xp, x(y_test, 1), dt),
            "test_y": _ids(xp, y_test),
            "C": 1.0,
            "max_iter": 100,
        }

    cases.append(
        Case(
            "linear_probe",
            probe_build,
            lambda kw: [
                np.asarray(v)
                for v in mae.linear_probe(
                    kw["train_x"], kw["train_y"], kw["test_x"], kw["test_y"],
                    C=kw["C"], max_iter=kw["max_iter"],
                ).values()
            ],
            {
                "train_x": Arr(ranks=(2,)),
                "train_y": Arr(ranks=(1,), kind="int"),
                "test_x": Arr(ranks=(2,)),
                "test_y": Arr(ranks=(1,), kind="int"),
                "C": Num("positive"),
                "max_iter": Num("int1"),
            },
            coupled=False,  # host-side (scikit-learn): any backend, either float dtype
        )
    )
    cases.append(
        Case(
            "to_canvas",
            lambda xp, dt: {"images": _normal(xp, dt, (2, 1, 4, 4), 0), "size": 6, "fill": -0.5},
            lambda kw: [mae.to_canvas(kw["images"], kw["size"], kw["fill"])],
            {
                "images": Arr(ranks=(4,), free=(-4, -3)),
                "size": Num("int1"),
                "fill": Num("real"),
            },
            coupled=False,
        )
    )
    return cases


CASES = {
    c.name: c
    for c in (
        _rates_cases()
        + _block_cases()
        + _embedding_cases()
        + _encoder_cases()
        + _model_cases()
        + _config_cases()
        + _backend_cases()
        + _gradcheck_cases()
        + _decoder_cases()
        + _lm_cases()
        + _mae_cases()
    )
}

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
)


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


def check_outcome(case, kw, expectation, what):
    """Call the case; only documented errors may come out, and results must be finite."""
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
    return check_outcome(
        case, new_kw, expectation, f"[{base} {dtype}] {path}: {mutation!r} (axis {axis})"
    )


# ----------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("name", list(CASES))
def test_valid_call_works(name):
    """The baseline of every case is a valid call with finite results."""
    case = CASES[name]
    for base in ("numpy", "array_api_strict"):
        assert (
            check_outcome(case, case.build(get_backend(base), "float64"), "ok", f"[{base}] valid")
            == "ok"
        )


@pytest.mark.parametrize("name", list(CASES))
def test_every_mutation(name):
    case = CASES[name]
    outcomes = []
    for kind, path, mutation, axis in all_mutations(case, "numpy"):
        base = "array_api_strict" if mutation == "other_device" else "numpy"
        outcomes.append(run_mutation(case, base, "float64", kind, path, mutation, axis))
    assert "raised" in outcomes  # every case has mutations that must be refused


@given(data=st.data())
@pytest.mark.parametrize("name", list(CASES))
def test_random_mutations(name, data):
    case = CASES[name]
    base = data.draw(st.sampled_from(BASES), label="backend")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    kind, path, mutation, _ = data.draw(
        st.sampled_from(all_mutations(case, base)), label="mutation"
    )
    axis = data.draw(st.integers(0, 7), label="axis")
    run_mutation(case, base, dtype, kind, path, mutation, axis)


def test_every_public_function_has_a_case():
    """Each function exported by ``minicrate`` from the modules this file covers is driven
    here, and so is each public function and class defined in :mod:`minicrate.models.lm` (reached as
    ``mc.lm.<name>``, not exported at the top level) and :mod:`minicrate.models.mae`.  A case is
    named after the function, or ``<module>.<function>`` (``lm.forward``)."""
    covered_modules = {
        "minicrate.objective.rates",
        "minicrate.ops.functional",
        "minicrate.ops.layernorm",
        "minicrate.layers.mssa",
        "minicrate.layers.ista",
        "minicrate.models.embedding",
        "minicrate.models.loss",
        "minicrate.layers.encoder",
        "minicrate.models.classifier",
        "minicrate.core.backend",
        "minicrate.checks.gradcheck",
        "minicrate.layers.decoder",
        "minicrate.models.lm",
        "minicrate.models.mae",
    }
    exempt = {
        "cupy_available",  # takes no arguments
        "numerical_vjp",  # driven through check_vjp
        # model.save/load wrap minicrate.core.checkpoint, whose errors tests/test_checkpoint.py covers
        "save",
        "load",
        # minicrate.models.mae, host-side glue that is not an array function:
        "load_split",  # reads a bundled data set from disk (minicrate.data.images's errors)
        "save_mae_checkpoint",  # checkpoint files: tests/test_checkpoint.py and
        "load_mae_run",  # tests/test_robustness_training.py cover minicrate.core.checkpoint
        "probe_accuracies",  # encoder_features + linear_probe (both cased) on a data Split
        "plot_mae_curves",  # draws a list of history dicts into a PNG file
        # a whole training run writing a directory; it refuses a model_config that is not an
        # MAEConfig and a train_config that is not a TrainConfig (whose fields
        # tests/test_robustness_training.py covers) before any work
        "train_mae",
    }
    names = {n.split("[")[0] for n in CASES}

    def has_case(name, obj):
        short = getattr(obj, "__module__", "").rsplit(".", 1)[-1]
        return name in names or f"{short}.{name}" in names

    def public(namespace):
        return {
            n: getattr(namespace, n)
            for n in dir(namespace)
            if callable(getattr(namespace, n))
            and not n.startswith("_")
            and getattr(getattr(namespace, n), "__module__", "") in covered_modules
        }

    exported = public(mc)
    missing = [n for n, obj in exported.items() if n not in exempt and not has_case(n, obj)]
    for module in ("minicrate.models.lm", "minicrate.models.mae"):
        defined = {
            n: obj
            for n, obj in public(importlib.import_module(module)).items()
            if obj.__module__ == module
        }
        assert defined, module
        missing += [
            f"{module}.{n}"
            for n, obj in defined.items()
            if n not in exempt and not has_case(n, obj)
        ]
    assert not missing, f"public functions without a robustness case: {missing}"


MESSAGES = [
    (
        lambda: mc.coding_rate(np.ones(4), 1.0),
        ValueError,
        r"Z must have at least 2 axes, got shape \(4,\) float64",
    ),
    (
        lambda: mc.coding_rate(np.ones((3, 2)), 0.0),
        ValueError,
        r"eps must be finite and > 0, got 0\.0",
    ),
    (
        lambda: mc.ista_forward(np.ones((3, 4)), np.eye(4), eta=-0.1),
        ValueError,
        r"eta must be finite and >= 0",
    ),
    (
        lambda: mc.ista_forward(np.ones((3, 4)), np.eye(4), lam=-1),
        ValueError,
        r"lam must be finite and >= 0",
    ),
    (
        lambda: mc.ista_forward(np.ones((3, 4)), np.eye(3)),
        ValueError,
        r"D must have shape \(d, d\) = \(4, 4\)",
    ),
    (
        lambda: mc.mssa_forward(np.ones((3, 4)), np.ones((2, 4, 2)), np.ones((4, 6)), None),
        ValueError,
        r"W_out must have shape \(d, K\*p\) = \(4, 4\) for U of shape \(2, 4, 2\), got \(4, 6\)",
    ),
    (
        lambda: mc.mssa_forward(np.ones((3, 4)), np.ones((2, 5, 2)), None, None),
        ValueError,
        r"U must have shape \(K, d, p\) with d = 4 \(the token width\), got shape \(2, 5, 2\)",
    ),
    (
        lambda: mc.mssa_forward(np.ones((3, 4)), np.ones((2, 4, 2), dtype=np.float32), None, None),
        TypeError,
        r"arguments must share one dtype, got Z float64, U float32",
    ),
    (
        lambda: mc.layernorm_forward(np.ones((3, 4), dtype=np.int64), np.ones(4), np.ones(4)),
        TypeError,
        r"X must have a real floating dtype \(float32 or float64\), got shape \(3, 4\) int64",
    ),
    (
        lambda: mc.layernorm_forward(np.ones((0, 4)), np.ones(4), np.ones(4)),
        ValueError,
        r"X must not be empty, got shape \(0, 4\)",
    ),
    (
        lambda: mc.layernorm_forward(np.full((2, 4), np.nan), np.ones(4), np.ones(4)),
        ValueError,
        r"X contains NaN or inf values \(shape \(2, 4\) float64\)",
    ),
    (
        lambda: mc.layernorm_backward(
            np.ones((2, 5)), mc.layernorm_forward(np.ones((2, 4)), np.ones(4), np.ones(4))[1]
        ),
        ValueError,
        r"dY must have the forward output's shape \(2, 4\), got shape \(2, 5\)",
    ),
    (
        lambda: mc.linear_backward(
            np.ones((2, 3), dtype=np.float32),
            mc.linear_forward(np.ones((2, 4)), np.ones((3, 4)))[1],
        ),
        TypeError,
        r"dY float32, the forward's arrays float64",
    ),
    (
        lambda: mc.ista_backward(np.ones((2, 4)), None),
        TypeError,
        r"cache must be the cache returned by ista_forward",
    ),
    (
        lambda: mc.softmax(np.array([[0.0, -np.inf], [-np.inf, -np.inf]])),
        ValueError,
        r"entirely -inf",
    ),
    (
        lambda: mc.cross_entropy_forward(np.ones((2, 3)), np.array([0.0, 1.0])),
        TypeError,
        r"labels must be integers",
    ),
    (
        lambda: mc.cross_entropy_forward(np.ones((2, 3)), np.array([0, 3])),
        ValueError,
        r"labels must lie in \[0, 3\)",
    ),
    (
        lambda: mc.cross_entropy_forward(np.ones((2, 3)), [0, 1]),
        TypeError,
        r"labels must be an array, got list",
    ),
    (
        lambda: mc.encoder_layer_forward(np.ones((3, 4)), {"U": np.ones((2, 4, 2))}),
        ValueError,
        r"params is missing \['D', 'ln1_gamma'",
    ),
    (
        lambda: mc.patchify(np.ones((1, 1, 5, 4)), 2),
        ValueError,
        r"image size 5x4 must be divisible by patch_size 2",
    ),
    (
        lambda: mc.patchify(np.ones((1, 1, 4, 4)), 2.0),
        TypeError,
        r"patch_size must be an integer, got float 2\.0",
    ),
    (
        lambda: mc.forward({}, np.ones((1, 1, 4, 4)), TINY),
        ValueError,
        r"params is missing \['embed\.ln_in_gamma'",
    ),
    (
        lambda: mc.forward(mc.init_params(TINY), np.ones((1, 1, 4, 4), dtype=np.float32), TINY),
        TypeError,
        r"arguments must share one dtype, got images float32, "
        r"params\['embed\.ln_in_gamma'\] float64",
    ),
    (
        lambda: mc.forward(
            mc.init_params(TINY), np.ones((1, 1, 4, 4)), dataclasses.replace(TINY, dim=8)
        ),
        ValueError,
        r"params\['embed\.W'\] must have trailing shape \(8, 4\), got shape \(4, 4\)",
    ),
    (
        lambda: mc.CRATEConfig(eta=math.nan),
        ValueError,
        r"eta and lam must be >= 0 \(and finite\), got eta=nan",
    ),
    (lambda: mc.CRATEConfig(ln_eps=0), ValueError, r"ln_eps must be finite and > 0"),
    (
        lambda: mc.init_params(TINY, dtype="float16"),
        ValueError,
        r"dtype must be 'float32' or 'float64'",
    ),
    # minicrate.models.lm and minicrate.models.mae
    (
        lambda: mc.lm.forward(mc.lm.init_params(LM_TINY), np.zeros((1, 3), dtype=np.int64), None),
        TypeError,
        r"config must be a minicrate\.models\.lm\.LMConfig, got NoneType None",
    ),
    (
        lambda: mc.lm.lm_loss_backward(1.0, {}),
        TypeError,
        r"cache must be the cache returned by lm_loss_forward, got dict",
    ),
    (
        lambda: mc.lm.forward(mc.lm.init_params(LM_TINY), np.zeros((1, 3)), LM_TINY),
        TypeError,
        r"tokens must have an integer dtype, got shape \(1, 3\) float64",
    ),
    (
        lambda: mc.lm.lm_loss_forward(np.ones((1, 3, 5)), np.zeros((1, 3), dtype=np.int64),
                                      np.array([[1.0, -1.0, 0.0]])),
        ValueError,
        r"weights must be finite and >= 0, got shape \(1, 3\) float64",
    ),
    (
        lambda: mc.lm.LMConfig(vocab_size=5, tie_out=1),
        TypeError,
        r"LMConfig\.tie_out must be True or False, got 1",
    ),
    (
        lambda: mc.lm.LMConfig(vocab_size=5, lam=-1.0),
        ValueError,
        r"LMConfig\.lam is -1\.0: eta and lam must be >= 0 \(and finite\), got eta=0\.1, lam=-1\.0",
    ),
    (
        lambda: mc.masked_mse_forward(np.full((2, 4, 4), np.nan), np.ones((2, 4, 4)), MAE_MASK),
        ValueError,
        r"pred contains NaN or inf values \(shape \(2, 4, 4\) float64\)",
    ),
    (
        lambda: mc.masked_mse_forward(np.ones((2, 4, 4)), np.zeros((2, 4, 4)), 2 * MAE_MASK),
        ValueError,
        r"mask must hold only 0/1 \(or False/True\) values, got shape \(2, 4\) float64",
    ),
    (
        lambda: mc.mae_backward(np.ones((2, 4, 4)), {}),
        TypeError,
        r"cache must be the cache returned by mae_forward, got dict",
    ),
    (
        lambda: mc.mae_forward(
            {**mc.init_mae_params(MAE_TINY), "mask_token": np.ones(3)},
            np.ones((2, 1, 4, 4)),
            MAE_MASK,
            MAE_TINY,
        ),
        ValueError,
        r"params\['mask_token'\] must have trailing shape \(4\), got shape \(3,\) float64",
    ),
    (
        lambda: mc.random_masking(np.arange(2), 0, 0.75, seed=0),
        ValueError,
        r"num_patches must be >= 1, got 0",
    ),
    (
        lambda: mc.MAEConfig(final_ln_eps=0),
        ValueError,
        r"MAEConfig\.final_ln_eps must be finite and > 0",
    ),
    (
        lambda: mc.CRATEConfig(pool="max"),
        ValueError,
        r"CRATEConfig\.pool must be 'cls' or 'mean', got 'max'",
    ),
    (
        lambda: mc.check_vjp(lambda x: x, {"x": np.ones(2)}, np.ones(2), {"y": np.ones(2)}),
        ValueError,
        r"grads names 'y', which is not among the inputs \['x'\]",
    ),
]


@pytest.mark.parametrize("call, error, pattern", MESSAGES, ids=[m[2][:40] for m in MESSAGES])
def test_messages(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_mixed_backends_and_devices_are_named():
    strict = get_backend("array_api_strict")
    import array_api_strict

    Z = strict.asarray(np.ones((3, 4)))
    U_far = strict.asarray(np.ones((2, 4, 2))).to_device(array_api_strict.Device("device1"))
    with pytest.raises(
        ValueError, match=r"arrays live on different devices: Z on .*CPU_DEVICE.*, U on .*device1"
    ):
        mc.compression_rate(Z, U_far, 0.5)
    with pytest.raises(TypeError, match=r"arrays from different backends were mixed"):
        mc.compression_rate(Z, np.ones((2, 4, 2)), 0.5)
    logits = strict.asarray(np.ones((2, 3)))
    labels = strict.asarray(np.array([0, 1])).to_device(array_api_strict.Device("device1"))
    with pytest.raises(ValueError, match=r"logits on .*CPU_DEVICE.*, labels on .*device1"):
        mc.cross_entropy_forward(logits, labels)


def test_finite_checks_can_be_switched_off_for_hot_loops():
    """Inside ``finite_checks(False)`` (training) NaN passes the scan; shapes are still checked."""
    X = np.full((2, 4), np.nan)
    with finite_checks(False):
        Y, _ = mc.layernorm_forward(X, np.ones(4), np.zeros(4))
        assert np.isnan(Y).all()
        with pytest.raises(ValueError, match="trailing shape"):
            mc.layernorm_forward(X, np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        mc.layernorm_forward(X, np.ones(4), np.zeros(4))
