"""Robustness of the language models (minicrate.models.lm and what it uses).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)


def _lm_tokens(xp, seed=0, high=5, shape=(2, 3)):
    return _ids(xp, _rng(seed).integers(0, high, size=shape))


def _lm_param_specs(config, prefix="params/"):
    return {f"{prefix}{k}": Arr(ranks=(len(s),)) for k, s in mc.lm.param_shapes(config).items()}


def _lm_cases():
    lm = mc.lm
    from minicrate.measure.layerwise import lm_layerwise
    from minicrate.models import sampling
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
            "stack.layer_params",
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
            "embedding.embed_forward",
            emb_build,
            lambda kw: [lm.embed_forward(kw["tokens"], kw["E"], kw["P"])[0]],
            {"tokens": TOKENS, "E": Arr(ranks=(2,), free=(-2,)), "P": Arr(ranks=(2,), free=(-2,))},
        )
    )
    cases.append(
        _backward_case(
            "embedding.embed_backward",
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
            "embedding.head_forward",
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
            "embedding.head_backward",
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
            "loss.lm_loss_forward",
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
            "loss.lm_loss_backward",
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
    cases.append(  # the inference path
        Case("lm.predict", fwd_build, lambda kw: [lm.predict(kw["params"], kw["tokens"], kw["config"])],
             {"tokens": TOKENS, "config": Num("config"), **_lm_param_specs(LM_TINY)})
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
            "sampling.next_char_distribution",
            lambda xp, dt: {
                "logits": _normal(xp, dt, (5,), 0, 2.0),
                "temperature": 0.7,
                "top_k": 3,
            },
            lambda kw: [
                sampling.next_char_distribution(
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
        text = sampling.generate(
            kw["params"], kw["config"], kw["vocab"], kw["prompt"], kw["length"],
            temperature=kw["temperature"], top_k=kw["top_k"], seed=kw["seed"],
        )
        assert isinstance(text, str) and len(text) == 3 + kw["length"]
        return []

    cases.append(
        Case(
            "sampling.generate",
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
        text, where = sampling.fill_masks(
            kw["params"], kw["config"], kw["vocab"], kw["text"], mask_char=kw["mask_char"]
        )
        assert where == [1] and len(text) == 3
        return []

    cases.append(
        Case(
            "sampling.fill_masks",
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
            "layerwise.lm_layerwise",
            lw_build,
            lambda kw: [
                np.asarray(v)
                for v in lm_layerwise(
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



CASES = {c.name: c for c in (_lm_cases())}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
