"""Optimisers, clipping and schedules against hand-computed steps on tiny problems."""

import math

import numpy as np
import pytest

from minicrate.core.backend import host_to, to_numpy
from minicrate.training.optim import (
    SGD,
    AdamW,
    Lion,
    clip_by_global_norm,
    global_norm,
    make_optimizer,
)
from minicrate.training.schedule import constant, warmup_cosine


def _params(xp, **arrays):
    return {k: host_to(xp, np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}


def test_sgd_momentum_two_steps_by_hand(xp):
    opt = SGD(0.1, momentum=0.9, weight_decay=0.01)
    params = _params(xp, w=[1.0, -2.0])
    opt.step(params, _params(xp, w=[0.5, 1.0]))
    # v = g = [0.5, 1];  θ = θ − 0.1 (v + 0.01 θ)
    np.testing.assert_allclose(to_numpy(params["w"]), [0.949, -2.098], rtol=0, atol=1e-15)
    opt.step(params, _params(xp, w=[-1.0, 0.5]))
    # v = 0.9 [0.5, 1] + [−1, 0.5] = [−0.55, 1.4]
    # θ = [0.949 − 0.1(−0.55 + 0.00949), −2.098 − 0.1(1.4 − 0.02098)]
    np.testing.assert_allclose(to_numpy(params["w"]), [1.003051, -2.235902], rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_numpy(opt.state["v"]["w"]), [-0.55, 1.4], atol=1e-15)


def test_sgd_nesterov_by_hand():
    opt = SGD(0.5, momentum=0.5, nesterov=True)
    params = {"w": np.array([1.0])}
    opt.step(params, {"w": np.array([2.0])})
    # v = 2;  direction = g + μ v = 2 + 1 = 3;  θ = 1 − 0.5·3
    assert params["w"][0] == pytest.approx(-0.5, abs=1e-15)


def test_adamw_two_steps_by_hand(xp):
    lr, wd, b1, b2, eps = 0.1, 0.1, 0.9, 0.999, 1e-8
    opt = AdamW(lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    params = _params(xp, w=[1.0])
    opt.step(params, _params(xp, w=[0.5]))
    # Step 1: m̂ = g, v̂ = g², so the Adam direction is g/(|g| + ε) ≈ sign(g).
    theta1 = 1.0 - lr * (0.5 / (0.5 + eps) + wd * 1.0)
    assert float(to_numpy(params["w"])[0]) == pytest.approx(theta1, rel=1e-14)
    assert theta1 == pytest.approx(0.89, abs=1e-8)
    opt.step(params, _params(xp, w=[-0.25]))
    m = b1 * 0.05 + (1 - b1) * (-0.25)  # 0.02
    v = b2 * 0.00025 + (1 - b2) * 0.0625  # 0.00031225
    m_hat, v_hat = m / (1 - b1**2), v / (1 - b2**2)
    theta2 = theta1 - lr * (m_hat / (math.sqrt(v_hat) + eps) + wd * theta1)
    assert m == pytest.approx(0.02) and v == pytest.approx(0.00031225)
    assert float(to_numpy(params["w"])[0]) == pytest.approx(theta2, rel=1e-13)


def test_lion_two_steps_by_hand(xp):
    opt = Lion(0.01, betas=(0.9, 0.99), weight_decay=0.5)
    params = _params(xp, w=[1.0, -1.0, 0.5])
    opt.step(params, _params(xp, w=[0.2, -0.3, 0.0]))
    # c = 0.1 g → sign [1, −1, 0];  θ = θ − 0.01 (sign(c) + 0.5 θ)
    np.testing.assert_allclose(to_numpy(params["w"]), [0.985, -0.985, 0.4975], atol=1e-15)
    np.testing.assert_allclose(to_numpy(opt.state["m"]["w"]), [0.002, -0.003, 0.0], atol=1e-15)
    opt.step(params, _params(xp, w=[-0.5, -0.3, 0.1]))
    # c = 0.9 m + 0.1 g = [−0.0482, −0.0327, 0.01] → sign [−1, −1, 1]
    np.testing.assert_allclose(
        to_numpy(params["w"]), [0.990075, -0.970075, 0.4850125], rtol=0, atol=1e-14
    )


def test_matches_torch_reference_optimisers():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    cases = [
        (
            AdamW(0.05, weight_decay=0.1),
            lambda p: torch.optim.AdamW([p], lr=0.05, weight_decay=0.1),
        ),
        # torch's SGD weight decay is coupled, so compare with wd = 0.
        (SGD(0.05, momentum=0.9), lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.9)),
        (
            SGD(0.05, momentum=0.9, nesterov=True),
            lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.9, nesterov=True),
        ),
    ]
    for ours, make_ref in cases:
        p = torch.tensor(theta0.copy(), requires_grad=True)
        ref = make_ref(p)
        params = {"w": theta0.copy()}
        for g in grads:
            p.grad = torch.tensor(g)
            ref.step()
            ours.step(params, {"w": g})
        np.testing.assert_allclose(params["w"], p.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_decay_filter_skips_chosen_parameters():
    opt = SGD(0.1, momentum=0.0, weight_decay=1.0, decay=lambda key: not key.endswith("b"))
    params = {"W": np.array([2.0]), "b": np.array([2.0])}
    opt.step(params, {"W": np.array([0.0]), "b": np.array([0.0])})
    assert params["W"][0] == pytest.approx(1.8) and params["b"][0] == 2.0


@pytest.mark.parametrize("name", ["sgd", "adamw", "lion"])
def test_state_dict_round_trip_continues_identically(name):
    rng = np.random.default_rng(1)
    grads = [{"a": rng.standard_normal(3), "b": rng.standard_normal((2, 2))} for _ in range(4)]
    make = lambda: make_optimizer(name, 0.01, weight_decay=0.1)
    straight, params1 = make(), {"a": np.ones(3), "b": np.zeros((2, 2))}
    for g in grads:
        straight.step(params1, g)
    first, params2 = make(), {"a": np.ones(3), "b": np.zeros((2, 2))}
    for g in grads[:2]:
        first.step(params2, g)
    state = first.state_dict()
    state = {**state, "buffers": {k: v.copy() for k, v in state["buffers"].items()}}
    second = make().load_state_dict(state, like=params2)
    for g in grads[2:]:
        second.step(params2, g)
    assert second.t == 4
    for k in params1:
        np.testing.assert_array_equal(params1[k], params2[k])


def test_load_state_dict_rejects_other_optimizer():
    state = SGD(0.1).state_dict()
    with pytest.raises(ValueError, match="'sgd'.*'adamw'"):
        AdamW(0.1).load_state_dict(state)


def test_float32_parameters_stay_float32(xp):
    params = {"w": host_to(xp, np.ones(4), "float32")}
    for opt in (SGD(0.1), AdamW(0.1), Lion(0.1, weight_decay=0.1)):
        opt.step(params, {"w": host_to(xp, np.full(4, 0.5), "float32")})
        assert params["w"].dtype == xp.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="lr"):
        SGD(-1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("adam", 0.1)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="same keys"):
        opt.step({"w": np.ones(2)}, {"v": np.ones(2)})
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(3,\)"):
        opt.step({"w": np.ones(2)}, {"w": np.ones(3)})


def test_clip_by_global_norm(xp):
    grads = _params(xp, a=[3.0, 0.0], b=[[0.0, 4.0]])
    assert global_norm(grads) == pytest.approx(5.0)
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(to_numpy(clipped["a"]), [0.6, 0.0])
    np.testing.assert_allclose(to_numpy(clipped["b"]), [[0.0, 0.8]])
    unchanged, _ = clip_by_global_norm(grads, 10.0)
    np.testing.assert_array_equal(to_numpy(unchanged["a"]), [3.0, 0.0])
    _, bad = clip_by_global_norm({"a": np.array([np.nan, 1.0])}, 1.0)
    assert math.isnan(bad)


def test_warmup_cosine_schedule_values():
    lr = lambda s: warmup_cosine(s, total_steps=10, warmup_steps=2, base_lr=1.0, min_lr=0.1)
    assert [lr(0), lr(1)] == [0.5, 1.0]  # linear warm-up reaches the peak
    assert lr(2) == 1.0  # cosine starts at the peak
    # half way through the cosine part (step 6 of 2..10): min + ½(base − min)
    assert lr(6) == pytest.approx(0.1 + 0.45)
    assert lr(10) == lr(50) == 0.1
    values = [lr(s) for s in range(2, 11)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert warmup_cosine(0, total_steps=4, base_lr=2.0) == 2.0  # no warm-up
    assert constant(7, base_lr=0.3) == 0.3
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, total_steps=3, warmup_steps=5, base_lr=1.0)
