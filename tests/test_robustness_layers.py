"""Robustness of ops and layers (the blocks, the encoder and decoder layers).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)

from minicrate.models import stack


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
        Case(
            "mssa_step",
            lambda xp, dt: {
                "Z": _normal(xp, dt, (2, 3, 4), 0),
                "U": _bases(xp, dt, 2, 4, 2, 1),
                "eps": 1.0,
                "kappa": 0.5,
            },
            lambda kw: [mc.mssa_step(kw["Z"], kw["U"], kw["eps"], kw["kappa"])],
            {
                "Z": z3,
                "U": Arr(ranks=(3,), free=(-3, -1)),
                "eps": Num("positive"),
                "kappa": Num("nonneg"),
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

    def stack_build(xp, dt):
        layer = _layer_params(xp, dt)
        return {
            "Z": _normal(xp, dt, (2, 3, 4), 0),
            "params": {f"layers.0.{k}": v for k, v in layer.items()},
            "depth": 1,
            "options": {"scale": None, "eta": 0.1, "lam": 0.1, "ln_eps": 1e-5},
        }

    def stack_call(kw):
        return stack.encoder_stack_forward(kw["Z"], kw["params"], kw["depth"], kw["options"])

    cases.append(
        Case(
            "stack.encoder_stack_forward",
            stack_build,
            lambda kw: [stack_call(kw)[0]],
            {"Z": z3, **_layer_specs(prefix="params/layers.0."), "params": Num("choice"),
             "depth": Num("int1"), "options": Num("choice")},
        )
    )
    cases.append(
        _backward_case(
            "stack.encoder_stack_backward",
            lambda xp, dt: stack_call(stack_build(xp, dt))[:2],
            lambda dY, caches: (stack.encoder_stack_backward(dY, caches, {}), {}),
        )
    )
    return cases


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



CASES = {c.name: c for c in (_block_cases() + _encoder_cases() + _decoder_cases())}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
