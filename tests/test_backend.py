"""The backend layer: namespaces, devices, host transfer, seeded random init."""

import numpy as np
import pytest

import minicrate as mc
from minicrate.core import backend


def test_random_init_is_identical_on_every_backend(xp):
    a = backend.random_normal((3, 4), seed=5, xp=xp)
    b = backend.random_normal((3, 4), seed=5)
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    u = backend.random_uniform((2,), seed=1, low=-1, high=1, xp=xp, dtype="float32")
    assert "float32" in str(u.dtype)


def test_get_backend_by_name():
    assert backend.backend_name(backend.get_backend("numpy")) == "numpy"
    assert backend.backend_name(backend.get_backend("array_api_strict")) == "array_api_strict"
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.get_backend("jax")


def test_cupy_detection_answers_cleanly():
    assert backend.cupy_available() in (True, False)
    if not backend.cupy_available():
        with pytest.raises(RuntimeError, match="no usable GPU"):
            backend.get_backend("cupy")


def test_mixed_backends_give_clear_type_error(strict):
    Z = np.ones((3, 2))
    U = strict.ones((1, 2, 2), dtype=strict.float64)
    with pytest.raises(TypeError, match="different backends"):
        mc.compression_rate(Z, U, 1.0)


def test_outputs_stay_on_non_default_strict_device(strict):
    dev = strict.Device("device1")
    rng = np.random.default_rng(0)
    Z = strict.asarray(rng.standard_normal((2, 5, 4)), device=dev)
    U = strict.asarray(rng.standard_normal((2, 4, 2)), device=dev)
    for out in (mc.coding_rate(Z, 1.0), mc.coding_rate_grad(Z, 1.0), *mc.compression_rate_grad(Z, U, 1.0),
                mc.compression_rate(Z, U, 1.0), mc.measured_compression_rate(Z, U)):
        assert out.device == dev
    report = mc.check_vjp(mc.coding_rate, {"Z": Z, "eps": 1.0}, strict.ones((2,), device=dev),
                          {"Z": mc.coding_rate_grad(Z, 1.0)})
    report.raise_if_failed()


def test_arrays_on_two_devices_are_refused(strict):
    Z = strict.ones((3, 2), dtype=strict.float64, device=strict.Device("device1"))
    U = strict.ones((1, 2, 2), dtype=strict.float64)
    with pytest.raises((ValueError, TypeError), match="device"):
        mc.compression_rate(Z, U, 1.0)


def test_to_numpy_and_asarray_like(xp):
    x = xp.asarray([1.0, 2.0])
    y = backend.asarray_like(np.array([3.0, 4.0]), x)
    assert backend.namespace(y) is backend.namespace(x)
    np.testing.assert_array_equal(backend.to_numpy(y), [3.0, 4.0])


# The math modules compute in the namespace of their inputs; host-side modules (data, masks drawn
# on the host so that one seed gives one result on every backend, training loops, the FD checker,
# strategies, grading harness, CLI, plotting) may use NumPy on host arrays (CONTRIBUTING.md).
MATH_MODULES = ("objective.rates", "ops.functional", "ops.layernorm", "ops.heads", "layers.mssa", "layers.ista",
                "models.embedding", "models.loss", "models.stack", "layers.encoder", "layers.decoder",
                "layers.fused.kernels", "layers.fused.encoder", "layers.fused.decoder", "models.classifier",
                "models.lm", "models.sampling", "measure.roundtrip", "training.optim", "training.schedule",
                "training.parallel.threads", "core.validate")
# minicrate.models.mae mixes both: these are its math functions (some re-exported from
# minicrate.models.mae_params and minicrate.models.loss); the masks (minicrate.models.masking), the
# positional table, the probe (minicrate.measure.probe) and training are host-side and import NumPy locally.
MAE_MATH = ("mae_encode", "mae_forward", "masked_mse_forward", "masked_mse_backward", "mae_backward",
            "mae_loss_and_grads", "init_mae_params", "reconstruct")


@pytest.mark.parametrize("name", MATH_MODULES)
def test_math_modules_never_import_numpy_or_cupy(name):
    import importlib
    import inspect
    import re

    source = inspect.getsource(importlib.import_module(f"minicrate.{name}"))
    assert not re.search(r"^\s*(import|from)\s+(numpy|cupy)\b", source, re.M), name


def test_cupy_is_imported_only_by_the_backend_helper():
    import pathlib
    import re

    root = pathlib.Path(mc.__file__).parent
    users = [p.name for p in root.rglob("*.py") if re.search(r"^\s*(import|from)\s+cupy\b", p.read_text(), re.M)]
    assert users == ["backend.py"]


@pytest.mark.parametrize("name", MAE_MATH)
def test_mae_math_functions_use_the_array_namespace(name):
    import inspect

    from minicrate.models import mae

    source = inspect.getsource(getattr(mae, name))
    assert "np." not in source and "import numpy" not in source, name


def test_on_host_tells_host_arrays_from_device_arrays(xp):
    """Host arrays (NumPy, array_api_strict, torch on the CPU) may be read without a device sync."""
    from minicrate.core.backend import on_host

    assert on_host(xp.ones((2,)))
