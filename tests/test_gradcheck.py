"""The finite-difference checker itself: it accepts right gradients, rejects
wrong ones with a useful message, and refuses float32."""

import numpy as np
import pytest

import minicrate as mc


def f_square(x):
    return x * x


def test_accepts_correct_gradient(xp):
    x = xp.asarray(np.linspace(-1, 1, 6).reshape(2, 3))
    dout = xp.asarray(np.arange(6.0).reshape(2, 3))
    report = mc.check_vjp(f_square, {"x": x}, dout, {"x": 2 * x * dout})
    assert report.passed and report.max_rel_error < 1e-7  # ~1e-13 round-off over the 1e-6 floor


def test_rejects_wrong_gradient_and_names_the_entry():
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    dout = np.ones((2, 3))
    wrong = 2 * x
    wrong[1, 2] += 0.5
    report = mc.check_vjp(f_square, {"x": x}, dout, {"x": wrong})
    assert not report.passed
    assert report.args["x"].worst_index == (1, 2)
    with pytest.raises(AssertionError, match=r"BAD x: .* at index \(1, 2\)"):
        report.raise_if_failed()


def test_refuses_float32():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        mc.check_vjp(f_square, {"x": x}, x, {"x": 2 * x})


def test_gradient_shape_mismatch_is_explained():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="must have its input's shape"):
        mc.check_vjp(f_square, {"x": x}, x, {"x": np.ones(6)})


def test_rel_error_is_cs231n_formula():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.2])
    assert mc.rel_error(a, b) == pytest.approx(0.2 / 4.2)


def test_sampled_entries():
    x = np.linspace(0.5, 1.5, 50)
    report = mc.check_vjp(f_square, {"x": x}, np.ones(50), {"x": 2 * x}, max_entries=7)
    assert report.args["x"].checked == 7 and report.passed


def f_exp(x):
    return np.exp(3 * x)


def test_truncation_limited_entries_are_refined_by_richardson():
    """At a coarse step the h^4 error of exp(3x) exceeds 1e-6; one more estimate
    at h/2 cancels it, so the right gradient passes and a wrong one still fails."""
    x = np.linspace(-1, 1, 5)
    n = mc.checks.gradcheck.numerical_vjp(f_exp, {"x": x}, np.ones(5), "x", h=0.05)
    assert mc.rel_error(n, 3 * np.exp(3 * x)) > 1e-6  # the plain estimate alone would fail
    assert mc.check_vjp(f_exp, {"x": x}, np.ones(5), {"x": 3 * np.exp(3 * x)}, h=0.05).passed
    wrong = 3 * np.exp(3 * x) * (1 + 1e-4)
    assert not mc.check_vjp(f_exp, {"x": x}, np.ones(5), {"x": wrong}, h=0.05).passed
