"""Robustness of the classifier (embedding, model, configs).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)


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
    cases.append(  # the inference path: the same checks, no cache kept
        Case("predict", fwd_build, lambda kw: [mc.predict(kw["params"], kw["images"], kw["config"])], specs)
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



CASES = {c.name: c for c in (_embedding_cases() + _model_cases() + _config_cases())}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
