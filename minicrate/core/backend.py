"""Array backends: the one module that knows backend names.

Every other module in minicrate takes arrays and asks them for their namespace
(``xp = namespace(Z, U)``), so the same code runs on NumPy, CuPy, PyTorch and
``array_api_strict``.  This module adds what the array API standard leaves out:

* :func:`namespace` -- ``array_api_compat.array_namespace`` with a clear error
  when arrays from two libraries (or two devices) are mixed;
* :func:`get_backend` -- a namespace by name (``"numpy"``, ``"cupy"``,
  ``"torch"``, ``"array_api_strict"``);
* :func:`asarray_like`, :func:`zeros_like_of`, :func:`device_of` -- make arrays
  with the namespace, dtype and device of an existing one;
* :func:`to_numpy` -- bring any array to the host for plotting or saving;
* :func:`cupy_available` -- ``False`` on machines without a working GPU;
* :func:`random_normal` / :func:`random_uniform` -- seeded random numbers that
  are *identical on every backend*: they are drawn on the host with NumPy's
  ``default_rng(seed)`` and then moved to the target backend and device.

Determinism (what one seed does and does not pin down; the first three points
are tested in ``tests/test_numerics.py``, training's in ``tests/test_train.py``):

* **Initial parameters and random draws** are identical on every backend and
  device: they are drawn on the host in float64 and only then cast and moved.
* **NumPy** is deterministic: the same seed and inputs give bit-identical
  losses, gradients and parameters run after run on one machine.  Results can
  differ in the last bits on another machine or BLAS build (OpenBLAS vs MKL,
  AVX2 vs AVX-512 kernels) or with another BLAS thread count, which changes
  the order of floating-point sums.  ``array_api_strict`` runs NumPy
  underneath and gives the same bits as NumPy.
* **torch on CPU** is run-to-run deterministic for every operation minicrate
  uses (matrix products, sums, QR; no scatter or atomics -- the embedding's
  backward is a one-hot product), but uses other kernels than NumPy: results
  agree with NumPy to rounding (~1 ulp per operation, 1e-7 relative in
  float32), not bit for bit.
* **CUDA (torch, CuPy)**: cuBLAS and cuSOLVER give the same bits run to run on
  one GPU model with one library version, and minicrate uses no atomic
  scatter-adds; but this is not guaranteed across GPU models, CUDA versions,
  or with several streams (torch needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and
  ``torch.use_deterministic_algorithms(True)`` to promise it).  Expect
  agreement with NumPy to rounding only; over a long training run rounding
  differences grow, so two backends' runs drift apart while reaching the same
  accuracy.  (torch keeps TF32 off for float32 matrix products by default; if
  you turn ``torch.backends.cuda.matmul.allow_tf32`` on, float32 products
  keep only ~10 mantissa bits.)
"""

from __future__ import annotations

import functools
import importlib

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "array_api_strict", "torch", "cupy")


def namespace(*arrays):
    """The array namespace shared by ``arrays`` (``None`` entries are skipped).

    Raises ``TypeError`` naming the libraries when arrays come from more than
    one backend, instead of the opaque error a later operation would give.
    """
    arrays = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise TypeError(
            f"arrays from different backends were mixed ({', '.join(kinds)}); "
            "move them to one backend first, e.g. minicrate.core.backend.asarray_like"
        ) from err


def device_of(x):
    """The device an array lives on (CPU for NumPy)."""
    return array_api_compat.device(x)


def on_host(x) -> bool:
    """True when ``x`` is in host memory, where reading one value (``float(x[0])``)
    is just a read; on a GPU (CuPy, torch CUDA) it waits for every queued kernel."""
    if array_api_compat.is_cupy_array(x):
        return False
    if array_api_compat.is_torch_array(x):
        return x.device.type == "cpu"
    return True


def same_device(*arrays, names=None):
    """Raise ``ValueError`` if the arrays do not all live on one device."""
    arrays = [a for a in arrays if a is not None]
    devices = [device_of(a) for a in arrays]
    if any(d != devices[0] for d in devices[1:]):
        names = names or [f"argument {i}" for i in range(len(arrays))]
        listing = ", ".join(f"{n} on {d}" for n, d in zip(names, devices, strict=False))
        raise ValueError(f"arrays live on different devices: {listing}")


def get_backend(name: str = "numpy"):
    """Return the array-API namespace of a backend by name.

    ``"numpy"`` gives ``array_api_compat.numpy``; ``"cupy"`` needs a working
    GPU (see :func:`cupy_available`); ``"torch"`` and ``"array_api_strict"``
    need those packages installed.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "cupy" and not cupy_available():
        raise RuntimeError("backend 'cupy' asked for, but CuPy has no usable GPU here")
    module = "array_api_strict" if name == "array_api_strict" else f"array_api_compat.{name}"
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"backend {name!r} needs the package {name!r}; install it "
            "(torch: 'pip install torch==2.13.0' for a CPU build)"
        ) from err


def backend_name(xp) -> str:
    """The short name (one of :data:`BACKENDS`) of a namespace."""
    for name, check in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    ):
        if check(xp):
            return name
    return getattr(xp, "__name__", str(xp))


@functools.lru_cache(maxsize=1)
def cupy_available() -> bool:
    """True only when CuPy imports *and* can run a kernel on a GPU.

    ``cupy.cuda.is_available()`` answers ``False`` cleanly without a driver;
    the tiny computation proves the CUDA libraries (NVRTC, cuBLAS) load too.
    """
    try:
        import cupy
    except ImportError:
        return False
    try:
        if not cupy.cuda.is_available():
            return False
        (cupy.zeros(1) + 1).get()
        return True
    except Exception:  # CUDARuntimeError, missing CUDA libraries, ...
        return False


def to_numpy(x):
    """Copy any array (NumPy, CuPy, torch, array_api_strict) to a NumPy array."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(
            f"to_numpy needs an array (NumPy, CuPy, torch, array_api_strict), got {type(x).__name__}"
        )
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_array_api_strict_namespace(namespace(x)):
        # array_api_strict refuses __array__ off its default device: copy there first.
        import array_api_strict

        x = array_api_strict.asarray(x, device=array_api_strict.Device("CPU_DEVICE"), copy=True)
    return np.asarray(x)


def asarray_like(values, like, dtype=None):
    """``values`` (any array or nested list) as an array of ``like``'s namespace,
    device and (unless given) dtype."""
    xp = namespace(like)
    if not isinstance(values, (int, float, list, tuple)) and namespace(values) is not xp:
        values = to_numpy(values)
    return xp.asarray(values, dtype=dtype or like.dtype, device=device_of(like))


def zeros_like_of(like, shape, dtype=None):
    """Zeros of ``shape`` with ``like``'s namespace, device and dtype."""
    xp = namespace(like)
    return xp.zeros(shape, dtype=dtype or like.dtype, device=device_of(like))


def host_to(xp, values, dtype="float64", device=None):
    """Move a host (NumPy) array to namespace ``xp`` with a dtype given by name."""
    target = getattr(xp, dtype) if isinstance(dtype, str) else dtype
    return xp.asarray(np.ascontiguousarray(values), dtype=target, device=device)


def random_normal(shape, *, seed, xp=None, dtype="float64", std=1.0, device=None):
    """Normal(0, std²) numbers, identical on every backend for one ``seed``.

    Drawn on the host with ``numpy.random.default_rng(seed)`` in float64, then
    cast and moved: backends' own generators differ, so this is how one seed
    gives the same model on NumPy, CuPy and torch.
    """
    values = np.random.default_rng(seed).standard_normal(shape) * std
    return host_to(xp or get_backend("numpy"), values, dtype, device)


def random_uniform(shape, *, seed, low, high, xp=None, dtype="float64", device=None):
    """Uniform(low, high) numbers, identical on every backend for one ``seed``."""
    values = np.random.default_rng(seed).uniform(low, high, size=shape)
    return host_to(xp or get_backend("numpy"), values, dtype, device)
