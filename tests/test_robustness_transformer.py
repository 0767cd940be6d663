"""Robustness of the transformer's blocks (the GELU, attention, the MLP, the pre-norm block).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)

from minicrate.layers import transformer
from minicrate.models import stack
from minicrate.ops import gelu as gelu_module


def _elementwise_case(name, fn):
    return Case(name, lambda xp, dt: {"X": _normal(xp, dt, (2, 3, 4), 0, 2.0)}, lambda kw: [fn(kw["X"])],
                {"X": Arr(ranks=(1, 2, 3, 4), free=(-3, -2, -1))}, coupled=False)


def _attention_build(xp, dt, out=True):
    return {
        "X": _normal(xp, dt, (2, 3, 4), 0),
        "W_qkv": _normal(xp, dt, (12, 4), 1, 0.5),
        "b_qkv": _normal(xp, dt, (12,), 2, 0.1),
        "W_out": _normal(xp, dt, (4, 4), 3, 0.5) if out else None,
        "b_out": _normal(xp, dt, (4,), 4, 0.1) if out else None,
        "heads": 2,
        "scale": None,
    }


def _attention_call(kw, causal=False):
    return mc.attention_forward(kw["X"], kw["W_qkv"], kw["b_qkv"], kw["W_out"], kw["b_out"], heads=kw["heads"],
                                causal=causal, scale=kw["scale"])


def _mlp_build(xp, dt):
    return {"X": _normal(xp, dt, (2, 3, 4), 0), "W1": _normal(xp, dt, (6, 4), 1, 0.5),
            "b1": _normal(xp, dt, (6,), 2, 0.1), "W2": _normal(xp, dt, (4, 6), 3, 0.5),
            "b2": _normal(xp, dt, (4,), 4, 0.1)}


def _block_params(xp, dt):
    shapes = transformer.transformer_layer_shapes(4, 2, 2, 6)
    params = {k: _normal(xp, dt, s, 10 + i, 0.5) for i, (k, s) in enumerate(shapes.items())}
    for k in ("ln1_gamma", "ln2_gamma"):
        params[k] = _host(xp, 1 + 0.1 * _rng(3).standard_normal(4), dt)
    return params


def _block_build(xp, dt):
    return {"Z": _normal(xp, dt, (2, 3, 4), 0), "params": _block_params(xp, dt), "heads": 2, "scale": None,
            "ln_eps": 1e-5}


def _block_call(kw, causal=False):
    return mc.transformer_block_forward(kw["Z"], kw["params"], heads=kw["heads"], causal=causal,
                                        scale=kw["scale"], ln_eps=kw["ln_eps"])


def _cases():
    z3 = Arr(ranks=(2, 3, 4), free=(-4, -3, -2))
    attention_specs = {"X": z3, "W_qkv": Arr(ranks=(2,)), "b_qkv": Arr(ranks=(1,)), "W_out": Arr(ranks=(2,)),
                       "b_out": Arr(ranks=(1,)), "heads": Num("int1"), "scale": Num("positive", none_ok=True)}
    block_specs = {
        "Z": z3, "params": Num("choice"), "heads": Num("int1"), "scale": Num("positive", none_ok=True),
        "ln_eps": Num("positive"),
        **{f"params/{k}": Arr(ranks=(len(s),), optional=k.startswith("b"))
           for k, s in transformer.transformer_layer_shapes(4, 2, 2, 6).items()},
    }
    cases = [
        _elementwise_case("gelu", mc.gelu),
        _elementwise_case("gelu.erf", gelu_module.erf),
        _elementwise_case("gelu.erfc", gelu_module.erfc),
        _elementwise_case("gelu.normal_cdf", gelu_module.normal_cdf),
        Case("gelu_backward",
             lambda xp, dt: {"dY": _normal(xp, dt, (2, 3, 4), 1), "X": _normal(xp, dt, (2, 3, 4), 0),
                             "cdf": None},
             lambda kw: [mc.gelu_backward(kw["dY"], kw["X"], cdf=kw["cdf"])],
             {"dY": Arr(ranks=(3,)), "X": Arr(ranks=(3,))}),
        Case("gelu_backward[cdf]",
             lambda xp, dt: {"dY": _normal(xp, dt, (2, 3), 1), "X": _normal(xp, dt, (2, 3), 0),
                             "cdf": gelu_module.normal_cdf(_normal(xp, dt, (2, 3), 0))},
             lambda kw: [mc.gelu_backward(kw["dY"], kw["X"], cdf=kw["cdf"])],
             {"dY": Arr(ranks=(2,)), "X": Arr(ranks=(2,)), "cdf": Arr(ranks=(2,))}),
        Case("attention_forward", _attention_build, lambda kw: [_attention_call(kw)[0]], attention_specs),
        Case("attention_forward[no output map,causal]", lambda xp, dt: _attention_build(xp, dt, out=False),
             lambda kw: [_attention_call(kw, causal=True)[0]],
             {k: v for k, v in attention_specs.items() if k not in ("W_out", "b_out")}),
        _backward_case("attention_backward", lambda xp, dt: _attention_call(_attention_build(xp, dt)),
                       mc.attention_backward),
        _backward_case("attention_backward[no output map]",
                       lambda xp, dt: _attention_call(_attention_build(xp, dt, out=False), causal=True),
                       mc.attention_backward),
        Case("mlp_forward", _mlp_build, lambda kw: [mc.mlp_forward(**kw)[0]],
             {"X": Arr(ranks=(1, 2, 3, 4), free=(-3, -2)), "W1": Arr(ranks=(2,)), "b1": Arr(ranks=(1,)),
              "W2": Arr(ranks=(2,)), "b2": Arr(ranks=(1,))}),
        _backward_case("mlp_backward", lambda xp, dt: mc.mlp_forward(**_mlp_build(xp, dt)), mc.mlp_backward),
        Case("transformer_block_forward", _block_build, lambda kw: [_block_call(kw)[0]], block_specs),
        Case("transformer_block_forward[causal]", _block_build, lambda kw: [_block_call(kw, causal=True)[0]],
             block_specs),
        _backward_case("transformer_block_backward", lambda xp, dt: _block_call(_block_build(xp, dt)),
                       mc.transformer_block_backward),
        Case("transformer.transformer_layer_shapes",
             lambda xp, dt: {"d": 4, "heads": 2, "head_dim": 2, "hidden": 6, "project_out": True},
             lambda kw: [np.asarray(float(sum(math.prod(s) for s in transformer.transformer_layer_shapes(
                 kw["d"], kw["heads"], kw["head_dim"], kw["hidden"], project_out=kw["project_out"]).values())))],
             {"d": Num("int1"), "heads": Num("int1"), "head_dim": Num("int1"), "hidden": Num("int1"),
              "project_out": Num("bool")}, coupled=False),
        Case("transformer.value_bases",
             lambda xp, dt: {"W_qkv": _normal(xp, dt, (12, 4), 1), "heads": 2},
             lambda kw: [transformer.value_bases(kw["W_qkv"], kw["heads"])],
             {"W_qkv": Arr(ranks=(2,), free=(-1,)), "heads": Num("int1")}, coupled=False),
        Case("stack.layer_readouts",
             lambda xp, dt: {"cache": _block_call(_block_build(xp, dt))[1]},
             lambda kw: list(stack.layer_readouts(kw["cache"]).values()), {"cache": Num("cache")}),
        Case("stack.layer_readouts[crate]",
             lambda xp, dt: {"cache": mc.encoder_layer_forward(_normal(xp, dt, (2, 3, 4), 0),
                                                               _layer_params(xp, dt))[1]},
             lambda kw: list(stack.layer_readouts(kw["cache"]).values()), {"cache": Num("cache")}),
        Case("stack.encoder_stack_forward[transformer]",
             lambda xp, dt: {"Z": _normal(xp, dt, (2, 3, 4), 0),
                             "params": {f"layers.0.{k}": v for k, v in _block_params(xp, dt).items()},
                             "depth": 1, "options": {"block": "transformer", "heads": 2}},
             lambda kw: [stack.encoder_stack_forward(kw["Z"], kw["params"], kw["depth"], kw["options"])[0]],
             {"Z": z3, "params": Num("choice"), "depth": Num("int1"), "options": Num("choice"),
              **{f"params/layers.0.{k}": Arr(ranks=(len(s),), optional=k.startswith("b"))
                 for k, s in transformer.transformer_layer_shapes(4, 2, 2, 6).items()}}),
    ]
    return cases


CASES = {c.name: c for c in _cases()}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
