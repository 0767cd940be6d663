"""Self-supervised CRATE (DINO, SimDINO): every new backward against finite differences, the
teacher's isolation, the collapse the coding-rate term prevents, the views, k-NN, and a
short run with its resume."""

import dataclasses
import json
import math

import numpy as np
import pytest
from robustness_support import ista_margin

import minicrate as mc
from minicrate.checks.strategies import normal
from minicrate.cli import main
from minicrate.data.views import ViewSpec, affine_sample, multi_crop
from minicrate.measure.knn import collapse_report, effective_rank, knn_accuracy
from minicrate.models import selfsup, selfsup_loss
from minicrate.ops.normalize import (
    l2_normalize_backward,
    l2_normalize_forward,
    weight_norm_backward,
    weight_norm_forward,
)
from minicrate.training.dino import (
    SelfSupRecipe,
    SelfSupTask,
    ema_update,
    selfsup_recipe,
    teacher_momentum,
    teacher_temperature,
    train_dino,
)

BACKBONE = mc.CRATEConfig(image_size=4, patch_size=2, dim=8, heads=2, depth=2, dtype="float64", pool="cls")


def one(xp):
    return xp.asarray(1.0, dtype=xp.float64)


# -- the ops ---------------------------------------------------------------------------
def test_l2_normalize_gradient_matches_fd(xp):
    X = normal(xp, (3, 5), 0)
    Y, cache = l2_normalize_forward(X)
    assert np.allclose(np.linalg.norm(mc.to_numpy(Y), axis=-1), 1.0)
    dY = normal(xp, (3, 5), 1)
    mc.check_vjp(l2_normalize_forward, {"X": X}, dY, {"X": l2_normalize_backward(dY, cache)}).raise_if_failed()


@pytest.mark.parametrize("gains", [False, True])
def test_weight_norm_gradient_matches_fd(xp, gains):
    V, dW = normal(xp, (4, 3), 2), normal(xp, (4, 3), 3)
    inputs = {"V": V, "g": normal(xp, (4,), 4) if gains else None}
    W, cache = weight_norm_forward(**inputs)
    if not gains:
        assert np.allclose(np.linalg.norm(mc.to_numpy(W), axis=-1), 1.0)
    dV, g = weight_norm_backward(dW, cache)
    grads = {"V": dV, **g}
    assert set(g) == ({"g"} if gains else set())
    mc.check_vjp(weight_norm_forward, inputs, dW, grads).raise_if_failed()


def test_weight_norm_refuses_a_zero_row():
    with pytest.raises(ValueError, match="non-zero"):
        weight_norm_forward(np.zeros((2, 3)))


# -- the losses --------------------------------------------------------------------------
def _views(xp, V=5, G=2, B=4, m=6, unit=False, seed=0):
    S, T = normal(xp, (V, B, m), seed), normal(xp, (G, B, m), seed + 1)
    if unit:
        S, T = l2_normalize_forward(S)[0], l2_normalize_forward(T)[0]
    return S, T


def test_dino_loss_is_the_pairwise_cross_entropy_and_its_gradient_matches_fd(xp):
    S, T = _views(xp)
    S = S * 0.2  # moderate logits: the fourth-order FD stays accurate at temperature 0.1
    center = normal(xp, (6,), 7) * 0.1
    loss, cache = selfsup_loss.dino_loss_forward(S, T, center, student_temp=0.1, teacher_temp=0.04)
    s, t, c = (mc.to_numpy(a) for a in (S, T, center))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    terms = [-(softmax((t[g] - c) / 0.04) * np.log(softmax(s[v] / 0.1))).sum(-1).mean()
             for g in range(2) for v in range(5) if v != g]
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-12)
    dS = selfsup_loss.dino_loss_backward(one(xp), cache)
    f = lambda student: selfsup_loss.dino_loss_forward(student, T, center)  # noqa: E731
    mc.check_vjp(f, {"student": S}, one(xp), {"student": dS}).raise_if_failed()


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_simdino_loss_with_its_coding_rate_term_matches_fd(xp, gamma):
    S, T = _views(xp, unit=True)
    loss, cache = selfsup_loss.simdino_loss_forward(S, T, gamma=gamma)
    s, t = mc.to_numpy(S), mc.to_numpy(T)
    distance = np.mean([0.5 * ((s[v] - t[g]) ** 2).sum(-1).mean() for g in range(2) for v in range(5) if v != g])
    rate = np.mean([float(mc.coding_rate(s[g], selfsup_loss.SIMDINO_EPS)) for g in range(2)])
    assert float(loss) == pytest.approx(distance - gamma * rate, rel=1e-12)
    dS = selfsup_loss.simdino_loss_backward(one(xp), cache)
    f = lambda student: selfsup_loss.simdino_loss_forward(student, T, gamma=gamma)  # noqa: E731
    mc.check_vjp(f, {"student": S}, one(xp), {"student": dS}).raise_if_failed()


def test_losses_name_bad_view_shapes():
    S, T = _views(mc.get_backend("numpy"))
    with pytest.raises(ValueError, match="teacher"):
        selfsup_loss.simdino_loss_forward(S, T[:, :3], gamma=0.1)
    with pytest.raises(ValueError, match="center"):
        selfsup_loss.dino_loss_forward(S, T, np.zeros(5))


def test_simdino_gamma_is_the_released_balance():
    assert selfsup_loss.simdino_gamma(64, 64) == pytest.approx(1 / 32)


# -- the model ---------------------------------------------------------------------------
def _model(xp, method, block="crate"):
    config = selfsup.SelfSupConfig(backbone=dataclasses.replace(BACKBONE, block=block), method=method,
                                   hidden_dim=6, bottleneck_dim=5, out_dim=7)
    for seed in range(100):
        params = selfsup.init_selfsup_params(config, seed=seed, backend=xp)
        # head weights at N(0, 1)-ish scale: at 0.02 the FD step would be a large relative change
        params.update({k: v * 30 for k, v in params.items() if k.startswith("proj.W") or k == "proj.V"})
        images = normal(xp, (3, 1, 4, 4), seed + 1)
        out, cache = selfsup.selfsup_forward(params, images, config, fast=False)
        if block == "transformer" or ista_margin(cache["features"]["layers"], BACKBONE) > 0.01:
            return config, params, images, out, cache
    raise AssertionError("no seed gave an ISTA margin > 0.01")


@pytest.mark.parametrize("method", ["simdino", "dino"])
@pytest.mark.parametrize("block", ["crate", "transformer"])
def test_backbone_and_head_gradients_match_fd(xp, method, block):
    config, params, images, out, cache = _model(xp, method, block)
    assert out.shape == (3, config.output_dim)
    dout = normal(xp, tuple(out.shape), 9)
    grads = selfsup.selfsup_backward(dout, cache)
    assert set(grads) == set(params)
    numpy = mc.core.backend.backend_name(xp) == "numpy"
    keys = [k for k in params if numpy or k.startswith(("proj.", "head.")) or k in ("embed.W", "layers.0.U")]
    keys = [k for k in keys if k in params]

    def f(**kw):
        return selfsup.selfsup_forward({**params, **kw}, images, config, fast=False)[0]

    mc.check_vjp(f, {k: params[k] for k in keys}, dout, {k: grads[k] for k in keys},
                 max_entries=3).raise_if_failed()


def test_fast_and_plain_layers_give_the_same_features():
    xp = mc.get_backend("numpy")
    config, params, images, out, _ = _model(xp, "simdino")
    fast, _ = selfsup.selfsup_forward(params, images, config, fast=True)
    np.testing.assert_allclose(mc.to_numpy(fast), mc.to_numpy(out), rtol=1e-10, atol=1e-12)


def test_config_round_trips_and_names_bad_fields():
    config = selfsup.SelfSupConfig(backbone=BACKBONE, method="dino")
    assert selfsup.SelfSupConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="method"):
        selfsup.SelfSupConfig(backbone=BACKBONE, method="byol")
    with pytest.raises(TypeError, match="backbone"):
        selfsup.SelfSupConfig(backbone={"dim": 8})


# -- the teacher ---------------------------------------------------------------------------
def test_ema_moves_only_the_teacher_and_follows_the_formula():
    student = {"a": np.array([1.0, 2.0])}
    teacher = {"a": np.array([3.0, 3.0])}
    before = student["a"].copy()
    ema_update(teacher, student, 0.75)
    np.testing.assert_allclose(teacher["a"], 0.75 * np.array([3.0, 3.0]) + 0.25 * before)
    np.testing.assert_array_equal(student["a"], before)
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    recipe = SelfSupRecipe(warmup_teacher_epochs=10)
    assert teacher_temperature(0, recipe) == pytest.approx(0.04)
    assert teacher_temperature(5, recipe) == pytest.approx(0.055)
    assert teacher_temperature(30, recipe) == pytest.approx(0.07)


def _tiny_task(method, tmp_path=None, **recipe_over):
    config, tc, recipe = selfsup_recipe("digits", method, epochs=2, batch_size=256, warmup_epochs=0.5)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, dim=16, depth=1, heads=2),
                                 hidden_dim=16, bottleneck_dim=8, out_dim=16)
    recipe = dataclasses.replace(recipe, views=ViewSpec(n_local=2), supervised_epochs=0, **recipe_over)
    return config, tc, recipe


@pytest.mark.parametrize("method", ["simdino", "dino"])
def test_the_teacher_gets_no_gradient_and_moves_only_by_ema(method):
    config, tc, recipe = _tiny_task(method)
    task = SelfSupTask(config, tc, recipe)
    params = task.init_params()
    teacher_before = {k: v.copy() for k, v in task.teacher.items()}
    loss, grads, _ = task.loss_and_grads(params, task.batch(0))
    assert math.isfinite(loss) and set(grads) == set(params)
    assert all(np.array_equal(task.teacher[k], teacher_before[k]) for k in teacher_before)
    stepped = {k: v - 0.1 * grads[k] for k, v in params.items()}
    frozen_grads = {k: v.copy() for k, v in grads.items()}
    task.after_step(stepped, 0)
    m = teacher_momentum(0, task.total_steps, recipe.momentum)
    for k in teacher_before:
        np.testing.assert_allclose(task.teacher[k], m * teacher_before[k] + (1 - m) * stepped[k], rtol=1e-6)
        np.testing.assert_array_equal(grads[k], frozen_grads[k])  # the update read the gradients only
    if method == "dino":
        assert float(np.abs(task.center).max()) > 0  # the centre moved towards the teacher's mean


def test_coding_rate_term_prevents_collapse_on_a_toy_batch():
    """SimDINO's head on noisy views of 64 fixed points, an EMA teacher, plain gradient steps.
    Without the coding-rate term the outputs collapse onto one direction; with it they do not."""
    rng = np.random.default_rng(0)
    n, d, h, b, V, G = 64, 16, 32, 8, 4, 2
    X = rng.normal(size=(n, d))
    results = {}
    for gamma in (0.0, 0.1):
        r = np.random.default_rng(1)
        p = {"proj.W1": r.normal(size=(h, d)) / d**0.5, "proj.b1": np.zeros(h),
             "proj.W2": r.normal(size=(h, h)) / h**0.5, "proj.b2": np.zeros(h),
             "proj.W3": r.normal(size=(b, h)) / h**0.5, "proj.b3": np.zeros(b)}
        teacher = {k: v.copy() for k, v in p.items()}
        for step in range(300):
            views = X[None] + np.random.default_rng(step).normal(size=(V, n, d))
            out, cache = selfsup.head_forward(p, views.reshape(V * n, d), "simdino")
            t_out, _ = selfsup.head_forward(teacher, views[:G].reshape(G * n, d), "simdino")
            _, lc = selfsup_loss.simdino_loss_forward(out.reshape(V, n, b), t_out.reshape(G, n, b), gamma=gamma)
            grads = {}
            selfsup.head_backward(selfsup_loss.simdino_loss_backward(1.0, lc).reshape(V * n, b), cache, grads)
            p = {k: v - 0.5 * grads[k] for k, v in p.items()}
            ema_update(teacher, p, 0.9)
        z, _ = selfsup.head_forward(teacher, X, "simdino")
        sv = np.linalg.svd(z, compute_uv=False)
        results[gamma] = (sv[0] ** 2 / np.sum(sv**2), collapse_report(z)["coding_rate"])
    assert results[0.0][0] > 0.99, results  # one direction holds > 99 % of the energy: collapsed
    assert results[0.1][0] < 0.6, results
    assert results[0.1][1] > 2 * results[0.0][1], results


# -- views and measurements ---------------------------------------------------------------------
def test_views_identity_map_and_determinism():
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8))
    same = affine_sample(x, np.tile([4.0, 4.0], (3, 1)), np.tile([8.0, 8.0], (3, 1)), np.zeros(3))
    np.testing.assert_allclose(same, x, atol=1e-12)
    spec = ViewSpec(n_global=2, n_local=3)
    a = multi_crop(x, np.random.default_rng(5), spec, fill=-1.0)
    b = multi_crop(x, np.random.default_rng(5), spec, fill=-1.0)
    assert a.shape == (5, 3, 1, 8, 8) and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    # a half-size crop of a constant image inside it is that constant (bilinear, no fill)
    flat = np.full((1, 1, 8, 8), 2.0)
    half = affine_sample(flat, np.array([[4.0, 4.0]]), np.array([[4.0, 4.0]]), np.array([0.3]))
    np.testing.assert_allclose(half, 2.0)
    with pytest.raises(ValueError, match="local_scale"):
        ViewSpec(local_scale=(0.5, 0.2))


def test_knn_and_collapse_report():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + rng.normal(size=(90, 3)) * 0.3
    assert knn_accuracy(x, y, x + 0.01, y, k=5) == 1.0
    with pytest.raises(ValueError, match="k = 100"):
        knn_accuracy(x, y, x, y, k=100)
    collapsed = collapse_report(np.ones((50, 4)) + rng.normal(size=(50, 4)) * 1e-3)
    spread = collapse_report(rng.normal(size=(50, 4)))
    # one direction: R = ½ log(1 + m/ε²) = ½ log 9; an even spread over m = 4: about ½·4·log 3
    assert collapsed["coding_rate"] == pytest.approx(0.5 * math.log(9), abs=1e-3)
    assert spread["coding_rate"] > 1.8
    assert effective_rank([0.25] * 4) == pytest.approx(4.0) and effective_rank([1.0]) == pytest.approx(1.0)


# -- a short run ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["simdino", "dino"])
def test_short_run_writes_metrics_and_resumes_bit_for_bit(tmp_path, method):
    config, tc, recipe = _tiny_task(method)
    quiet = lambda line: None  # noqa: E731
    full = train_dino(config, tc, recipe, tmp_path / "full", progress=False, log=quiet)
    part = train_dino(config, tc, recipe, tmp_path / "part", progress=False, log=quiet, stop_after_steps=4)
    assert part["status"] == "interrupted"
    resumed = train_dino(config, tc, recipe, tmp_path / "part", resume=True, progress=False, log=quiet)
    for k in full["params"]:
        np.testing.assert_array_equal(full["params"][k], resumed["params"][k])
        np.testing.assert_array_equal(full["teacher"][k], resumed["teacher"][k])
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert m["status"] == "completed" and len(m["loss"]) == 2
    assert 0 <= m["knn_accuracy"] <= 1 and 0 <= m["probe_accuracy"] <= 1
    assert set(m["baselines"]) == {"pixels_knn", "pixels_probe", "untrained_knn", "supervised_knn"}
    assert m["baselines"]["pixels_knn"] > 0.9  # digits' raw pixels are a strong baseline
    assert set(m["collapse"]) == {"trained", "untrained"}
    assert (tmp_path / "full" / "selfsup.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_cli_train_dino_and_its_errors(tmp_path, capsys):  # lr 1e30 overflows on purpose
    out = str(tmp_path / "run")
    args = ["train-dino", "--data", "digits", "--epochs", "1", "--batch", "256", "--dim", "16", "--depth", "1",
            "--heads", "2", "--local-views", "1", "--supervised-epochs", "1", "--no-progress", "--out", out]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "teacher k-NN" in text and "supervised 20-NN" in text
    assert main(args) == 1  # the directory holds a run: refused without --resume/--overwrite
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train-dino", "--method", "byol"])
    assert exit_info.value.code == 2 and "invalid choice: 'byol'" in capsys.readouterr().err
    assert main([*args[:-2], "--out", str(tmp_path / "nan"), "--lr", "1e30", "--clip", "0"]) != 0
    assert "training stopped" in capsys.readouterr().err


def test_views_split_over_threads_equal_one_chunk_up_to_rounding():
    config, tc, recipe = _tiny_task("simdino")
    one_chunk, two = SelfSupTask(config, tc, recipe, workers=1), SelfSupTask(config, tc, recipe, workers=2)
    params = one_chunk.init_params()
    two.init_params()
    batch = one_chunk.batch(0)
    loss1, grads1, _ = one_chunk.loss_and_grads(params, batch)
    loss2, grads2, _ = two.loss_and_grads(params, batch)
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    for k in grads1:
        np.testing.assert_allclose(grads2[k], grads1[k], rtol=1e-4, atol=1e-7)


def test_the_books_recorded_runs_hold_what_the_chapter_reads():
    """book/selfsup.md reads book/data/selfsup.json (benchmarks/selfsup.py --book)."""
    from pathlib import Path

    data = json.loads((Path(__file__).resolve().parents[1] / "book" / "data" / "selfsup.json").read_text())
    runs = {r["name"]: r for r in data["tries"]}
    assert {"simdino", "dino", "simdino-gamma0", "simdino-vit"} <= set(runs)
    for r in runs.values():
        assert 0 < r["knn_accuracy"] <= 1 and 0 < r["probe_accuracy"] <= 1
        assert set(r["baselines"]) == {"pixels_knn", "pixels_probe", "untrained_knn", "supervised_knn"}
        assert len(r["knn_by_epoch"]) == r["epochs"]
        spectrum = r["collapse"]["trained"]["spectrum"]
        assert abs(sum(spectrum) - 1) < 1e-6 and spectrum == sorted(spectrum, reverse=True)
    # the chapter's collapse claim: without the coding-rate term the features' rate falls far below
    assert runs["simdino-gamma0"]["collapse"]["trained"]["coding_rate"] < 0.5 * runs["simdino"]["collapse"][
        "trained"]["coding_rate"]
