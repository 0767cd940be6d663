"""Robustness of core, checks and objective (backends, the finite-difference checker, the rates).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)

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
            # a conversion utility: any NumPy array (complex, object, a subclass) passes as is
            skip=tuple(("x", m) for m in ("complex", "object", "masked", "matrix")),
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



CASES = {c.name: c for c in (_rates_cases() + _backend_cases() + _gradcheck_cases())}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
