"""Numerical robustness (issue 9): float32 coding rates, extreme softmax logits,
LayerNorm of a constant token, and the gradient checker's refusal of float32.

Coding rates in float32 are compared with float64 *on the same, float32-rounded
input*, so the difference measures the algorithm, not the rounding of Z.  The
comparison runs on NumPy and, when installed, torch: NumPy's LAPACK factorises
float32 matrices in double precision internally, torch's in single precision,
so torch is the real float32 test.

Measured when this file was written (N ∈ {64, 4096}, d ∈ {8, 16}, ε ∈ {0.1, 1e-3},
Gaussian tokens, tokens on a d/4-dimensional subspace plus 1e-2 noise, and
tokens exactly on it; relative error = max |f32 − f64| / max |f64|):

* R, R^c and the measured R^c: at most 1.7e-7 (every case);
* ∇R^c: at most 2.2e-6 (w.r.t. Z) and 2.7e-6 (w.r.t. U);
* ∇R: 6e-7 (Gaussian), 3e-5 (noisy subspace); for tokens *exactly* on a
  subspace the gradient is ill-conditioned -- a perturbation δ of Z moves it by
  up to α·δ, α = d/(Nε²) -- so no float32 computation can be accurate
  relative to its size: the largest discrepancy found, 4.0 relative (torch,
  N = 64, d = 16, ε = 1e-3), is 0.50 × α·u·‖Z‖₂ (at most 0.58× over all
  cases), the change that rounding Z once (u = 2⁻²⁴) can cause.  The test
  asserts that backward-stable bound.

Before the QR formulation (``cholesky(I + αZᵀZ)`` of the Gram matrix) the
exactly-low-rank cases at ε = 1e-3 raised ``LinAlgError``, and ∇R of tokens
within 1e-3 of a subspace (N = 4096, d = 16, ε = 1e-3) was off by 13× its size
in torch float32 (2.7e-4 relative now).
"""

import math

import numpy as np
import pytest

import minicrate as mc
from minicrate.core.backend import get_backend, to_numpy

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

U32 = 2.0**-24  # float32 unit round-off
FLOAT32_BACKENDS = ["numpy"] + (["torch"] if torch is not None else [])


def _tokens(kind, N, d, seed=1):
    """float64 tokens that are exactly representable in float32."""
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        Z = rng.standard_normal((N, d))
    else:  # on a d/4-dimensional subspace, scaled like the Gaussian tokens
        q = np.linalg.qr(rng.standard_normal((d, d)))[0]
        Z = 2 * rng.standard_normal((N, d // 4)) @ q[:, : d // 4].T
        if kind == "noisy":
            Z = Z + 1e-2 * rng.standard_normal((N, d))
    return Z.astype(np.float32).astype(np.float64)


def _bases(d, K=4, seed=2):
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]
    return q.reshape(d, K, d // K).transpose(1, 0, 2).astype(np.float32).astype(np.float64)


def _to32(backend, x):
    if backend == "torch":
        return torch.tensor(x, dtype=torch.float32)
    return get_backend(backend).asarray(x, dtype=get_backend(backend).float32)


RATE_FUNCTIONS = {
    "R": lambda Z, U, eps: mc.coding_rate(Z, eps),
    "Rc": lambda Z, U, eps: mc.compression_rate(Z, U, eps),
    "measured": lambda Z, U, eps: mc.measured_compression_rate(Z, U, eps_sq=eps**2),
    "dR": lambda Z, U, eps: mc.coding_rate_grad(Z, eps),
    "dRc/dZ": lambda Z, U, eps: mc.compression_rate_grad(Z, U, eps)[0],
    "dRc/dU": lambda Z, U, eps: mc.compression_rate_grad(Z, U, eps)[1],
}
GRID = [(4096, 8, 0.1), (4096, 8, 1e-3), (64, 16, 0.1), (64, 16, 1e-3)]


@pytest.mark.parametrize("backend", FLOAT32_BACKENDS)
@pytest.mark.parametrize("kind", ["gauss", "noisy", "lowrank"])
@pytest.mark.parametrize("N, d, eps", GRID, ids=[f"N{n}-d{d}-eps{e:g}" for n, d, e in GRID])
def test_rates_float32_match_float64(backend, kind, N, d, eps):
    Z, U = _tokens(kind, N, d), _bases(d)
    Z32, U32_ = _to32(backend, Z), _to32(backend, U)
    alpha = d / (N * eps**2)
    for name, f in RATE_FUNCTIONS.items():
        ref = np.asarray(f(Z, U, eps))
        got = to_numpy(f(Z32, U32_, eps)).astype(np.float64)
        assert np.all(np.isfinite(got)), f"{name}: non-finite float32 result"
        err = float(np.max(np.abs(got - ref)))
        rel = err / float(np.max(np.abs(ref)))
        if name in ("R", "Rc", "measured"):
            assert rel <= 1e-5, f"{name}: relative error {rel:.1e}"
        elif name == "dR" and kind == "lowrank":
            # Ill-conditioned (see the module docstring): backward stability is the bound.
            bound = 10 * alpha * U32 * np.linalg.norm(Z, 2)
            assert err <= bound, f"dR: error {err:.2e} > 10·α·u·‖Z‖₂ = {bound:.2e}"
        else:
            assert rel <= 1e-3, f"{name}: relative error {rel:.1e}"


def test_rates_of_exactly_low_rank_tokens_do_not_fail_in_float32():
    """The old Gram-matrix Cholesky raised LinAlgError here (I + αZᵀZ not PD once rounded)."""
    Z = _tokens("lowrank", 1024, 16)
    for backend in FLOAT32_BACKENDS:
        R32 = float(mc.coding_rate(_to32(backend, Z), 1e-3))
        R64 = float(mc.coding_rate(Z, 1e-3))
        assert math.isfinite(R32) and abs(R32 - R64) <= 1e-5 * abs(R64), backend


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_with_logits_of_1e4(xp, dtype):
    dt = getattr(xp, dtype)
    S = xp.asarray(
        [[1e4, -1e4, 0.0], [1e4, 1e4, 1e4], [-1e4, -1e4, -1e4 + 1.0], [1e4, 1e4 - 1.0, -1e4]],
        dtype=dt,
    )
    A = to_numpy(mc.softmax(S)).astype(np.float64)
    e = math.exp(-1.0)
    expected = np.array(
        [
            [1, 0, 0],
            [1 / 3, 1 / 3, 1 / 3],
            [e / (1 + 2 * e), e / (1 + 2 * e), 1 / (1 + 2 * e)],
            [1 / (1 + e), e / (1 + e), 0],
        ]
    )
    assert np.all(np.isfinite(A))
    np.testing.assert_allclose(A, expected, rtol=1e-6 if dtype == "float32" else 1e-12, atol=1e-30)
    dS = to_numpy(mc.softmax_backward(xp.ones_like(S), mc.softmax(S)))
    assert (
        np.all(np.isfinite(dS)) and np.max(np.abs(dS)) < 1e-6
    )  # a constant cotangent has zero VJP


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_and_attention_with_huge_logits(xp, dtype):
    dt = getattr(xp, dtype)
    logits = xp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dt)
    labels = xp.asarray([1, 0])
    loss, cache = mc.cross_entropy_forward(logits, labels, smoothing=0.0)
    assert float(loss) == pytest.approx(2e4 + 0.5 * math.log(2), rel=1e-6)
    assert np.all(np.isfinite(to_numpy(mc.cross_entropy_backward(1.0, cache))))
    # MSSA whose scores are ~1e4: the attention is one-hot but finite, as is its backward.
    Z = xp.asarray(100.0 * np.eye(3, 4), dtype=dt)
    U = xp.asarray(np.stack([np.eye(4)[:, :2], np.eye(4)[:, 2:]]), dtype=dt)
    Y, c = mc.mssa_forward(Z, U, None, None, scale=1.0, causal=True)
    dZ, g = mc.mssa_backward(xp.ones_like(Y), c)
    for arr in (Y, c["A"], dZ, g["U"]):
        assert np.all(np.isfinite(to_numpy(arr)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("value", [0.0, 1.0, -7.25, 1e3, 1.0 / 3.0])
def test_layernorm_of_a_constant_token(xp, dtype, value):
    """σ² = 0: LN gives β and a finite gradient γ⊙(ȳ − mean ȳ)/√ε (x̂ = 0)."""
    d, eps = 6, 1e-5
    dt = getattr(xp, dtype)
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 1.5, d), rng.standard_normal(d)
    dY = rng.standard_normal((2, d))
    X = xp.asarray(np.full((2, d), value), dtype=dt)
    Y, cache = mc.layernorm_forward(
        X, xp.asarray(gamma, dtype=dt), xp.asarray(beta, dtype=dt), eps=eps
    )
    dX, g = mc.layernorm_backward(xp.asarray(dY, dtype=dt), cache)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(
        to_numpy(Y), np.broadcast_to(beta, (2, d)), atol=tol * max(1.0, abs(value))
    )
    gy = gamma * dY
    expected = (gy - gy.mean(axis=-1, keepdims=True)) / math.sqrt(eps)
    np.testing.assert_allclose(
        to_numpy(dX), expected, rtol=tol, atol=tol * max(1.0, abs(value)) * 1e3
    )
    for arr in (dX, g["gamma"], g["beta"]):
        assert np.all(np.isfinite(to_numpy(arr)))


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_layernorm_of_a_constant_token_matches_torch_autograd():
    d = 5
    X = torch.full((3, d), 2.5, dtype=torch.float64, requires_grad=True)
    gamma = torch.linspace(0.5, 1.5, d, dtype=torch.float64, requires_grad=True)
    beta = torch.linspace(-1, 1, d, dtype=torch.float64, requires_grad=True)
    dY = torch.tensor(np.random.default_rng(1).standard_normal((3, d)))
    Y = torch.nn.functional.layer_norm(X, (d,), gamma, beta, eps=1e-5)
    Y.backward(dY)
    Ym, cache = mc.layernorm_forward(X.detach(), gamma.detach(), beta.detach(), eps=1e-5)
    dX, g = mc.layernorm_backward(dY, cache)
    np.testing.assert_allclose(to_numpy(Ym), Y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dX), X.grad.numpy(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(to_numpy(g["gamma"]), gamma.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(to_numpy(g["beta"]), beta.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("which", ["input", "cotangent", "gradient"])
def test_gradient_checker_refuses_float32(which):
    """Central differences in float32 have round-off ~1e-4 (ε_32/h): the checker says so
    instead of reporting a meaningless error."""
    x = np.linspace(-1.0, 1.0, 6)
    arrays = {"input": x, "cotangent": np.ones(6), "gradient": 2 * x}
    arrays[which] = arrays[which].astype(np.float32)
    with pytest.raises(TypeError, match=r"check_vjp needs float64 inputs .*float32"):
        mc.check_vjp(
            lambda x: x * x, {"x": arrays["input"]}, arrays["cotangent"], {"x": arrays["gradient"]}
        )


def test_one_seed_gives_one_model_and_deterministic_steps():
    """The determinism documented in minicrate/core/backend.py: identical initial parameters on
    every backend, bit-identical repeated steps on each, NumPy and array_api_strict
    bit-identical, torch equal to rounding."""
    from minicrate.core.backend import host_to

    config = mc.CRATEConfig(
        image_size=8,
        patch_size=4,
        channels=1,
        dim=8,
        depth=2,
        heads=2,
        num_classes=3,
        dtype="float32",
    )
    images = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 2, 1])
    results = {}
    for backend in ["numpy", "array_api_strict"] + (["torch"] if torch is not None else []):
        xp = get_backend(backend)
        runs = []
        for _ in range(2):
            params = mc.init_params(config, seed=7, backend=backend)
            loss, grads, _ = mc.loss_and_grads(
                params, host_to(xp, images, "float32"), host_to(xp, labels, xp.int64), config
            )
            runs.append(
                (
                    loss,
                    {k: to_numpy(v) for k, v in grads.items()},
                    {k: to_numpy(v) for k, v in params.items()},
                )
            )
        (loss_a, grads_a, params_a), (loss_b, grads_b, _) = runs
        assert loss_a == loss_b and all(np.array_equal(grads_a[k], grads_b[k]) for k in grads_a), (
            backend
        )
        results[backend] = runs[0]
    ref_loss, ref_grads, ref_params = results["numpy"]
    for backend, (loss, grads, params) in results.items():
        assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params), backend
        if backend == "array_api_strict":
            assert loss == ref_loss and all(np.array_equal(grads[k], ref_grads[k]) for k in grads)
        else:
            assert loss == pytest.approx(ref_loss, rel=1e-5)
            for k in grads:
                np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5)
