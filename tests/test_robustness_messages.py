"""Robustness of error messages, mixed backends, the finite-check switch, and that every public function has a case.

The cases, mutations and rules are described in tests/robustness_support.py."""

from __future__ import annotations

from robustness_support import *  # noqa: F403  (case types, mutations, shared inputs and imports)


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
        "minicrate.models.mae_params",
        "minicrate.models.masking",
        "minicrate.models.sampling",
        "minicrate.models.stack",
        "minicrate.ops.heads",
        "minicrate.measure.roundtrip",
        "minicrate.measure.probe",
        "minicrate.layers.fused.decoder",
        "minicrate.ops.gelu",
        "minicrate.layers.attention",
        "minicrate.layers.mlp",
        "minicrate.layers.transformer",
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
        # helpers that were private before the split into modules (issue 15), driven through the
        # cased functions that use them: random_masking / linear_probe (host_ints), masked_mse_forward
        # and mae_forward (mask_in), and every model's forward (group)
        "host_ints",
        "mask_in",
        "group",
    }
    cases = {}
    for part in ("test_robustness_objective_core", "test_robustness_layers", "test_robustness_models",
                 "test_robustness_lm", "test_robustness_mae", "test_robustness_transformer"):
        cases.update(importlib.import_module(part).CASES)
    names = {n.split("[")[0] for n in cases}

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
    for module in ("minicrate.models.lm", "minicrate.models.mae", "minicrate.models.mae_params",
                   "minicrate.models.masking", "minicrate.models.sampling", "minicrate.models.stack",
                   "minicrate.measure.probe", "minicrate.ops.gelu", "minicrate.layers.attention",
                   "minicrate.layers.mlp", "minicrate.layers.transformer"):
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
        lambda: mc.attention_forward(np.ones((3, 4)), np.ones((12, 5)), None, np.ones((4, 4)), None, heads=2),
        ValueError,
        r"W_qkv must have shape \(3·heads·p, d\) = \(3·2·p, 4\) for X of shape \(3, 4\) and heads = 2, "
        r"got \(12, 5\)",
    ),
    (
        lambda: mc.attention_forward(np.ones((3, 4)), np.ones((12, 4)), None, np.ones((4, 6)), None, heads=2),
        ValueError,
        r"W_out must have shape \(d, heads·p\) = \(4, 4\) for W_qkv of shape \(12, 4\), got \(4, 6\)",
    ),
    (
        lambda: mc.mlp_forward(np.ones((3, 4)), np.ones((6, 4)), None, np.ones((4, 5)), None),
        ValueError,
        r"W2 must have shape \(d, h\) = \(4, 6\) for W1 of shape \(6, 4\), got \(4, 5\)",
    ),
    (
        lambda: mc.gelu(np.ones((3, 4), dtype=np.int64)),
        TypeError,
        r"X must have a real floating dtype \(float32 or float64\), got shape \(3, 4\) int64",
    ),
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
    (
        lambda: mc.masked_mse_forward(np.full((2, 4, 4), 1e200), np.ones((2, 4, 4)), MAE_MASK),
        ValueError,
        r"pred has entries beyond ±1e\+150, where float64 arithmetic \(squares, sums\) would overflow",
    ),
    (
        lambda: mc.relu(_matrix(np.ones((2, 3)))),
        TypeError,
        r"X must be a plain array, got a numpy\.matrix \(shape \(2, 3\) float64\)",
    ),
    (
        lambda: mc.masked_mse_forward(np.ones((2, 4, 4)), np.ones((2, 4, 4)), np.ma.masked_array(MAE_MASK)),
        TypeError,
        r"mask must be a plain array, got a masked array",
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
