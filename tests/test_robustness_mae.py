"""Robustness of CRATE-MAE (minicrate.models.mae and what it uses).

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)


def _mae_param_specs(config, prefix="params/"):
    shapes = mc.mae.mae_param_shapes(config)
    return {f"{prefix}{k}": Arr(ranks=(len(s),)) for k, s in shapes.items()}


# host images of the evaluation helpers: NumPy or any backend, either float dtype
HOST_IMAGES = Arr(ranks=(4,), any_backend=True, any_float=True)


def _mae_cases():
    from minicrate.training import mae as mae_training

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
    for name, fn in (("mae_preset", mae.mae_preset), ("mae_recipe", mae_training.mae_recipe)):
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
            lambda kw: [np.asarray(float(masking.num_visible(kw["num_patches"], kw["mask_ratio"])))],
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
                    masking.random_masking(
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
            lambda kw: [np.asarray(masking.no_masking(kw["batch"], kw["num_patches"]), dtype=float)],
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
    cases.append(  # the inference path (fused layers, no cache)
        Case("mae_predict", model_build, lambda kw: [mae.mae_predict(*args(kw))], model_specs())
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
            lambda kw: [mc_loss.masked_mse_forward(kw["pred"], kw["target"], kw["mask"])[0]],
            {"pred": Arr(ranks=(3,)), "target": Arr(ranks=(3,)), "mask": WEIGHTS},
        )
    )

    def mse_backward_build(xp, dt):
        _, cache = mc_loss.masked_mse_forward(**mse_build(xp, dt))
        return {"dloss": 1.0, "cache": cache}

    cases.append(
        Case(
            "masked_mse_backward",
            mse_backward_build,
            lambda kw: [mc_loss.masked_mse_backward(kw["dloss"], kw["cache"])],
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
                    probe.evaluate_masked_mse(
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
                probe.encoder_features(
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
            lambda kw: [probe.mean_patch_baseline(kw["train_images"], kw["patch_size"])],
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
                    probe.baseline_masked_mse(
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
                for v in probe.linear_probe(
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
            lambda kw: [mae_training.to_canvas(kw["images"], kw["size"], kw["fill"])],
            {
                "images": Arr(ranks=(4,), free=(-4, -3)),
                "size": Num("int1"),
                "fill": Num("real"),
            },
            coupled=False,
        )
    )
    return cases



CASES = {c.name: c for c in (_mae_cases())}

test_valid_call_works, test_every_mutation, test_random_mutations = case_tests(CASES)
