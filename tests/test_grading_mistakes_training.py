"""The mistake builders of chapters 3 and 9 that call the library with changed inputs
(minicrate.grading.mistakes.rates, .training) give exactly the mistaken formula.

Each builder replaces a NumPy twin by an input that makes the library compute the
mistake (an equivalent ε, smoothing, step or max_norm); here each is checked once
against the mistaken formula written out.
"""

import math

import numpy as np
import pytest

from minicrate.grading.mistakes import rates, training
from minicrate.objective.rates import coding_rate, compression_rate, compression_rate_grad

RNG = np.random.default_rng(0)


def _half_logdet(c, W):
    return 0.5 * np.linalg.slogdet(np.eye(W.shape[-1]) + c * np.swapaxes(W, -1, -2) @ W)[1]


@pytest.mark.parametrize("kind", sorted(rates.WRONG_ALPHA))
def test_equivalent_eps_gives_the_wrong_alpha(kind):
    Z, eps = RNG.standard_normal((2, 3, 4)), 0.5
    alpha = rates.WRONG_ALPHA[kind](3, 4, 2, eps)
    np.testing.assert_allclose(coding_rate(Z, rates.alpha_eps(Z, eps, kind)), _half_logdet(alpha, Z), rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(rates.WRONG_BETA))
def test_equivalent_eps_gives_the_wrong_beta(kind):
    Z, U, eps = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 4, 3)), 0.5
    beta = rates.WRONG_BETA[kind](3, 4, 3, 2, eps)
    expected = _half_logdet(beta, Z[:, None] @ U).sum(-1)
    np.testing.assert_allclose(compression_rate(Z, U, rates.beta_eps(Z, U, eps, kind)), expected, rtol=1e-12)


def test_per_head_and_per_sample_pieces_sum_to_the_library():
    Z, U = RNG.standard_normal((3, 4, 5)), RNG.standard_normal((2, 5, 2))
    assert rates.per_head_rates(Z, U, 0.5).shape == (3, 2)
    np.testing.assert_allclose(rates.per_head_rates(Z, U, 0.5).sum(-1), compression_rate(Z, U, 0.5), rtol=1e-12)
    dU = rates.per_sample_dU(Z, U, 0.5)
    assert dU.shape == (3, 2, 5, 2)
    np.testing.assert_allclose(dU.sum(0), compression_rate_grad(Z, U, 0.5)[1], rtol=1e-12)


def _log_softmax(L):
    s = L - L.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


def test_smoothing_mistakes_are_the_written_out_targets():
    L, y, eps = RNG.standard_normal((4, 5)), np.array([0, 3, 1, 3]), 0.3
    onehot = np.eye(5)[y]
    over_others = (1 - eps) * onehot + eps / 4 * (1 - onehot)
    no_one_minus = onehot + eps / 5
    for target, got in ((over_others, training.loss_smoothed_over_others(L, y, eps)),
                        (no_one_minus, training.loss_without_one_minus(L, y, eps))):
        np.testing.assert_allclose(got, -(target * _log_softmax(L)).sum(-1).mean(), rtol=1e-12)
    assert not np.isfinite(training.loss_unstable(1000 * L, y, eps))


def _adam(theta, g, m, v, t, lr, b1, b2, eps, wd, *, correct=True, eps_inside=False, wd_scale=None):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if correct else (m, v)
    denom = np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps
    return theta - lr * m_hat / denom - (lr * wd if wd_scale is None else wd_scale) * theta, m, v


def test_adamw_mistakes_are_the_written_out_updates():
    theta, g, m, v = RNG.standard_normal((4, 3))
    v = v * v
    hyper = {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 0.1}
    args = (theta, g, m, v, 3, 0.05, 0.9, 0.999, 1e-3, 0.1)
    uncorrected = training.adamw_update(theta, g, m, v, training.NO_BIAS_CORRECTION_STEP, **hyper)
    np.testing.assert_allclose(uncorrected[0], _adam(*args, correct=False)[0], rtol=1e-12)
    np.testing.assert_allclose(training.adamw_eps_inside(theta, g, m, v, 3, **hyper),
                               _adam(*args, eps_inside=True)[0], rtol=1e-12)
    np.testing.assert_allclose(training.adamw_decay_not_times_lr(theta, g, m, v, 3, **hyper)[0],
                               _adam(*args, wd_scale=0.1)[0], rtol=1e-12)
    l2 = _adam(theta, g + 0.1 * theta, m, v, 3, 0.05, 0.9, 0.999, 1e-3, 0.0)
    for got, want in zip(training.adam_l2(theta, g, m, v, 3, **hyper), l2, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_clipping_mistakes_are_the_written_out_factors(factor):
    grads = {"a": RNG.standard_normal(3), "b": RNG.standard_normal((2, 2))}
    norm = math.sqrt(sum(float((x * x).sum()) for x in grads.values()))
    max_norm = factor * norm
    for builder, scale, out_norm in (
        (training.clip_squared_norm, min(1.0, max_norm / norm**2), norm**2),
        (training.clip_inverted, min(1.0, norm / max_norm), norm),
        (training.clip_always, max_norm / norm, norm),
    ):
        clipped, got_norm = builder(grads, max_norm)
        assert got_norm == pytest.approx(out_norm, rel=1e-12)
        for k, x in grads.items():
            np.testing.assert_allclose(clipped[k], scale * x, rtol=1e-12)
    per_tensor, _ = training.clip_per_tensor(grads, max_norm)
    for k, x in grads.items():
        np.testing.assert_allclose(per_tensor[k], x * min(1.0, max_norm / np.linalg.norm(x)), rtol=1e-12)
